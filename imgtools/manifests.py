"""Reading a ``.csv`` / ``.parquet`` manifest SOURCE: one file, or a folder of Parquet parts (a folder
whose name ends in ``.parquet``, as pandas, pyarrow, Dask and Spark write one table, and as imgtools writes
a long run's manifest), its parts read in name order as one table (hidden names and names starting with
``_``, such as ``_SUCCESS`` and ``_metadata``, left out).

Rows come a batch at a time (Parquet by record batches within row groups, CSV by chunks): nothing holds a
whole manifest. Each row's ``path`` is resolved to an origin URL and a safe relative path; relative paths
are taken from the manifest's folder (for a folder of parts, the folder that holds it: the table is the
manifest). A Parquet manifest is cut into :class:`ManifestSpan` runs of whole row groups from its
footers alone, so that workers read its parts apart. Errors name the part, row group and rows.
"""

from __future__ import annotations

import dataclasses
import functools
import posixpath
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pandas as pd

from .config import LabelSource
from .errors import SourceError
from .location import Resolver

__all__ = ["manifest_batches", "manifest_spans", "ManifestSpan", "manifest_files", "is_manifest_path",
           "is_table_folder", "source_columns", "safe_relpath", "PAIRED_COLUMNS", "MANIFEST_SUFFIXES"]

#: What a manifest's name ends with (compared lower-case).
MANIFEST_SUFFIXES = (".csv", ".parquet")

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


#: Columns of a manifest read as text (a CSV's column of labels is never turned into numbers).
_TEXT_COLUMNS = ("path", "label", "mask", *PAIRED_COLUMNS)


def is_manifest_path(path: str) -> bool:
    """Whether ``path`` names a manifest (by its suffix: a file, or a folder of Parquet parts).

    Examples
    --------
    >>> is_manifest_path("s3://b/train.parquet/"), is_manifest_path("list.CSV"), is_manifest_path("photos")
    (True, True, False)
    """
    return path.rstrip("/").lower().endswith(MANIFEST_SUFFIXES)


def is_table_folder(fs: Any, path: str) -> bool:
    """Whether the folder ``path`` (named ``*.parquet``) holds a table, as Parquet writers leave one: a
    ``.parquet`` file, a ``_``-file (``_SUCCESS``, ``_metadata``) or a ``key=value`` folder at its top level
    (one listing); otherwise it is a folder of images that happens to be named so."""
    try:
        names = [posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)]
    except Exception:
        return False
    return any(n.lower().endswith(".parquet") or n.startswith("_") or "=" in n for n in names)


def manifest_files(fs: Any, path: str) -> list[str]:
    """The files of the manifest at ``path``: itself, or a folder's Parquet parts in name order (found at
    any depth; hidden names and names starting with ``_`` left out).

    Raises
    ------
    SourceError
        A folder without any Parquet part.
    """
    if not fs.isdir(path):
        return [path]
    inside = path.rstrip("/") + "/"
    found = sorted(p for p in fs.find(path) if p.lower().endswith(".parquet") and p.rstrip("/") != path.rstrip("/")
                   and not any(part.startswith((".", "_")) for part in p[len(inside):].split("/")))
    if not found:
        raise SourceError(f"manifest {fs.unstrip_protocol(path)!r} is a folder without .parquet parts")
    return found


@dataclasses.dataclass(frozen=True)
class ManifestSpan:
    """Row groups ``groups`` of the manifest's file ``file`` (its place in :func:`manifest_files`), whose
    first row is row ``first_row`` of the whole manifest."""

    file: int
    groups: range
    first_row: int


def manifest_spans(fs: Any, path: str, rows: int) -> list[ManifestSpan] | None:
    """A Parquet manifest (a file or a folder of parts) cut into runs of whole row groups of one file, of at
    least ``rows`` rows each where the file has them, from its footers alone; None for a CSV manifest (its
    rows are found only by reading it) or a footer that cannot be read (:func:`manifest_batches` then says
    why).

    Examples
    --------
    >>> import fsspec, io
    >>> fs = fsspec.filesystem("memory")
    >>> buf = io.BytesIO(); pd.DataFrame({"path": ["a.jpg"] * 10}).to_parquet(buf, row_group_size=3)
    >>> fs.pipe_file("/spans/m.parquet", buf.getvalue())
    >>> [(s.groups, s.first_row) for s in manifest_spans(fs, "/spans/m.parquet", 5)]
    [(range(0, 2), 0), (range(2, 4), 6)]
    """
    if not path.lower().rstrip("/").endswith(".parquet"):
        return None
    import pyarrow.parquet as pq

    spans, at = [], 0
    try:
        for i, name in enumerate(manifest_files(fs, path)):
            with fs.open(name, "rb") as f:
                meta = pq.ParquetFile(f).metadata
            first, held = 0, 0
            for g in range(meta.num_row_groups):
                held += meta.row_group(g).num_rows
                if held >= rows or g == meta.num_row_groups - 1:
                    spans.append(ManifestSpan(i, range(first, g + 1), at))
                    first, at, held = g + 1, at + held, 0
    except Exception:
        return None
    return spans


def manifest_batches(url: str, fs: Any, path: str, labels: LabelSource = LabelSource.FOLDER,
                     batch: int = 1 << 16, span: ManifestSpan | None = None) -> Iterator[pd.DataFrame]:
    """The listing rows of a ``.csv`` / ``.parquet`` manifest (a file or a folder of parts), ``batch`` rows
    at a time, in the manifest's order: origin and relpath resolved from ``path`` (relative to the
    manifest's folder), ``label``, ``mask`` and the paired columns as text; at least one frame, empty for
    an empty manifest. ``span``: only those row groups of a Parquet manifest (:func:`manifest_spans`), so
    that parts of it are read apart.

    Raises
    ------
    SourceError
        The manifest cannot be read, has no ``path`` column, or a path that is empty or not text (the
        error names the part, row group and rows).
    """
    try:
        files = manifest_files(fs, path)
    except SourceError:
        raise
    except Exception as exc:
        raise SourceError(f"manifest {url!r} cannot be read: {' '.join(str(exc).split())}") from None
    base = posixpath.dirname(path.rstrip("/"))
    start, yielded = (0, False) if span is None else (span.first_row, False)
    for i, name in enumerate(files):
        if span is not None and i != span.file:
            continue
        part = "" if len(files) == 1 else f" in {name[len(path.rstrip('/')) + 1:]}"
        for rows in _file_batches(url, fs, name, base, labels, batch, span, start, part):
            yield rows
            start += len(rows)
            yielded = True
    if not yielded:
        yield _manifest_rows(url, fs, base, pd.DataFrame({"path": []}), labels, 0)


def _file_batches(url: str, fs: Any, path: str, base: str, labels: LabelSource, batch: int,
                  span: ManifestSpan | None, start: int, part: str) -> Iterator[pd.DataFrame]:
    """:func:`manifest_batches` of one file of the manifest, its first row being row ``start``."""
    where = part
    try:
        with fs.open(path, "rb") as f:
            if path.lower().endswith(".parquet"):
                import pyarrow.parquet as pq

                parquet = pq.ParquetFile(f)
                columns = list(parquet.schema_arrow.names)
                groups = range(parquet.num_row_groups) if span is None else span.groups

                def tables() -> Iterator[pd.DataFrame]:  # row group by row group, so that an error names one
                    nonlocal where
                    at = start
                    for g in groups:
                        n = parquet.metadata.row_group(g).num_rows
                        rows = f"row group {g} (rows {at} to {at + n - 1})"
                        where = f"{part}, {rows}" if part else f" in {rows}"
                        for record_batch in parquet.iter_batches(batch, row_groups=[g]):  # never a whole group
                            yield record_batch.to_pandas()
                        at += n
            else:
                columns = list(pd.read_csv(f, nrows=0).columns)
                f.seek(0)
                reader = pd.read_csv(f, chunksize=batch, dtype={c: str for c in _TEXT_COLUMNS if c in columns})

                def tables() -> Iterator[pd.DataFrame]:
                    nonlocal where
                    at = start
                    where = f" after row {at}"
                    for chunk in reader:  # an error comes while the next chunk is read
                        yield chunk
                        at += len(chunk)
                        where = f" after row {at}"
            if "path" not in columns:
                raise SourceError(f"manifest {url!r}{part} has no 'path' column "
                                  f"(columns: {', '.join(map(str, columns))})")
            at = start
            for table in tables():
                yield _manifest_rows(url, fs, base, table, labels, at)
                at += len(table)
    except SourceError:
        raise
    except Exception as exc:
        reason = " ".join(str(exc).split())  # one line
        raise SourceError(f"manifest {url!r} cannot be read{where}: {reason}") from None


def _manifest_rows(url: str, fs: Any, base: str, table: pd.DataFrame, labels: LabelSource, start: int) -> pd.DataFrame:
    origins, relpaths = [], []
    resolve = _resolver(fs, base)
    for i, value in enumerate(table["path"].tolist()):
        if not isinstance(value, str) or not value.strip():
            raise SourceError(f"manifest {url!r} has an empty or non-text path at row {start + i}: {value!r}")
        origin, relpath = resolve(value)
        origins.append(origin)
        relpaths.append(relpath)
    label = table["label"].tolist() if "label" in table.columns and labels is LabelSource.FOLDER else None
    out = pd.DataFrame({"origin": origins, "relpath": relpaths, "bytes": -1})  # sizes unknown: not looked up
    out["label"] = [None if pd.isna(v) else str(v) for v in label] if label is not None else None
    if "mask" in table.columns:
        out["mask"] = [None if not isinstance(v, str) or not v.strip() else resolve(v)[0]
                       for v in table["mask"].tolist()]
    for col in PAIRED_COLUMNS:
        if col in table.columns:
            out[col] = [None if pd.isna(v) else str(v) for v in table[col]]
    return out


def _resolver(fs: Any, base: str) -> Callable[[str], tuple[str, str]]:
    """:func:`_resolve` for the entries of a manifest in the folder ``base``: a plain relative path (no
    backslash, not climbing out of ``base``) is appended to ``base``'s URL, made once, instead of having
    the filesystem make a URL of every path (a third of the time of listing a manifest)."""
    url = fs.unstrip_protocol(base)
    if not url.rstrip("/").endswith(base.rstrip("/")):  # a filesystem that does not keep the path in its URL
        return functools.partial(_resolve, fs, base)
    prefix = url if url.endswith("/") else url + "/"

    def resolve(value: str) -> tuple[str, str]:
        if "://" not in value and "\\" not in value and not value.startswith("/"):
            rel = posixpath.normpath(value)
            if not rel.startswith("..") and rel != ".":
                return prefix + rel, rel
        return _resolve(fs, base, value)

    return resolve


def _resolve(fs, base: str, value: str) -> tuple[str, str]:
    """A manifest entry -> (origin URL, safe relative path)."""
    if "://" in value:
        return value, safe_relpath(value.split("://", 1)[1])
    if value.startswith("/"):
        return fs.unstrip_protocol(value), safe_relpath(value)
    return fs.unstrip_protocol(posixpath.normpath(posixpath.join(base, value))), safe_relpath(value)


def source_columns(source: str | Sequence[str], storage_options: dict[str, Any] | None = None) -> tuple[str, ...]:
    """The columns of a ``.csv`` / ``.parquet`` manifest SOURCE (the header of its first file alone); () for
    any other source or a manifest that cannot be read (listing it says why)."""
    if not isinstance(source, str) or not is_manifest_path(source):
        return ()
    try:
        fs, path = Resolver(storage_options)(source)
        first = manifest_files(fs, path)[0]
        with fs.open(first, "rb") as f:
            if first.lower().endswith(".parquet"):
                import pyarrow.parquet as pq

                return tuple(pq.read_schema(f).names)
            return tuple(pd.read_csv(f, nrows=0).columns)
    except Exception:
        return ()
