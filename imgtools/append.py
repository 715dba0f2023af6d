"""Appending new inputs to a finished output: ``presize(..., append=True)``, ``imgtools presize --append``.

Contract: the ``n`` rows a finished DEST holds (its *base*) stay exactly as they are, never read or decoded
again; the inputs of SOURCE that DEST does not hold yet become rows ``n, n + 1, ...`` in SOURCE's listing
order, in every array and in the manifest (row ``i`` of every array is still manifest row ``i``). An input is
the one DEST holds when its ``origin`` and its ``relpath`` are the same. Labels DEST knows keep their ids;
labels only the new inputs have are added after them (in the listing's label order).

Design:

- The run's listing is the base (DEST's manifest rows) followed by the new inputs, and presize runs it as
  any job. Its job record replaces DEST's, and the done markers from the chunk holding row ``n`` on are
  dropped, once (:meth:`~imgtools.sinks.ledger.RunLedger.prepare` with ``keep``): a rerun of an interrupted
  append (``--append`` again) lists the same job and resumes it like any run, to the same bytes.
- The base's last chunk, when partial, is written again with the new rows that fill it: its base rows are
  reused (their manifest rows carried over: nothing read or decoded, :func:`reuse_base`) and the layouts
  leave their data as it is (:attr:`~imgtools.sinks.base.Sink.kept`): zarr writes only the new rows' region
  (zarr merges it into the chunk object), npy takes the base rows from the old part and replaces the part
  whole (a temporary file renamed over it on a local disk, so a kill leaves the old part or the new one),
  image files never write a reused row. Every full chunk of the base is left byte for byte; arrays grow by
  their metadata (zarr's ``resize``), and the consolidated metadata is made anew with the attributes.
- While an append runs, DEST's manifest is gone (as in every run): the base's manifest is kept in
  ``.imgtools/append-base.parquet`` until the new manifest and attributes are written. The base is the
  manifest of the attributes' ``n`` rows: that file, else ``manifest.parquet`` (one file, or a folder of parts:
  either is read, :func:`~imgtools.sinks.read_manifest`), else the done markers.
- Every run records the listed length of each row in ``.imgtools/lengths.parquet``. An input DEST holds is
  *changed* when its listed length differs from the recorded one (both known: folders, buckets and archive
  headers give lengths, a CSV/Parquet manifest does not) or its label does; the listing keeps no times or
  ETags, so a file rewritten at the same length is not seen. An input DEST holds that SOURCE no longer lists
  has *vanished*. Either refuses the append (``ConfigError``, naming the first and the count) unless
  ``allow_changed``: then their rows stay as they are (still the old file's pixels) and the report lists them.

Refused (``ConfigError``, exit 2, DEST untouched): a config other than DEST's (naming the first differing
setting), sizes added by ``imgtools derive`` (not extended yet: derive them again after appending), output
forms other than zarr, npy and image files. A DEST with no finished output is a normal run; nothing new is a
no-op (nothing written).
"""

from __future__ import annotations

import dataclasses
import io
import json
import posixpath
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from .config import OutputFormat, PresizeConfig
from .errors import ConfigError, DestinationError
from .listing import PAIRED_COLUMNS, Listing
from .plan import ChunkJob
from .schema import OutputInfo
from .sinks import Sink, read_info
from .sinks.ledger import parquet_bytes
from .sinks.manifest import MANIFEST, ManifestForm, manifest_form, read_manifest

__all__ = ["Extension", "plan_append", "reuse_base", "record_lengths", "BASE_FILE", "LENGTHS_FILE", "APPENDABLE"]

#: The base's manifest while an append runs.
BASE_FILE = ".imgtools/append-base.parquet"
#: The listed length of every row (-1 where the listing did not say), written by every run.
LENGTHS_FILE = ".imgtools/lengths.parquet"
#: The output forms an append extends.
APPENDABLE = frozenset({OutputFormat.ZARR, OutputFormat.NPY, OutputFormat.JPEG, OutputFormat.PNG, OutputFormat.WEBP})


@dataclasses.dataclass(frozen=True)
class Extension:
    """An append planned against DEST: the ``base`` rows it keeps, the run's listing (``items``: the base,
    then the new inputs), the labels, the listed ``lengths`` of every row, and the inputs that ``changed``
    or ``vanished`` since (``origin``, ``relpath``, ``reason``)."""

    base: int
    items: pd.DataFrame
    label_names: tuple[str, ...]
    lengths: np.ndarray
    changed: pd.DataFrame
    vanished: pd.DataFrame
    #: DEST's manifest rows of the base
    base_rows: pd.DataFrame
    #: the base's manifest as stored, when it is not kept in BASE_FILE yet
    _keep: bytes | None = None

    @property
    def new(self) -> int:
        """How many inputs are appended."""
        return len(self.items) - self.base

    def start(self, sink: Sink) -> None:
        """Keep the base's manifest in DEST (before the run removes ``manifest.parquet``); the lock
        :func:`plan_append` took is released if that fails."""
        try:
            if self._keep is not None:
                sink.ledger.put(BASE_FILE, self._keep)
        except BaseException:
            sink.release_lock()
            raise

    def finish(self, sink: Sink) -> None:
        """Drop the kept base (once the new manifest and attributes are written)."""
        if sink.fs.exists(sink.path(BASE_FILE)):
            sink.fs.rm_file(sink.path(BASE_FILE))


def plan_append(listing: Listing, sink: Sink, config: PresizeConfig, allow_changed: bool = False) -> Extension | None:
    """The append of ``listing`` to the finished output at ``sink``'s DEST, planned under DEST's lock (which
    the caller then holds, except when this raises or there is nothing new); None when DEST holds no
    finished output (a normal run, no lock taken).

    Raises
    ------
    ConfigError
        ``config`` differs from DEST's, DEST has derived sizes or a form an append does not extend, or
        inputs changed or vanished and ``allow_changed`` is False.
    DestinationError
        Another run holds DEST, or DEST's last run stopped part-way and its rows cannot be found.

    Examples
    --------
    >>> ext = plan_append(list_source("photos/"), make_sink("photos.zarr", cfg), cfg)   # doctest: +SKIP
    >>> ext.base, ext.new                                                               # doctest: +SKIP
    (1000, 25)
    """
    info = read_info(sink.location)
    if info is None:
        return None
    sink.take_lock()
    try:
        extension = _plan(listing, sink, config, info, allow_changed)
    except BaseException:
        sink.release_lock()
        raise
    if not extension.new:
        sink.release_lock()
    return extension


def _plan(listing: Listing, sink: Sink, config: PresizeConfig, info: OutputInfo, allow_changed: bool) -> Extension:
    recorded = sink.ledger.recorded_job()
    _check_config(sink.url, config, recorded["config"] if recorded else {**PresizeConfig().to_dict(), **info.config})
    if config.format not in APPENDABLE:
        raise ConfigError(f"--append does not extend {config.format.value} outputs yet; presize SOURCE again "
                          "into a new DEST")
    if info.derived:
        raise ConfigError(f"--append: DEST {sink.url!r} has sizes made by imgtools derive "
                          f"({', '.join(info.derived)}), which an append does not extend; presize again without "
                          "them, or append and derive them anew in another DEST")
    base, blob = _base_rows(sink, info)
    lengths = _recorded_lengths(sink, info.n)
    items = listing.items
    listed = _keys(items)
    changed, vanished = _stale(base, lengths, items, listed)
    if (len(changed) or len(vanished)) and not allow_changed:
        first = pd.concat([changed, vanished], ignore_index=True).iloc[0]
        raise ConfigError(f"--append: {len(changed)} inputs changed and {len(vanished)} vanished since DEST was "
                          f"written (first: {first['origin']!r}, {first['reason']}); pass --allow-changed to keep "
                          "their rows as they are and append the new inputs")
    held = set(_keys(base))
    new = items[[key not in held for key in listed]]
    both, names = _combined(base, new, info.label_names, listing.label_names)
    sink.check_items(both)  # image files: a new input must not take a file DEST's rows have
    return Extension(base=len(base), items=both, label_names=names,
                     lengths=np.concatenate([lengths, new["bytes"].to_numpy(np.int64)]), changed=changed,
                     vanished=vanished, base_rows=base, _keep=blob)


def _stale(base: pd.DataFrame, lengths: np.ndarray, items: pd.DataFrame,
           listed: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The base rows whose input changed (listed length or label) and those whose input is no longer listed:
    ``origin``, ``relpath``, ``reason``."""
    where: dict[str, int] = {}
    for i, key in enumerate(listed):  # an input listed twice is matched by its first listing
        where.setdefault(key, i)
    at = np.array([where.get(key, -1) for key in _keys(base)], np.int64)  # each base row's listing row, -1: gone
    vanished = base[at < 0][["origin", "relpath"]].assign(reason="no longer listed")
    present = np.flatnonzero(at >= 0)
    now = items["bytes"].to_numpy(np.int64)[at[present]]
    old_label = [None if pd.isna(v) else str(v) for v in base["label"].iloc[present]]
    new_label = [None if pd.isna(v) else str(v) for v in items["label"].iloc[at[present]]]
    reasons = [f"{b} bytes then, {a} now" if b >= 0 and a >= 0 and a != b else
               f"label {o!r} then, {n!r} now" if o != n else None
               for b, a, o, n in zip(lengths[present], now, old_label, new_label)]
    hit = [i for i, r in enumerate(reasons) if r is not None]
    changed = base.iloc[present[hit]][["origin", "relpath"]].assign(reason=[reasons[i] for i in hit])
    return changed.reset_index(drop=True), vanished.reset_index(drop=True)


def _combined(base: pd.DataFrame, new: pd.DataFrame, known: list[str],
              listed_labels: tuple[str, ...]) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """The run's listing (the base rows, then the new inputs numbered after them) and its label names (DEST's,
    then the labels only new inputs have, in the listing's label order)."""
    names = tuple(known)
    labels_new = {str(v) for v in new["label"].dropna()}
    names += tuple(n for n in listed_labels if n in labels_new and n not in names)
    ids = {name: i for i, name in enumerate(names)}
    paired = [c for c in ("mask", *PAIRED_COLUMNS) if c in new.columns and c in base.columns]
    head = base[["index", "origin", "relpath", "label", "label_id", *paired]]
    head = head.assign(bytes=np.int64(-1))  # never read again: the size guard is not asked
    tail = new.assign(index=np.arange(len(base), len(base) + len(new), dtype=np.int64),
                      label_id=pd.array([ids.get(v, -1) if isinstance(v, str) else -1 for v in new["label"]],
                                        "int32"))
    both = pd.concat([head, tail], ignore_index=True) if len(new) else head.reset_index(drop=True)
    both["label"] = both["label"].astype("string")
    both["label_id"] = both["label_id"].astype("int32")
    both["index"] = both["index"].astype("int64")
    return both, names


def _keys(rows: pd.DataFrame) -> list[str]:
    return [f"{o}\0{r}" for o, r in zip(rows["origin"], rows["relpath"])]


def _check_config(url: str, config: PresizeConfig, recorded: dict[str, Any]) -> None:
    """Refuse a config other than the one DEST records, naming the first differing setting."""
    now = {**PresizeConfig().to_dict(), **config.to_dict()}
    for key in now:
        if key in recorded and json.dumps(recorded[key]) != json.dumps(now[key]):
            raise ConfigError(f"--append: DEST {url!r} was written with {key} {recorded[key]!r}, not "
                              f"{now[key]!r}; give the settings it was written with")


def _base_rows(sink: Sink, info: OutputInfo) -> tuple[pd.DataFrame, bytes | None]:
    """DEST's ``info.n`` manifest rows, and the stored manifest when it still has to be kept in BASE_FILE."""
    try:
        rows = pd.read_parquet(io.BytesIO(sink.fs.cat_file(sink.path(BASE_FILE))))
        if len(rows) == info.n:
            return rows, None
    except Exception:  # missing, or cut short by a kill: the manifest
        pass
    try:  # kept as stored (one file), or as one file of its parts' rows (a folder)
        if manifest_form(sink.location) is ManifestForm.FILE:
            blob = sink.fs.cat_file(sink.path(MANIFEST))
            rows = pd.read_parquet(io.BytesIO(blob))
        else:
            rows = read_manifest(sink.location)
            blob = parquet_bytes(rows)
        if len(rows) == info.n:
            return rows, blob
    except Exception:  # missing, or cut short by a kill: the done markers
        pass
    parts = []  # a run that was not an append stopped part-way: the done markers still hold every row
    for k in range(-(-info.n // sink.config.chunk)):
        try:
            parts.append(sink.ledger.read_marker(k))
        except Exception:
            raise DestinationError(f"DEST {sink.url!r}: its last run stopped part-way and chunk {k} is not done; "
                                   "run that again (without --append) to finish it before appending") from None
    rows = pd.concat(parts, ignore_index=True).iloc[: info.n]
    if len(rows) != info.n or not np.array_equal(rows["index"].to_numpy(), np.arange(info.n)):
        raise DestinationError(f"DEST {sink.url!r}: its rows cannot be found (no manifest of its {info.n} rows); "
                               "use --overwrite to start again")
    rows = rows.reset_index(drop=True)
    return rows, parquet_bytes(rows)


def _recorded_lengths(sink: Sink, n: int) -> np.ndarray:
    """The listed lengths of DEST's first ``n`` rows as recorded (-1 where unknown: an output written before
    lengths were recorded)."""
    try:
        lengths = pd.read_parquet(io.BytesIO(sink.fs.cat_file(sink.path(LENGTHS_FILE))))["bytes"].to_numpy(np.int64)
    except Exception:
        lengths = np.zeros(0, np.int64)
    return lengths[:n] if len(lengths) >= n else np.full(n, -1, np.int64)


#: Rows of a row group of the lengths file.
_LENGTHS_GROUP = 1 << 20


def record_lengths(sink: Sink, lengths: Iterable[np.ndarray]) -> None:
    """Record the listed length of every row, given part after part in row order (what the next append
    compares with), written a part at a time: a run of any length holds one part's lengths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("bytes", pa.int64())])
    path = sink.ledger.path(LENGTHS_FILE)
    sink.fs.makedirs(posixpath.dirname(path), exist_ok=True)
    held: list[np.ndarray] = []
    count = 0
    with sink.fs.open(path, "wb") as f, pq.ParquetWriter(f, schema) as writer:
        for part in lengths:  # row groups of _LENGTHS_GROUP rows however the parts came: the same bytes
            held.append(np.asarray(part, np.int64))
            count += len(held[-1])
            if count >= _LENGTHS_GROUP:
                rows = np.concatenate(held)
                cut = len(rows) - len(rows) % _LENGTHS_GROUP
                for start in range(0, cut, _LENGTHS_GROUP):
                    writer.write_table(pa.table({"bytes": rows[start : start + _LENGTHS_GROUP]}, schema=schema))
                held, count = [rows[cut:]], len(rows) - cut
        if count:
            writer.write_table(pa.table({"bytes": np.concatenate(held)}, schema=schema))


def reuse_base(todo: list[ChunkJob], extension: Extension, chunk: int) -> list[ChunkJob]:
    """The chunks still to do, each with the base rows it holds to reuse (kept as they are, never read),
    beside the rows it reused already (an image-file output's earlier rows of new inputs)."""
    out = []
    for job in todo:
        start = job.index * chunk
        if start >= extension.base:
            out.append(job)
            continue
        rows = extension.base_rows.iloc[start : min(extension.base, start + chunk)]
        earlier = job.reuse
        if earlier is not None:
            earlier = earlier[~earlier["relpath"].isin(rows["relpath"])]
        reuse = rows if earlier is None or earlier.empty else pd.concat([rows, earlier], ignore_index=True)
        out.append(job._replace(reuse=reuse))
    return out
