"""The manifest of an output, ``DEST/manifest.parquet``: one row per input, in input order (row ``i`` is input
``i`` and array row ``i``), in one of two forms with the same schema and row groups of about
:data:`MANIFEST_ROW_GROUP` rows:

- **one Parquet file** (:attr:`ManifestForm.FILE`), for runs of at most
  :data:`~imgtools.sinks.ledger.MANIFEST_PART_ROWS` rows: most outputs, one file that every tool opens
  (``pq.ParquetFile``, DuckDB, polars, a copy), written by the client from the done markers (about a
  million rows a second or two). Every output written before the folder form has this one.
- **a folder of parts** (:attr:`ManifestForm.FOLDER`), above that, where one client process reading and
  rewriting every row would be the run's bottleneck: ``manifest.parquet/part-NNNNN.parquet`` (numbered
  from 0, zero-padded: name order is row order), each holding whole consecutive chunks and written by one
  task (:class:`PartWriter`, on the workers where the run has a cluster) from its chunks' done markers,
  then ``manifest.parquet/_SUCCESS`` (JSON: parts, rows, the run's id), written last by the client: a
  folder without it is not a manifest (:func:`manifest_form` says None) and the next run writes it again.
  pandas (``pd.read_parquet``), pyarrow (``pq.read_table``, ``pyarrow.dataset``), Dask
  (``dd.read_parquet``) and Spark read the folder as one table, in row order: they skip names that begin
  with ``_`` (``_SUCCESS`` is the name Spark's own writer gives its marker).

:func:`read_manifest` reads either form, :func:`manifest_token` fingerprints it (for caches),
:func:`remove_manifest` removes either. Which form a run writes is decided by
:meth:`~imgtools.sinks.ledger.RunLedger.write_manifest`.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import posixpath
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import IO, Any

import pandas as pd

from ..location import Location
from ..schema import ManifestTally

__all__ = ["MANIFEST", "MANIFEST_ROW_GROUP", "DONE_FILE", "ManifestForm", "ManifestRows", "Part", "PartWriter",
           "write_rows", "map_here", "part_name", "manifest_form", "read_manifest", "manifest_token", "remove_manifest"]

MANIFEST = "manifest.parquet"
#: Rows of a row group of the manifest, about: the Parquet writer keeps ~20 KB for each row group it wrote
#: (a row group per chunk of 256 made 23 MB at 300,000 rows, 8.6 GB at 100M), a buffer of this many rows
#: costs a few MB whatever the length.
MANIFEST_ROW_GROUP = 8192
#: In a folder manifest: written last, it makes the folder a manifest (JSON: parts, rows, run).
DONE_FILE = "_SUCCESS"


class ManifestForm(enum.Enum):
    """The two forms of ``manifest.parquet``."""

    FILE = "file"
    FOLDER = "folder"


def part_name(number: int) -> str:
    """The name of part ``number`` of a folder manifest (zero-padded: name order is row order).

    Examples
    --------
    >>> part_name(3)
    'part-00003.parquet'
    """
    return f"part-{number:05d}.parquet"


@dataclasses.dataclass(frozen=True)
class ManifestRows:
    """The rows a run's manifest is written from: ``n`` rows in chunks of ``chunk``; chunk ``k``'s rows are
    ``held[k]`` where the run holds them (not None), else those of its done marker.

    Examples
    --------
    >>> ManifestRows(n=10, chunk=4).chunks
    3
    """

    n: int
    chunk: int
    held: Mapping[int, pd.DataFrame | None] = dataclasses.field(default_factory=dict)

    @property
    def chunks(self) -> int:
        return -(-self.n // self.chunk)

    def read(self, chunks: Iterable[int], read_marker: Callable[[int], pd.DataFrame]) -> Iterator[pd.DataFrame]:
        """The rows of ``chunks``, one chunk at a time, in order (a marker is read when it comes)."""
        for k in chunks:
            rows = self.held.get(k)
            yield read_marker(k) if rows is None else rows

    def parts(self, chunks_per_part: int) -> list[Part]:
        """The parts of a folder manifest of these rows, ``chunks_per_part`` whole chunks each."""
        out = []
        for number, first in enumerate(range(0, self.chunks, chunks_per_part)):
            chunks = range(first, min(first + chunks_per_part, self.chunks))
            held = {k: rows for k in chunks if (rows := self.held.get(k)) is not None}
            out.append(Part(number, chunks, first * self.chunk, held))
        return out


@dataclasses.dataclass(frozen=True)
class Part:
    """Part ``number`` of a folder manifest: the rows of ``chunks`` (whole, consecutive), the first of them
    row ``start``; ``held``: those chunks' rows the run holds (the others are in their done markers)."""

    number: int
    chunks: range
    start: int
    held: dict[int, pd.DataFrame]


@dataclasses.dataclass(frozen=True)
class PartWriter:
    """Writes one part of the folder manifest at ``location`` (a task: picklable and idempotent, a part
    written again is the same file) and returns the tally of its rows: every part with ``schema`` (the
    first chunk's, as the single file has), row groups of about ``row_group`` rows; ``read_marker(k)``
    reads chunk ``k``'s rows from its done marker."""

    location: Location
    schema: object  # pyarrow.Schema (imported where it is used)
    read_marker: Callable[[int], pd.DataFrame]
    row_group: int = MANIFEST_ROW_GROUP
    per_row: bool = True  # the tally keeps each row's ok and label

    def __call__(self, part: Part) -> ManifestTally:
        tally = ManifestTally(part.start, self.per_row)
        folder = self.location.path(MANIFEST)
        self.location.fs.makedirs(folder, exist_ok=True)
        rows = (part.held[k] if k in part.held else self.read_marker(k) for k in part.chunks)
        with self.location.fs.open(posixpath.join(folder, part_name(part.number)), "wb") as f:
            write_rows(f, tally.count(rows), self.schema, self.row_group)
        return tally


def map_here(work: Callable[[Any], Any], items: Sequence[Any]) -> list:
    """The mapper of a run without a cluster of its own: each item in this process, in order.

    Examples
    --------
    >>> map_here(len, ["a", "bc"])
    [1, 2]
    """
    return [work(item) for item in items]


def write_rows(f: IO[bytes], parts: Iterable[pd.DataFrame], schema=None,
               row_group: int = MANIFEST_ROW_GROUP) -> None:
    """A Parquet file in ``f`` from rows given part by part, in order (a chunk's at a time: any length is
    written in the memory of one row group), in row groups of whole parts of about ``row_group`` rows
    (held as Arrow tables until written); every part cast to ``schema`` (default: the first part's).

    Examples
    --------
    >>> import io
    >>> buf = io.BytesIO()
    >>> write_rows(buf, [pd.DataFrame({"index": [0, 1]}), pd.DataFrame({"index": [2]})])
    >>> pd.read_parquet(buf)["index"].tolist()
    [0, 1, 2]
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer, pending, held = None, [], 0
    try:
        for rows in parts:
            table = pa.Table.from_pandas(rows, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(f, table.schema if schema is None else schema)
            pending.append(table.cast(writer.schema))
            held += len(table)
            if held >= row_group:  # row groups of whole parts, about this size
                writer.write_table(pa.concat_tables(pending), row_group_size=held)
                pending, held = [], 0
        if pending:
            writer.write_table(pa.concat_tables(pending), row_group_size=held)
    finally:
        if writer is not None:
            writer.close()


def manifest_form(location: Location) -> ManifestForm | None:
    """The form of the manifest at ``location``, or None where there is none (a folder without its
    ``_SUCCESS`` is none: a run stopped while writing it)."""
    fs, path = location.fs, location.path(MANIFEST)
    if fs.exists(posixpath.join(path, DONE_FILE)):
        return ManifestForm.FOLDER
    if fs.isfile(path):
        return ManifestForm.FILE
    return None


def _parts(location: Location) -> tuple[list[str], str]:
    """The paths of a folder manifest's parts (those its ``_SUCCESS`` names) and that file's text."""
    folder = location.path(MANIFEST)
    done = location.fs.cat_file(posixpath.join(folder, DONE_FILE)).decode()
    return [posixpath.join(folder, part_name(p)) for p in range(int(json.loads(done)["parts"]))], done


def read_manifest(location: Location | str, columns: Sequence[str] | None = None,
                  storage_options: dict[str, Any] | None = None) -> pd.DataFrame:
    """The manifest of the output at ``location`` (a path or URL of DEST, or its location; either form) as one
    frame, in row order, with ``columns`` (default: all).

    Raises
    ------
    FileNotFoundError
        ``location`` holds no manifest (or only a folder a run stopped writing).

    Examples
    --------
    >>> read_manifest("out/sample.zarr", columns=["index", "status"])   # doctest: +SKIP
    """
    if not isinstance(location, Location):
        location = Location.resolve(str(location), storage_options)
    form = manifest_form(location)
    if form is None:
        raise FileNotFoundError(location.path(MANIFEST))
    fs = location.fs
    cols = None if columns is None else list(columns)
    if form is ManifestForm.FILE:
        with fs.open(location.path(MANIFEST), "rb") as f:
            return pd.read_parquet(f, columns=cols)
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for path in _parts(location)[0]:
        with fs.open(path, "rb") as f:
            tables.append(pq.read_table(f, columns=cols))
    return pa.concat_tables(tables).to_pandas()


def manifest_token(location: Location) -> str:
    """A fingerprint of the manifest at ``location`` that changes whenever it is written again: the file's
    key (``fs.ukey``), or the folder's ``_SUCCESS`` (which names the run that wrote it).

    Raises
    ------
    FileNotFoundError
        ``location`` holds no manifest.
    """
    form = manifest_form(location)
    if form is None:
        raise FileNotFoundError(location.path(MANIFEST))
    if form is ManifestForm.FILE:
        return location.fs.ukey(location.path(MANIFEST))
    return _parts(location)[1]


def remove_manifest(location: Location) -> None:
    """Remove the manifest at ``location``, either form, complete or not (nothing when there is none)."""
    fs, path = location.fs, location.path(MANIFEST)
    if fs.exists(path):
        done = posixpath.join(path, DONE_FILE)
        if fs.isdir(path) and fs.exists(done):  # first: a removal cut short leaves no folder that looks complete
            fs.rm_file(done)
            fs.invalidate_cache(path)
        fs.rm(path, recursive=True)
        fs.invalidate_cache(path)
