"""Sources stage: list the inputs (a folder or bucket prefix, or a CSV/Parquet manifest) in a stable
order with their labels, and read their bytes.

Every location is a URL plus ``storage_options``, resolved once here with fsspec; the rest of imgtools
works with the resulting :class:`Listing` and never asks which backend it is on.
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Sequence
from typing import Any

import pandas as pd
from fsspec.core import url_to_fs

from .config import LabelSource
from .errors import SourceError

__all__ = ["Listing", "list_source", "read_bytes", "IMAGE_EXTENSIONS", "sniff_image", "safe_relpath"]

#: Extensions taken as images without looking inside (compared lower-case).
IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .apng .webp .gif .bmp .dib .tif .tiff .ppm .pgm .pbm .pnm .ico .tga "
    ".jp2 .j2k .psd .dds .pcx .sgi .im .mpo .heic .avif".split()
)
#: Extensions never looked into: everything else without an image extension is sniffed.
_NOT_IMAGES = frozenset(
    ".txt .md .rst .csv .tsv .json .jsonl .yaml .yml .xml .html .htm .parquet .py .ipynb .pdf .zip .tar "
    ".gz .tgz .bz2 .xz .7z .npy .npz .pkl .pt .pth .h5 .mp4 .avi .mov .mkv .mp3 .wav .log .sh".split()
)
_MAGIC: tuple[bytes, ...] = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")
_MANIFEST_READERS = {".csv": pd.read_csv, ".parquet": pd.read_parquet}

_COLUMNS = ["origin", "relpath", "label"]
#: Optional manifest columns of coordinates that follow the geometry of their image.
PAIRED_COLUMNS = ("points", "boxes")


def safe_relpath(path: str) -> str:
    """A relative posix path that stays inside any folder it is joined to: no root, no ``.``; inner
    ``..`` resolved, and a ``..`` that would climb out kept apart as a ``_parent_`` folder, so that
    ``../x.jpg`` and ``x.jpg`` stay two different names.

    Examples
    --------
    >>> safe_relpath("../../etc/x.jpg"), safe_relpath("/abs/./a//b.png"), safe_relpath("a/../b.jpg")
    ('_parent_/_parent_/etc/x.jpg', 'abs/a/b.png', 'b.jpg')
    """
    norm = posixpath.normpath(path.replace("\\", "/"))  # an absolute path cannot climb above its root
    parts = ["_parent_" if part == ".." else part for part in norm.split("/") if part not in ("", ".")]
    return "/".join(parts) or "_"


def sniff_image(head: bytes) -> bool:
    """True when the first bytes of a file look like an image Pillow reads by default.

    Examples
    --------
    >>> sniff_image(b"\\x89PNG\\r\\n\\x1a\\n...."), sniff_image(b"hello")
    (True, False)
    """
    return head.startswith(_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


@dataclasses.dataclass(frozen=True)
class Listing:
    """The inputs of a run, in run order.

    ``items`` has one row per input with the columns ``origin`` (the URL as listed), ``relpath`` (posix
    path relative to SOURCE or the manifest's folder), ``label`` (str or None) and ``label_id`` (int32,
    -1 without a label); ``label_names[label_id]`` is the label. ``fs`` reads the origins.
    """

    source: str
    fs: Any
    items: pd.DataFrame
    label_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.items)


def _is_hidden(relpath: str) -> bool:
    return any(part.startswith(".") for part in relpath.split("/"))


def _list_folder(fs, root: str, labels: LabelSource) -> pd.DataFrame:
    found = sorted(fs.find(root, withdirs=False))
    rows, unknown = [], []
    for path in found:
        rel = posixpath.relpath(path, root) if path != root else posixpath.basename(path)
        if _is_hidden(rel):
            continue
        ext = posixpath.splitext(rel)[1].lower()
        if ext in IMAGE_EXTENSIONS:
            rows.append((path, rel))
        elif ext not in _NOT_IMAGES:
            unknown.append((path, rel))
    if unknown:  # decide by content: one small ranged read per file without an image extension
        heads = fs.cat_ranges([p for p, _ in unknown], [0] * len(unknown), [16] * len(unknown), on_error="return")
        rows += [u for u, head in zip(unknown, heads) if isinstance(head, bytes) and sniff_image(head)]
        rows.sort(key=lambda r: r[1])
    items = pd.DataFrame(rows, columns=["path", "relpath"])
    items["origin"] = [fs.unstrip_protocol(p) for p in items["path"]]
    if labels is LabelSource.FOLDER:
        items["label"] = [r.split("/", 1)[0] if "/" in r else None for r in items["relpath"]]
    else:
        items["label"] = None
    return items[_COLUMNS]


def _list_manifest(url: str, fs, path: str, labels: LabelSource, storage_options: dict) -> pd.DataFrame:
    reader = _MANIFEST_READERS[posixpath.splitext(path)[1].lower()]
    try:
        table = reader(url, storage_options=storage_options or None)
    except Exception as exc:
        raise SourceError(f"manifest {url!r} cannot be read: {exc}") from None
    if "path" not in table.columns:
        raise SourceError(f"manifest {url!r} has no 'path' column (columns: {', '.join(map(str, table.columns))})")
    base = posixpath.dirname(path)
    origins, relpaths = [], []
    for value in table["path"]:
        if not isinstance(value, str) or not value.strip():
            raise SourceError(f"manifest {url!r} has an empty or non-text path: {value!r}")
        origin, relpath = _resolve(fs, base, value)
        origins.append(origin)
        relpaths.append(relpath)
    label = table["label"] if "label" in table.columns and labels is LabelSource.FOLDER else None
    out = pd.DataFrame({"origin": origins, "relpath": relpaths})
    out["label"] = [None if pd.isna(v) else str(v) for v in label] if label is not None else None
    if "mask" in table.columns:
        out["mask"] = [None if not isinstance(v, str) or not v.strip() else _resolve(fs, base, v)[0] for v in table["mask"]]
    for col in PAIRED_COLUMNS:
        if col in table.columns:
            out[col] = [None if pd.isna(v) else str(v) for v in table[col]]
    return out


def _resolve(fs, base: str, value: str) -> tuple[str, str]:
    """A manifest entry -> (origin URL, safe relative path)."""
    if "://" in value:
        return value, safe_relpath(value.split("://", 1)[1])
    if value.startswith("/"):
        return fs.unstrip_protocol(value), safe_relpath(value)
    return fs.unstrip_protocol(posixpath.normpath(posixpath.join(base, value))), safe_relpath(value)


def _attach_masks(items: pd.DataFrame, masks: str, storage_options: dict) -> pd.DataFrame:
    """Pair each image with the file of the same relative path (any image extension) under ``masks``."""
    try:
        fs, root = url_to_fs(str(masks), **storage_options)
        found = fs.find(root.rstrip("/"), withdirs=False) if fs.isdir(root) else None
    except Exception as exc:
        raise SourceError(f"masks {masks!r} cannot be reached: {exc}") from None
    if found is None:
        raise SourceError(f"masks {masks!r} is not a folder")
    by_stem = {}
    for path in sorted(found):
        rel = posixpath.relpath(path, root.rstrip("/"))
        stem, ext = posixpath.splitext(rel)
        if ext.lower() in IMAGE_EXTENSIONS:
            by_stem.setdefault(stem, fs.unstrip_protocol(path))
    return items.assign(mask=[by_stem.get(posixpath.splitext(r)[0]) for r in items["relpath"]])


def _label_order(values: Sequence[str]) -> tuple[str, ...]:
    names = set(values)
    try:  # numeric labels sort as numbers, everything else as text
        return tuple(sorted(names, key=float))
    except ValueError:
        return tuple(sorted(names))


def list_source(
    source: str,
    labels: LabelSource = LabelSource.FOLDER,
    storage_options: dict[str, Any] | None = None,
    masks: str | None = None,
) -> Listing:
    """List the images of ``source``: a folder/prefix (recursively, sorted by relative path) or a
    ``.csv`` / ``.parquet`` manifest with a ``path`` column and an optional ``label`` column (kept in the
    manifest's order; relative paths are taken from the manifest's folder).

    Image files are found by extension, and files with an unknown extension by their first bytes; hidden
    files and folders (a name starting with ``.``) are left out. With ``labels="folder"`` a file's label
    is its first folder level under ``source`` (files directly in ``source`` have none).

    Paired targets: ``masks`` names a second tree whose files pair with the images by relative path
    (extension aside), or a manifest has a ``mask`` column; a manifest may also carry ``points`` and
    ``boxes`` columns (JSON lists of ``[x, y]`` / ``[x0, y0, x1, y1]`` in pixels of the upright image).

    Raises
    ------
    SourceError
        When ``source`` does not exist, holds no images, or is an unreadable manifest.

    Examples
    --------
    >>> listing = list_source("path/to/images")          # doctest: +SKIP
    >>> listing.items[["relpath", "label"]].head()        # doctest: +SKIP
    """
    storage_options = dict(storage_options or {})
    try:
        fs, root = url_to_fs(str(source), **storage_options)
        root = posixpath.normpath(root) if root.startswith("/") else root.rstrip("/") or root
        is_file = fs.isfile(root)
        exists = is_file or fs.isdir(root)
    except Exception as exc:  # bad protocol, unreachable endpoint, bad credentials
        raise SourceError(f"SOURCE {source!r} cannot be reached: {exc}") from None
    if not exists:
        raise SourceError(f"SOURCE {source!r} does not exist")
    ext = posixpath.splitext(root)[1].lower()
    if is_file and ext in _MANIFEST_READERS:
        items = _list_manifest(str(source), fs, root, labels, storage_options)
    elif is_file:
        raise SourceError(f"SOURCE {source!r} is a file, not a folder or a .csv/.parquet manifest")
    else:
        items = _list_folder(fs, root, labels)
    if items.empty:
        raise SourceError(f"SOURCE {source!r} holds no image files")
    if masks is not None:
        items = _attach_masks(items, masks, storage_options)
    labels_ = [None if pd.isna(v) else str(v) for v in items["label"]]
    items["label"] = pd.array(labels_, dtype="string")
    names = _label_order([v for v in labels_ if v is not None])
    ids = {name: i for i, name in enumerate(names)}
    items["label_id"] = pd.array([ids.get(v, -1) for v in labels_], "int32")
    items.insert(0, "index", pd.RangeIndex(len(items)).astype("int64"))
    return Listing(source=str(source), fs=fs, items=items.reset_index(drop=True), label_names=names)


def read_bytes(origins: Sequence[str], storage_options: dict[str, Any] | None = None) -> list[bytes | Exception]:
    """Fetch many whole files at once, each from the filesystem its URL names; concurrent on remote
    filesystems (fsspec's ``cat_ranges``, which, unlike ``cat``, takes names literally: ``[``, ``?`` and
    ``*`` are not globs).

    Returns, in order, each file's bytes or the exception that reading it raised.
    """
    options = dict(storage_options or {})
    groups: dict[int, tuple[Any, list[int], list[str]]] = {}
    out: list[bytes | Exception] = [FileNotFoundError("not read")] * len(origins)
    for i, origin in enumerate(origins):
        try:
            fs, path = url_to_fs(origin, **options)
        except Exception as exc:  # an unknown protocol fails this file only
            out[i] = exc
            continue
        _, where, paths = groups.setdefault(id(fs), (fs, [], []))
        where.append(i)
        paths.append(path)
    for fs, where, paths in groups.values():
        none = [None] * len(paths)
        for i, got in zip(where, fs.cat_ranges(paths, none, none, on_error="return")):
            out[i] = got
    return out
