"""The listing of a run as parts in DEST, so that nothing holds every input's row at once.

A folder or prefix is listed unit by unit (:mod:`imgtools.folders`, side by side where the filesystem
serves requests concurrently), each unit's rows written as one part as soon as they are listed; a Parquet
manifest in runs of whole row groups (:class:`~imgtools.manifests.ManifestSpan`), a part each, when a cluster
lists it, else a record batch at a time; archives, CSV manifests and ``--masks`` listings are listed whole and
written in parts of :data:`PART_ROWS`. What stays in memory is a
:class:`ListingParts`: the rows of each part, the label names, and a digest of the inputs in order that does
not depend on how they were cut into parts (:func:`rows_digest`; the job record compares it).

A task's worker reads its chunk's rows from the parts (:func:`chunk_rows`): tasks carry chunk numbers,
never rows. A resumed run reads the parts it finds instead of listing SOURCE again, when they were listed
for the same request (source, labels, masks) and ``relist`` is not asked; a finished run removes them.

Layout under ``DEST/.imgtools/listing/``: ``part-NNNNNNN.parquet`` (the columns of
:data:`~imgtools.folders.UNIT_COLUMNS`, and where the listing has them the archive spans, ``mask``,
``points``, ``boxes``) and ``index.json``, written last: a listing without it is listed again.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from .config import LabelSource
from .errors import SourceError
from .folders import FolderUnit, Mapper, list_unit, map_units, plan_folder
from .listing import Listing, label_order, list_source, numbered, resolve_source
from .location import Location
from .manifests import PAIRED_COLUMNS, ManifestSpan, manifest_batches, manifest_spans

__all__ = ["ListingParts", "write_listing", "write_rows", "listing_request", "read_listing",
           "chunk_rows", "load_listing", "drop_listing",
           "part_lengths", "rows_digest", "LISTING_DIR", "PART_ROWS", "LISTING_TASKS"]

LISTING_DIR = ".imgtools/listing"
_INDEX = "index.json"
#: Rows of a part cut from a listing held whole (archives, manifests, masks).
PART_ROWS = 16384
#: A folder listed on a cluster's workers is listed in at most this many tasks of consecutive units.
LISTING_TASKS = 512
#: Rows of a Parquet row group in a part: a chunk reads the row groups it overlaps.
_ROW_GROUP = 4096
_P = (1 << 61) - 1  # the digest is a polynomial in the rows' hashes modulo this prime
_B = 1_000_003


def _digest_columns(columns) -> list[str]:
    return ["origin", "label", *[c for c in ("mask", *PAIRED_COLUMNS) if c in columns]]


def rows_digest(rows: pd.DataFrame) -> int:
    """A digest of ``rows``' origins and labels (and paired targets) in order: ``sum(h_i * B^(n-1-i)) mod
    P`` over 64-bit row hashes, so that the digest of two listings one after the other is
    :func:`_combine` of theirs and a listing's digest is the same however it was cut into parts.

    Examples
    --------
    >>> rows = pd.DataFrame({"origin": ["a", "b", "c"], "label": ["x", None, "y"]})
    >>> rows_digest(rows) == _combine(rows_digest(rows.iloc[:1]), rows_digest(rows.iloc[1:]), 2)
    True
    """
    columns = _digest_columns(rows.columns)
    text = rows["origin"].astype(str)
    for column in columns[1:]:
        values = rows[column].astype(object)
        text = text + "\0" + values.where(values.notna(), "\1").astype(str)
    digest = 0
    for h in (pd.util.hash_pandas_object(text, index=False).to_numpy() % np.uint64(_P)).tolist():
        digest = (digest * _B + h) % _P
    return digest


def _combine(first: int, then: int, n_then: int) -> int:
    return (first * pow(_B, n_then, _P) + then) % _P


@dataclasses.dataclass(frozen=True)
class ListingParts:
    """A listing written as parts: the ``request`` it answers (source, labels, masks, every_file), the
    rows of each part (``counts``), the ``label_names`` in order, the ``digest`` of the inputs, the
    ``columns`` of the parts, whether some inputs are members of compressed tars (``streams``), and the
    ``id`` of this writing of it (workers cache parts by it: a listing written again, even of the same
    inputs, may be cut otherwise)."""

    source: str
    request: dict[str, Any]
    counts: tuple[int, ...]
    label_names: tuple[str, ...]
    digest: str
    columns: tuple[str, ...]
    streams: bool
    id: str

    def __len__(self) -> int:
        return sum(self.counts)


def _part_path(location: Location, k: int) -> str:
    return location.path(LISTING_DIR, f"part-{k:07d}.parquet")


def _write_part(location: Location, k: int, rows: pd.DataFrame) -> tuple[int, set[str], int, bool]:
    """Part ``k`` of rows held whole: (rows, labels, digest, streams); an empty part is not written."""
    if not len(rows):
        return 0, set(), 0, False
    return _write_batches(location, k, iter([rows]))


def _summary(rows: pd.DataFrame) -> tuple[set[str], int, bool]:
    """(labels, digest, streams) of some rows."""
    labels = set(map(str, rows["label"].dropna().unique()))
    streams = bool(rows["origin"].str.match(r"^tar://.*::.*\.(tar\.gz|tgz)$").any())
    return labels, rows_digest(rows), streams


def _write_batches(location: Location, k: int, batches: Iterator[pd.DataFrame]) -> tuple[int, set[str], int, bool]:
    """Part ``k`` written batch after batch (a manifest's row groups, however big, in the memory of one
    batch): (rows, labels, digest, streams); a part without rows is removed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n, labels, digest, streams, writer = 0, set(), 0, False, None
    with location.fs.open(_part_path(location, k), "wb") as f:
        try:
            for rows in batches:
                if not len(rows):
                    continue
                table = pa.Table.from_pandas(rows, preserve_index=False)
                if writer is None:  # a column without a value in the first batch (labels, masks) is text too
                    writer = pq.ParquetWriter(f, pa.schema([field.with_type(pa.large_string())
                                                            if pa.types.is_null(field.type) else field
                                                            for field in table.schema]))
                writer.write_table(table.cast(writer.schema), row_group_size=_ROW_GROUP)
                more, d, s = _summary(rows)
                n, labels, digest, streams = n + len(rows), labels | more, _combine(digest, d, len(rows)), streams or s
        finally:
            if writer is not None:
                writer.close()
    if not n:
        location.fs.rm_file(_part_path(location, k))
    return n, labels, digest, streams


def write_listing(source: str | list[str], location: Location, labels: LabelSource = LabelSource.FOLDER,
                  storage_options: dict[str, Any] | None = None, masks: str | None = None,
                  every_file: bool = False, mapper: Mapper | None = None) -> ListingParts:
    """List ``source`` (as :func:`~imgtools.listing.list_source` does, the same rows in the same order)
    into parts under ``location`` (DEST), replacing any listing there, and return its summary. A folder
    or prefix without ``masks`` is written unit by unit, a Parquet manifest in runs of whole row groups:
    their rows are never all held. ``mapper`` (a cluster's workers) lists the units or runs, one a task,
    where there are several; otherwise this process does (in threads on a bucket).

    Raises
    ------
    SourceError
        As :func:`~imgtools.listing.list_source`.

    Examples
    --------
    >>> parts = write_listing("photos/", Location.resolve("photos.zarr"))     # doctest: +SKIP
    >>> len(parts), parts.label_names                                           # doctest: +SKIP
    (1000, ('cat', 'dog'))
    """
    request = listing_request(source, labels, masks, every_file)
    found = resolve_source(source, storage_options) if masks is None else None
    if found is None:  # archives, masks: listed whole, written in parts
        listing = list_source(source, labels, storage_options, masks=masks, every_file=every_file)
        return write_rows(location, listing.items, listing.source, request)
    drop_listing(location)
    location.fs.makedirs(location.path(LISTING_DIR), exist_ok=True)
    fs, root, is_manifest = found
    spans = manifest_spans(fs, root, PART_ROWS) if is_manifest and mapper is not None else None
    if spans is not None and len(spans) > 1:  # runs of row groups, each read and written by a worker
        work = functools.partial(_manifest_part, location, str(source), fs, root, LabelSource(labels))
        summaries = mapper(work, list(enumerate(spans)))  # type: ignore[misc]
    elif is_manifest:  # batch by batch, each written as soon as it is read
        batches = manifest_batches(str(source), fs, root, LabelSource(labels), PART_ROWS)
        summaries = [_write_part(location, k, rows) for k, rows in enumerate(batches)]
    else:  # unit by unit, each written as soon as it is listed
        units = list(enumerate(plan_folder(fs, root)))
        work = functools.partial(_list_part, location, fs, root, LabelSource(labels), every_file)
        if mapper is None or len(units) < 2:
            summaries = map_units(work, units, fs)
        else:  # at most LISTING_TASKS tasks of consecutive units: a scheduler keeps ~20 KB a task
            per = -(-len(units) // LISTING_TASKS)
            groups = [units[start : start + per] for start in range(0, len(units), per)]
            summaries = [s for done in mapper(functools.partial(_list_parts, work, fs), groups) for s in done]
    if not sum(n for n, _, _, _ in summaries):
        raise SourceError(f"SOURCE {source!r} holds no image files")
    return _index(location, str(source), request, summaries)


def listing_request(source: str | list[str], labels: LabelSource, masks: str | None,
                    every_file: bool = False) -> dict[str, Any]:
    """What a listing answers: a listing in DEST is taken again only for the same request."""
    return {"source": source if isinstance(source, str) else list(source), "labels": LabelSource(labels).value,
            "masks": None if masks is None else str(masks), "every_file": every_file}


def write_rows(location: Location, items: pd.DataFrame, source: str, request: dict[str, Any]) -> ListingParts:
    """Listing rows held whole (``items``, as :func:`~imgtools.listing.list_source` gives them, or an
    append's rows) written as the listing in DEST, in parts of :data:`PART_ROWS`."""
    drop_listing(location)
    location.fs.makedirs(location.path(LISTING_DIR), exist_ok=True)
    rows = items.drop(columns=["index", "label_id"])
    summaries = [_write_part(location, k, rows.iloc[start : start + PART_ROWS])
                 for k, start in enumerate(range(0, len(rows), PART_ROWS))]
    return _index(location, source, request, summaries)


def _index(location: Location, source: str, request: dict[str, Any], summaries: list) -> ListingParts:
    """The listing's index from its parts' summaries (rows, labels, digest, streams), written last."""
    counts = tuple(n for n, _, _, _ in summaries)
    digest = 0
    for n, _, d, _ in summaries:
        digest = _combine(digest, d, n)
    parts = ListingParts(source=source, request=request, counts=counts,
                         label_names=label_order([name for _, names, _, _ in summaries for name in names]),
                         digest=f"{digest:016x}", columns=_columns(location, counts),
                         streams=any(s for _, _, _, s in summaries), id=uuid.uuid4().hex)
    location.fs.pipe_file(location.path(LISTING_DIR, _INDEX),
                          json.dumps(dataclasses.asdict(parts), sort_keys=True).encode())
    return parts


def _list_part(location: Location, fs: Any, root: str, labels: LabelSource, every_file: bool,
               unit: tuple[int, FolderUnit]) -> tuple[int, set[str], int, bool]:
    k, what = unit
    return _write_part(location, k, list_unit(fs, root, what, labels, every_file))


def _list_parts(work: Any, fs: Any, units: list[tuple[int, FolderUnit]]) -> list[tuple[int, set[str], int, bool]]:
    """One task's units (in threads on filesystems that serve requests concurrently)."""
    return map_units(work, units, fs)


def _manifest_part(location: Location, url: str, fs: Any, path: str, labels: LabelSource,
                   span: tuple[int, ManifestSpan]) -> tuple[int, set[str], int, bool]:
    k, groups = span
    return _write_batches(location, k, manifest_batches(url, fs, path, labels, PART_ROWS, groups))


def _columns(location: Location, counts: tuple[int, ...]) -> tuple[str, ...]:
    import pyarrow.parquet as pq

    first = next(k for k, n in enumerate(counts) if n)
    with location.fs.open(_part_path(location, first), "rb") as f:
        return tuple(pq.read_schema(f).names)


def read_listing(location: Location, request: dict[str, Any] | None = None) -> ListingParts | None:
    """The listing in DEST (None when there is none, it is incomplete, or it answers another ``request``)."""
    try:
        parts = _parse(location.fs.cat_file(location.path(LISTING_DIR, _INDEX)))
    except (FileNotFoundError, ValueError, TypeError, KeyError):
        return None
    if request is not None and parts.request != request:
        return None
    return parts


def drop_listing(location: Location) -> None:
    """Remove the listing in DEST (a finished output is the same however it ran)."""
    if location.fs.exists(location.path(LISTING_DIR)):
        location.fs.rm(location.path(LISTING_DIR), recursive=True)


def load_listing(location: Location, parts: ListingParts) -> Listing:
    """The whole listing, held (for what needs every row at once: appends, image-file outputs)."""
    frames = [_open_part(location.fs, _part_path(location, k)).read().to_pandas()
              for k, n in enumerate(parts.counts) if n]
    items = numbered(pd.concat(frames, ignore_index=True), 0, parts.label_names)
    return Listing(source=parts.source, fs=location.fs, items=items, label_names=parts.label_names)


def part_lengths(location: Location, parts: ListingParts) -> Iterator[np.ndarray]:
    """The listed length of every input, part after part."""
    for k, n in enumerate(parts.counts):
        if n:
            yield _open_part(location.fs, _part_path(location, k)).read(columns=["bytes"]).column(0).to_numpy()


def chunk_rows(location: Location, listing: str, index: int, chunk: int) -> pd.DataFrame:
    """Chunk ``index``'s inputs (rows ``index * chunk`` on) as listing rows, read from the parts of the
    listing in DEST whose :attr:`ListingParts.id` is ``listing`` (its index read once per process)."""
    parts = _cached_index(location.fs, location.path(LISTING_DIR, _INDEX), listing)
    start = index * chunk
    stop = min(start + chunk, len(parts))
    offsets = np.concatenate([[0], np.cumsum(parts.counts)])
    frames = []
    for k in range(int(np.searchsorted(offsets, start, "right")) - 1, len(parts.counts)):
        lo, hi = int(offsets[k]), int(offsets[k + 1])
        if lo >= stop:
            break
        if hi <= start or hi == lo:
            continue
        part = _read_part(location.fs, _part_path(location, k), listing)
        frames.append(_slice(part, max(start, lo) - lo, min(stop, hi) - lo))
    return numbered(pd.concat(frames, ignore_index=True), start, parts.label_names)


def _slice(part: Any, first: int, last: int) -> pd.DataFrame:
    """Rows ``first`` to ``last - 1`` of a part, reading only the row groups they lie in."""
    groups, at, offset = [], 0, None
    for g in range(part.num_row_groups):
        n = part.metadata.row_group(g).num_rows
        if at + n > first and at < last:
            groups.append(g)
            offset = at if offset is None else offset
        at += n
    table = part.read_row_groups(groups)
    return table.slice(first - offset, last - first).to_pandas()


@functools.lru_cache(maxsize=8)
def _cached_index(fs: Any, path: str, listing: str) -> ListingParts:
    parts = _parse(fs.cat_file(path))
    if parts.id != listing:
        raise RuntimeError(f"the listing in DEST ({path}) is not this run's")
    return parts


def _parse(blob: bytes) -> ListingParts:
    recorded = json.loads(blob)
    return ListingParts(**{**recorded, "counts": tuple(recorded["counts"]),
                           "label_names": tuple(recorded["label_names"]), "columns": tuple(recorded["columns"])})


@functools.lru_cache(maxsize=4)
def _read_part(fs: Any, path: str, listing: str) -> Any:
    """A part of the listing ``listing`` (its id), opened for reading row groups (a few kept per process:
    consecutive chunks read one part)."""
    return _open_part(fs, path)


def _open_part(fs: Any, path: str) -> Any:
    import pyarrow.parquet as pq

    return pq.ParquetFile(io.BytesIO(fs.cat_file(path)))
