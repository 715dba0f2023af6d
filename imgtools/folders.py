"""Listing a folder or bucket prefix in units that can be listed apart, side by side, in any order, and
whose rows, put back in unit order, are the whole listing in relative-path order.

:func:`plan_folder` looks at the first levels of the tree (a few ``ls`` calls, side by side where the
filesystem serves requests concurrently) and cuts it into :class:`FolderUnit`: a sub-folder listed
whole (``tree``), or a run of at most :data:`UNIT_FILES` files found at those levels (``files``).
:func:`list_unit` lists one unit: its image files (by extension, unknown extensions by their first
bytes), without hidden names, sorted by relative path, with the label (first folder level) and length
of each. Units sort by their ``key``: a sub-folder ``a/x`` has the key ``a/x/``, and every relative path
under it sorts against every other unit's key exactly as ``a/x/`` does, so the units' rows in key order
are the tree's rows in relative-path order, however the tree was cut.

Nothing here holds more than one unit's rows; the listing as a whole is assembled (or written as parts)
by the caller (:mod:`imgtools.listing`, :mod:`imgtools.listparts`).
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import posixpath
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
from fsspec.implementations.local import LocalFileSystem

from . import retry
from .config import LabelSource

__all__ = ["FolderUnit", "plan_folder", "list_unit", "map_units", "Mapper", "IMAGE_EXTENSIONS", "sniff_image",
           "is_hidden", "folder_label", "LISTING_SPLIT", "LISTING_DEPTH", "UNIT_FILES", "UNIT_COLUMNS"]

#: Extensions taken as images without looking inside (compared lower-case).
IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .apng .webp .gif .bmp .dib .tif .tiff .ppm .pgm .pbm .pnm .ico .tga "
    ".jp2 .j2k .psd .dds .pcx .sgi .im .mpo .heic .avif".split()
)
#: Extensions never looked into: everything else without an image extension is sniffed.
NOT_IMAGES = frozenset(
    ".txt .md .rst .csv .tsv .json .jsonl .yaml .yml .xml .html .htm .parquet .py .ipynb .pdf .zip .tar "
    ".gz .tgz .bz2 .xz .7z .npy .npz .pkl .pt .pth .h5 .mp4 .avi .mov .mkv .mp3 .wav .log .sh".split()
)
_MAGIC: tuple[bytes, ...] = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")

#: Listing a folder or prefix cuts it into at least this many units where it can (going down at most
#: LISTING_DEPTH levels): a bucket lists 1000 keys a request, one request after another within a prefix,
#: so 100M keys under one prefix are 100,000 requests in a row; units are listed side by side.
LISTING_SPLIT = 32
LISTING_DEPTH = 3
#: Files found directly at the levels looked at make units of at most this many.
UNIT_FILES = 50_000
#: ``map(work, items)``: ``[work(item) for item in items]`` in order, computed somewhere (this process, its
#: threads, a cluster's workers): how a caller hands work it may spread (listing units) to a stage that
#: knows nothing of where it runs. ``work`` must be idempotent: a lost worker's items are done again.
Mapper = Callable[[Callable[[Any], Any], Sequence[Any]], list]
#: The columns of a unit's rows.
UNIT_COLUMNS = ["origin", "relpath", "label", "bytes"]


def sniff_image(head: bytes) -> bool:
    """True when the first bytes of a file look like an image Pillow reads by default.

    Examples
    --------
    >>> sniff_image(b"\\x89PNG\\r\\n\\x1a\\n...."), sniff_image(b"hello")
    (True, False)
    """
    return head.startswith(_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def is_hidden(relpath: str) -> bool:
    """Whether a relative path has a hidden part (a name starting with ``.``)."""
    return any(part.startswith(".") for part in relpath.split("/"))


def folder_label(relpath: str) -> str | None:
    """The label of a file by folder: its first folder level (None for a file directly in the root)."""
    return relpath.split("/", 1)[0] if "/" in relpath else None


@dataclasses.dataclass(frozen=True)
class FolderUnit:
    """A part of a tree listed on its own: the sub-folder ``tree`` (a path as the filesystem names it)
    listed whole, or ``files`` found at the levels :func:`plan_folder` looked at (path, length or None).
    ``key`` orders units (see the module docstring)."""

    key: str
    tree: str | None = None
    files: tuple[tuple[str, int | None], ...] = ()


def _ls_all(fs: Any, prefixes: list[str]) -> list[dict[str, Any]]:
    """One level of every prefix (``fs.ls`` with details), side by side on filesystems that serve
    requests concurrently."""
    if len(prefixes) == 1 or not getattr(fs, "async_impl", False):
        return [entry for p in prefixes for entry in fs.ls(p, detail=True)]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(16, len(prefixes))) as pool:
        return [entry for level in pool.map(lambda p: fs.ls(p, detail=True), prefixes) for entry in level]


def map_units(work: Any, units: Any, fs: Any) -> list:
    """``work(unit)`` of every unit, in order: in threads on filesystems that serve requests concurrently."""
    units = list(units)
    if len(units) < 2 or not getattr(fs, "async_impl", False):
        return [work(unit) for unit in units]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(16, len(units))) as pool:
        return list(pool.map(work, units))


def _walk_local(top: str):
    """(path, length) of every file under ``top`` on this machine's disk, as fsspec's walk finds them
    (links followed; a broken link has no length), without fsspec's per-file info dicts."""
    stack = [top]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir():
                    stack.append(entry.path)
                    continue
                try:
                    yield entry.path, entry.stat().st_size
                except OSError:
                    yield entry.path, None


def _origins(fs: Any, root: str, paths: list[str]) -> list[str]:
    """The URLs of ``paths`` under ``root``: the root's URL once, the rest of each path appended."""
    base, inside = fs.unstrip_protocol(root), root.rstrip("/") + "/"
    if not base.endswith(root.rstrip("/")):
        return [fs.unstrip_protocol(p) for p in paths]
    return [base.rstrip("/") + "/" + p[len(inside):] if p.startswith(inside) else fs.unstrip_protocol(p)
            for p in paths]


def _relpath(path: str, root: str) -> str:
    return posixpath.relpath(path, root) if path != root else posixpath.basename(path)


def plan_folder(fs: Any, root: str) -> list[FolderUnit]:
    """The units of the tree under ``root``, in key order: its first levels are looked at (on filesystems
    that serve requests concurrently down to :data:`LISTING_DEPTH`, until there are :data:`LISTING_SPLIT`
    sub-folders; on a local disk the first level only); each sub-folder of the last level looked at is a
    unit, the files met on the way make units of up to :data:`UNIT_FILES`. Hidden folders are left out
    here, hidden files by :func:`list_unit`. The entries of the levels looked at are held while planning.

    Examples
    --------
    >>> import fsspec
    >>> fs = fsspec.filesystem("memory")
    >>> for p in ("/plan/a/1.jpg", "/plan/a.jpg", "/plan/b/2.jpg"):
    ...     fs.pipe_file(p, b"x")
    >>> [u.key for u in plan_folder(fs, "/plan")]
    ['a.jpg', 'a/', 'b/']
    """
    files: list[tuple[str, str, int | None]] = []  # (key, path, length)
    prefixes = [root]
    # a local disk is walked in one process: its first level makes the units, nothing is gained deeper
    for _ in range(LISTING_DEPTH if getattr(fs, "async_impl", False) else 1):
        entries = retry.call(lambda prefixes=prefixes: _ls_all(fs, prefixes), f"listing {fs.unstrip_protocol(root)}")
        deeper = []
        for entry in entries:
            name = entry["name"].rstrip("/") or entry["name"]
            if entry.get("type") == "directory":
                if name != root and not posixpath.basename(name).startswith("."):
                    deeper.append(name)
            else:
                files.append((_relpath(name, root), name, entry.get("size")))
        prefixes = sorted(set(deeper))
        if not prefixes or len(prefixes) >= LISTING_SPLIT:
            break
    units = [FolderUnit(key=posixpath.relpath(p, root) + "/", tree=p) for p in prefixes]
    files.sort()
    keys = [key for key, _, _ in files]
    cut = sorted(units, key=lambda u: u.key)
    out: list[FolderUnit] = []
    start = 0
    for unit in [*cut, None]:  # the files between two sub-folders, in runs of UNIT_FILES
        stop = len(files) if unit is None else bisect.bisect_left(keys, unit.key)
        for s in range(start, stop, UNIT_FILES):
            run = files[s : min(stop, s + UNIT_FILES)]
            out.append(FolderUnit(key=run[0][0], files=tuple((path, size) for _, path, size in run)))
        start = stop
        if unit is not None:
            out.append(unit)
    return out


def list_unit(fs: Any, root: str, unit: FolderUnit, labels: LabelSource = LabelSource.FOLDER,
              every_file: bool = False) -> pd.DataFrame:
    """The rows of one unit (:data:`UNIT_COLUMNS`), sorted by relative path: image files by extension,
    files of unknown extension by their first bytes (one small ranged read each; ``every_file``: every
    file), hidden names left out; ``bytes`` is -1 where the filesystem does not say.

    Examples
    --------
    >>> import fsspec
    >>> fs = fsspec.filesystem("memory")
    >>> fs.pipe_file("/unit/cats/1.jpg", b"x"); fs.pipe_file("/unit/cats/.hidden.jpg", b"x")
    >>> list_unit(fs, "/unit", plan_folder(fs, "/unit")[0])[["relpath", "label", "bytes"]].values.tolist()
    [['cats/1.jpg', 'cats', 1]]
    """
    if unit.tree is not None:
        if getattr(fs, "async_impl", False):
            found = retry.call(lambda: fs.find(unit.tree, withdirs=False, detail=True),
                               f"listing {fs.unstrip_protocol(unit.tree)}")
            pairs = [(path, info.get("size")) for path, info in found.items()]
        elif isinstance(fs, LocalFileSystem):
            pairs = list(_walk_local(unit.tree))
        else:
            pairs = [(info["name"], info.get("size")) for _, _, level in fs.walk(unit.tree, detail=True)
                     for info in level.values()]
    else:
        pairs = list(unit.files)
    rows, unknown = [], []
    inside = root.rstrip("/") + "/"
    for path, size in pairs:
        rel = path[len(inside):] if path.startswith(inside) else _relpath(path, root)
        if is_hidden(rel):
            continue
        ext = posixpath.splitext(rel)[1].lower()
        row = (path, rel, -1 if size is None else int(size))
        if every_file or ext in IMAGE_EXTENSIONS:
            rows.append(row)
        elif ext not in NOT_IMAGES:
            unknown.append(row)
    if unknown:  # decide by content
        heads = fs.cat_ranges([u[0] for u in unknown], [0] * len(unknown), [16] * len(unknown), on_error="return")
        rows += [u for u, head in zip(unknown, heads) if isinstance(head, bytes) and sniff_image(head)]
    rows.sort(key=lambda r: r[1])
    out = pd.DataFrame({
        "origin": _origins(fs, root, [r[0] for r in rows]),
        "relpath": [r[1] for r in rows],
        "label": [folder_label(r[1]) for r in rows] if labels is LabelSource.FOLDER else None,
        "bytes": pd.array([r[2] for r in rows], dtype="int64"),
    })
    return out[UNIT_COLUMNS]
