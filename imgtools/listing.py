"""Listing stage: the inputs of a run (a folder or bucket prefix, a CSV/Parquet manifest, or archives) in a
stable order with their labels and, where the listing knows them, their lengths.

Every location is a URL plus ``storage_options``, resolved once here (a :class:`~imgtools.location.Resolver`);
the rest of imgtools works with the resulting :class:`Listing` and never asks which backend it is on.
Folders and prefixes on filesystems that serve requests concurrently are split into sub-prefixes listed
side by side; a manifest can be summarised batch by batch without holding its rows
(:func:`summarize_source`, for ``--dry-run``). Members of archives are origins like any other
(``tar://<member>::<archive URL>``), read through :mod:`imgtools.sources`.
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from . import archives, retry
from .config import LabelSource
from .errors import SourceError, StorageError
from .folders import IMAGE_EXTENSIONS, folder_label, is_hidden, list_unit, map_units, plan_folder, sniff_image
from .location import Resolver
from .manifests import (
    PAIRED_COLUMNS,
    is_manifest_path,
    is_table_folder,
    manifest_batches,
    manifest_files,
    safe_relpath,
    source_columns,
)

__all__ = ["Listing", "list_source", "numbered", "source_columns", "resolve_source", "label_order",
           "list_folder", "ListingSummary", "summarize_source", "IMAGE_EXTENSIONS", "sniff_image",
           "safe_relpath", "spans_of", "SPAN_COLUMNS", "LISTING_ONLY_COLUMNS", "PAIRED_COLUMNS"]

_COLUMNS = ["origin", "relpath", "label", "bytes"]
#: Listing columns that say where an archive member's bytes lie; they do not go into the manifest.
SPAN_COLUMNS = ("offset", "size")
#: Listing columns that are not manifest columns: the spans, and ``bytes``, a file's length as the listing
#: found it (a folder's or bucket's sizes, an archive member's header; -1 when the listing does not say, as
#: for the files a manifest names), which the size guard checks before reading.
LISTING_ONLY_COLUMNS = (*SPAN_COLUMNS, "bytes")
_GLOB = frozenset("*?[")


@dataclasses.dataclass(frozen=True)
class Listing:
    """The inputs of a run, in run order.

    ``items`` has one row per input with the columns ``origin`` (the URL as listed), ``relpath`` (posix
    path relative to SOURCE or the manifest's folder), ``label`` (str or None) and ``label_id`` (int32,
    -1 without a label), ``bytes`` (the file's length as listed, -1 when unknown); ``label_names[label_id]``
    is the label. ``fs`` reads the origins.
    """

    source: str
    fs: Any
    items: pd.DataFrame
    label_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.items)


def list_folder(fs: Any, root: str, labels: LabelSource = LabelSource.FOLDER,
                every_file: bool = False) -> pd.DataFrame:
    """The rows of the tree under ``root`` in relative-path order: its units (:func:`plan_folder`), listed
    side by side where the filesystem serves requests concurrently, put back in order."""
    units = plan_folder(fs, root)
    frames = [f for f in map_units(lambda unit: list_unit(fs, root, unit, labels, every_file), units, fs) if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=_COLUMNS)


def _archive_urls(source: str | Sequence[str], resolve: Resolver) -> list[str] | None:
    """The archives SOURCE names (one URL, a glob, or a list), sorted; None when it names none."""
    urls = [source] if isinstance(source, str) else list(source)
    if isinstance(source, str) and archives.archive_kind(source) is None and (
            not (_GLOB & set(source)) or _exists(source, resolve)):
        return None  # a folder or manifest (whose name may hold [, ? or *)
    found = []
    for url in urls:
        if _GLOB & set(url) and "::" in url:
            raise SourceError(f"SOURCE {url!r}: a glob of chained URLs is not supported; give the shards as a list")
        if _GLOB & set(url):
            try:
                fs, pattern = resolve(url)
                found += [fs.unstrip_protocol(p)
                          for p in retry.call(lambda fs=fs, pattern=pattern: fs.glob(pattern), f"listing {url}")]
            except StorageError:
                raise
            except Exception as exc:
                raise SourceError(f"SOURCE {url!r} cannot be reached: {exc}") from None
        elif "::" in url:  # a chained URL (simplecache::gs://...) stays as given
            found.append(url)
        else:  # a full URL, like a glob's matches: a relative path would not name the file on a worker
            try:
                fs, path = resolve(url)
            except Exception as exc:
                raise SourceError(f"SOURCE {url!r} cannot be reached: {exc}") from None
            found.append(fs.unstrip_protocol(path))
    if not found:
        raise SourceError(f"SOURCE {source!r} matches no archives")
    odd = [u for u in found if archives.archive_kind(u) is None]
    if odd:
        raise SourceError(f"SOURCE {odd[0]!r} is not a .tar, .tar.gz, .tgz or .zip archive")
    return sorted(dict.fromkeys(found))


def _exists(url: str, resolve: Resolver) -> bool:
    try:
        fs, path = resolve(url)
        return fs.exists(path)
    except Exception:
        return False


def _list_archives(urls: list[str], labels: LabelSource, resolve: Resolver,
                   every_file: bool = False) -> pd.DataFrame:
    """Members of every archive (shards in URL order, members in archive order), with their spans."""
    from concurrent.futures import ThreadPoolExecutor

    def one(url: str) -> list[tuple]:
        try:
            fs, path = resolve(url)
            info = retry.call(lambda: fs.info(path), f"looking up {url}")  # a hiccup is retried, not "missing"
        except FileNotFoundError:
            raise SourceError(f"SOURCE {url!r} does not exist") from None
        except StorageError:
            raise
        except Exception as exc:
            raise SourceError(f"SOURCE {url!r} cannot be reached: {exc}") from None
        if info.get("type") == "directory":
            raise SourceError(f"SOURCE {url!r} is a folder, not an archive")
        protocol = archives.archive_kind(url)[0]  # type: ignore[index]
        rows, seen = [], set()
        for member in archives.list_archive(fs, path):
            rel = safe_relpath(member.name)
            image = every_file or posixpath.splitext(rel)[1].lower() in IMAGE_EXTENSIONS
            if member.name not in seen and not is_hidden(rel) and image:
                seen.add(member.name)  # a name stored twice is one input: its first copy, which streaming finds too
                rows.append((f"{protocol}://{member.name}::{url}", rel, member.length, member.offset, member.size))
        return rows

    with ThreadPoolExecutor(min(8, len(urls))) as pool:  # shards in a bucket: list them side by side
        rows = [row for shard in pool.map(one, urls) for row in shard]
    items = pd.DataFrame(rows, columns=["origin", "relpath", "bytes", *SPAN_COLUMNS])
    items["label"] = [folder_label(r) for r in items["relpath"]] if labels is LabelSource.FOLDER else None
    return items[_COLUMNS + list(SPAN_COLUMNS)]


def _list_manifest(url: str, fs, path: str, labels: LabelSource) -> pd.DataFrame:
    frames = list(manifest_batches(url, fs, path, labels))
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _attach_masks(items: pd.DataFrame, masks: str, resolve: Resolver) -> pd.DataFrame:
    """Pair each image with the file of the same relative path (any image extension) under ``masks``."""
    try:
        fs, root = resolve(str(masks))
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


def label_order(values: Sequence[str]) -> tuple[str, ...]:
    names = set(values)
    try:  # numeric labels sort as numbers, everything else as text
        return tuple(sorted(names, key=float))
    except ValueError:
        return tuple(sorted(names))


def list_source(
    source: str | Sequence[str],
    labels: LabelSource = LabelSource.FOLDER,
    storage_options: dict[str, Any] | None = None,
    masks: str | None = None,
    every_file: bool = False,
) -> Listing:
    """List the images of ``source``: a folder/prefix (recursively, sorted by relative path), a
    ``.csv`` / ``.parquet`` manifest with a ``path`` column and an optional ``label`` column (kept in the
    manifest's order; relative paths are taken from the manifest's folder), or archives: one ``.tar``,
    ``.tar.gz``, ``.tgz`` or ``.zip``, a glob of them (``gs://b/train-*.tar``) or a list, read in place
    (shards in URL order, members in archive order; a member's path in its archive is its ``relpath``).

    Image files are found by extension, and files with an unknown extension by their first bytes; hidden
    files and folders (a name starting with ``.``) are left out; ``every_file=True`` lists every other file
    of a folder or archive, image or not (as Spark's image source does). With ``labels="folder"`` a file's label
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
    resolve = Resolver(storage_options)
    shards = _archive_urls(source, resolve)
    if shards is not None:
        items = _list_archives(shards, labels, resolve, every_file)
        if items.empty:
            raise SourceError(f"SOURCE {source!r} holds no image files")
        fs = resolve(shards[0])[0]
        return _finish(items, masks, resolve, str(source) if isinstance(source, str) else ",".join(shards), fs)
    fs, root, is_file = _locate(str(source), resolve)
    if is_file:
        items = _list_manifest(str(source), fs, root, labels)
    else:
        items = list_folder(fs, root, labels, every_file)
    if items.empty:
        raise SourceError(f"SOURCE {source!r} holds no image files")
    return _finish(items, masks, resolve, str(source), fs)


def _locate(source: str, resolve: Resolver) -> tuple[Any, str, bool]:
    """A folder or manifest SOURCE: (filesystem, path, whether it is a manifest: a file, or a folder of
    Parquet parts named ``*.parquet``)."""
    try:
        fs, root = resolve(source)
        root = posixpath.normpath(root) if root.startswith("/") else root.rstrip("/") or root
        is_file = fs.isfile(root)
        exists = is_file or fs.isdir(root)
    except Exception as exc:  # bad protocol, unreachable endpoint, bad credentials
        raise SourceError(f"SOURCE {source!r} cannot be reached: {exc}") from None
    if not exists:
        raise SourceError(f"SOURCE {source!r} does not exist")
    if is_file and not is_manifest_path(root):
        raise SourceError(f"SOURCE {source!r} is a file, not a folder or a .csv/.parquet manifest")
    return fs, root, is_file or (root.lower().endswith(".parquet") and is_table_folder(fs, root))


def resolve_source(source: str | Sequence[str], storage_options: dict[str, Any] | None = None
                   ) -> tuple[Any, str, bool] | None:
    """(filesystem, path, whether it is a manifest) of a folder, prefix or manifest SOURCE; None for archives.

    Raises
    ------
    SourceError
        SOURCE cannot be reached, does not exist, or is a file that is neither a manifest nor an archive.
    """
    resolve = Resolver(storage_options)
    if _archive_urls(source, resolve) is not None:
        return None
    return _locate(str(source), resolve)


def _finish(items: pd.DataFrame, masks: str | None, resolve: Resolver, source: str, fs: Any) -> Listing:
    """Masks, label ids and the running index of a listing."""
    if masks is not None:
        items = _attach_masks(items, masks, resolve)
    names = label_order([str(v) for v in items["label"] if not pd.isna(v)])
    return Listing(source=source, fs=fs, items=numbered(items, 0, names), label_names=names)


def numbered(rows: pd.DataFrame, start: int, label_names: Sequence[str]) -> pd.DataFrame:
    """Listed rows as a listing's items: the running ``index`` from ``start`` first, ``label`` as text,
    ``bytes`` as int64, and ``label_id`` (the label's place in ``label_names``, -1 without one) last.

    Examples
    --------
    >>> rows = numbered(pd.DataFrame({"label": ["b", None], "bytes": [1, -1]}), 5, ("a", "b"))
    >>> rows[["index", "label_id"]].values.tolist()
    [[5, 1], [6, -1]]
    """
    ids = {name: i for i, name in enumerate(label_names)}
    labels = [None if pd.isna(v) else str(v) for v in rows["label"]]
    rows = rows.assign(label=pd.array(labels, dtype="string"), bytes=rows["bytes"].astype("int64"))
    rows.insert(0, "index", np.arange(start, start + len(rows), dtype=np.int64))
    rows["label_id"] = pd.array([ids.get(v, -1) for v in labels], "int32")
    return rows.reset_index(drop=True)


def spans_of(items: pd.DataFrame) -> list[tuple[int, int] | None] | None:
    """The archive spans of listing rows (None when the listing has none)."""
    if not set(SPAN_COLUMNS) <= set(items.columns):
        return None
    return [None if pd.isna(o) else (int(o), int(s)) for o, s in zip(items["offset"], items["size"])]


@dataclasses.dataclass(frozen=True)
class ListingSummary:
    """What a listing holds, without its rows: the number of ``inputs``, the ``label_names`` in order, the
    ``columns`` a manifest has, and whether some inputs are members of compressed tars (``streams``: they
    are read in order, which task planning must know)."""

    source: str
    inputs: int
    label_names: tuple[str, ...]
    columns: tuple[str, ...]
    streams: bool


#: Rows of a manifest looked at at once by :func:`summarize_source`.
SUMMARY_BATCH = 1 << 18


def summarize_source(source: str | Sequence[str], labels: LabelSource = LabelSource.FOLDER,
                     storage_options: dict[str, Any] | None = None) -> ListingSummary | None:
    """The summary of a ``.csv`` / ``.parquet`` manifest read batch by batch (the memory of one batch, and
    of the label names, whatever its length), with the checks :func:`list_source` makes on its ``path``
    column; None for any other source (a folder, a prefix, archives: list them).

    Raises
    ------
    SourceError
        The manifest cannot be read, has no ``path`` column, or a path that is empty or not text.

    Examples
    --------
    >>> summarize_source("train.parquet").inputs           # doctest: +SKIP
    10000000
    """
    if not isinstance(source, str) or not is_manifest_path(source):
        return None
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    fs, path = Resolver(storage_options)(source)
    if fs.isdir(path) and not is_table_folder(fs, path):  # a folder of images named *.parquet or *.csv
        return None
    inputs, names, streams, columns = 0, set(), False, ()
    try:
        for name in manifest_files(fs, path):
            with fs.open(name, "rb") as f:
                if name.lower().endswith(".parquet"):
                    parquet = pq.ParquetFile(f)
                    columns = tuple(parquet.schema_arrow.names)
                    batches = (b.to_pandas() for b in parquet.iter_batches(SUMMARY_BATCH, columns=_wanted(columns)))
                else:
                    columns = tuple(pd.read_csv(f, nrows=0).columns)
                    f.seek(0)
                    batches = pd.read_csv(f, chunksize=SUMMARY_BATCH, usecols=_wanted(columns),
                                          dtype=dict.fromkeys(_wanted(columns), str))
                if "path" not in columns:
                    raise SourceError(f"manifest {source!r} has no 'path' column (columns: {', '.join(columns)})")
                for batch in batches:
                    paths = batch["path"]
                    bad = paths[~paths.map(lambda v: isinstance(v, str) and bool(v.strip()))]
                    if len(bad):
                        raise SourceError(f"manifest {source!r} has an empty or non-text path: {bad.iloc[0]!r}")
                    streams = streams or bool(pc.any(pc.match_substring_regex(
                        pa.array(paths, pa.string()), r"^tar://.*::.*\.(tar\.gz|tgz)$")).as_py())
                    if "label" in batch.columns and labels is LabelSource.FOLDER:
                        names.update(str(v) for v in batch["label"].dropna().unique())
                    inputs += len(batch)
    except SourceError:
        raise
    except Exception as exc:
        raise SourceError(f"manifest {source!r} cannot be read: {exc}") from None
    if not inputs:
        raise SourceError(f"SOURCE {source!r} holds no image files")
    return ListingSummary(source=source, inputs=inputs, label_names=label_order(sorted(names)), columns=columns,
                          streams=streams)


def _wanted(columns: Sequence[str]) -> list[str]:
    return [c for c in ("path", "label") if c in columns]
