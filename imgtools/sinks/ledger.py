"""The run ledger: what a run records in DEST beside the output itself, the same for every output form.

- ``.imgtools/job.json``: the job (config and inputs) a DEST holds; a different job is refused.
- ``.imgtools/lock.json``: the run writing DEST now, with a heartbeat; another run is refused. The lock is
  exclusive where the store has conditional writes (local disks, GCS, S3: see :mod:`imgtools.sinks.lock`).
- ``.imgtools/chunks/<k>.parquet``: chunk ``k``'s manifest rows, written after its data (the done marker):
  a chunk counts as done only when its marker can be read, so an interrupted run redoes exactly the chunks
  whose output may be incomplete.
- ``.imgtools/listing/``: the inputs of the run, as parts (written and read by :mod:`imgtools.listparts`,
  after :meth:`RunLedger.open` took the lock): tasks carry chunk numbers, their workers read the rows there.
- ``.imgtools/timeouts/<k>.json``: the images of chunk ``k`` that ran past the per-image time limit, by
  ``relpath``, with their reason (:meth:`RunLedger.record_timeouts`), written before the process that ran
  them gives them up; every later try of the chunk, in this run or a resumed one, takes them as failed
  rows instead of decoding them again (see :mod:`imgtools.watchdog`). Kept when the run completes.
- ``.imgtools/lengths.parquet`` (every run) and ``.imgtools/append-base.parquet`` (while an append runs):
  written by :mod:`imgtools.append`, which extends a finished output (:meth:`RunLedger.prepare` ``keep``).
- ``manifest.parquet`` then the attributes, last: an output is complete when both exist. One Parquet file
  up to :data:`MANIFEST_PART_ROWS` rows (written by the client), else a folder of parts of whole chunks
  written by tasks, then its ``_SUCCESS`` (:mod:`imgtools.sinks.manifest`). A run removes the manifest it
  finds (either form) before it writes anything: one stopped while writing it leaves none.

A ledger knows nothing of the layout's files; a layout (:class:`~imgtools.sinks.base.Sink`) owns one and
hands it the two things only it knows: how to create its empty output and where its attributes live.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import uuid
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any

import pandas as pd

from ..config import RUN_SETTINGS, PresizeConfig
from ..errors import DestinationError
from ..location import Location
from ..schema import ManifestTally
from .lock import LOCK_FILE, LOCK_TTL, RunLock
from .manifest import DONE_FILE, MANIFEST, ManifestRows, PartWriter, map_here, remove_manifest, write_rows

if TYPE_CHECKING:
    from ..folders import Mapper

__all__ = ["RunLedger", "JOB_FILE", "LOCK_FILE", "MARKER_DIR", "TIMEOUT_DIR", "MANIFEST", "ATTRS_FILE",
           "LOCK_TTL", "MANIFEST_PART_ROWS", "parquet_bytes"]

JOB_FILE = ".imgtools/job.json"
MARKER_DIR = ".imgtools/chunks"
TIMEOUT_DIR = ".imgtools/timeouts"
#: The manifest of a run of at most this many rows is one file, written by the client (a million rows in a
#: second or two, and every tool opens one file); above it, a folder of parts of about this many rows (whole
#: chunks), written by tasks. Read on the client only: the tasks are told their chunks.
MANIFEST_PART_ROWS = 1 << 20
ATTRS_FILE = "imgtools.json"


def parquet_bytes(df: pd.DataFrame) -> bytes:
    """``df`` as the bytes of a Parquet file (pyarrow, no index)."""
    buf = io.BytesIO()
    df.to_parquet(buf, index=False, engine="pyarrow")
    return buf.getvalue()


class RunLedger:
    """The job, lock, done markers and manifest of the runs that write one DEST.

    ``positional`` is True when output rows are positions (arrays): the job then includes the exact input
    list, and a marker is trusted by chunk number. False for mirrored files: only the config must match,
    so adding images to SOURCE and re-running only does the new ones.

    Examples
    --------
    >>> ledger = RunLedger(Location.resolve("memory://imgtools-doc/ledger"), positional=True)
    >>> ledger.done_rows().empty
    True
    """

    def __init__(self, location: Location, positional: bool):
        self.location = location
        self.positional = positional
        self.run_id = uuid.uuid4().hex
        #: The run lock of DEST (exclusive where the store allows; see :mod:`imgtools.sinks.lock`).
        self.lock = RunLock(location, self.run_id, ttl=LOCK_TTL)
        self._opened = False
        self._fresh = self._made_root = False

    @property
    def url(self) -> str:
        return self.location.url

    def path(self, *parts: str) -> str:
        return self.location.path(*parts)

    def put(self, relpath: str, data: bytes) -> None:
        path = self.path(relpath)
        self.location.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        self.location.fs.pipe_file(path, data)

    @contextlib.contextmanager
    def open_whole(self, relpath: str) -> Iterator[IO[bytes]]:
        """A file to write ``relpath`` in, so that a kill leaves the old file or the new one, never part of
        it: on a local disk a temporary ``<name>.<run>.partial`` beside it, renamed over it once written;
        a bucket's object appears whole when it is closed, and is written in place."""
        fs, path = self.location.fs, self.path(relpath)
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        target = f"{path}.{self.run_id}.partial" if self.location.local else path
        with fs.open(target, "wb") as f:
            yield f
        if target != path:
            os.replace(target, path)

    # ---- the job -----------------------------------------------------------------------------------
    def open(self, overwrite: bool = False) -> None:
        """Lock DEST for this run before anything is written there (the listing, see
        :mod:`imgtools.listparts`); with ``overwrite``, remove what earlier runs wrote. Idempotent.

        Raises
        ------
        DestinationError
            Another run holds DEST, or DEST is a non-empty folder imgtools did not write (never deleted,
            even with ``overwrite``).
        """
        if self._opened:
            return
        fs = self.location.fs
        ours = fs.exists(self.path(".imgtools"))
        if not ours and self._nonempty():
            raise DestinationError(f"DEST {self.url!r} is not empty and was not written by imgtools; "
                                   "choose another DEST")
        self._fresh, self._made_root = not ours, not fs.exists(self.location.root)
        self.take_lock()  # first, so that nothing below races another run (overwrite included)
        try:
            if ours and overwrite:
                self._clear()
        except BaseException:
            self.release_lock()
            raise
        self._opened = True

    def abandon(self) -> None:
        """Undo :meth:`open` for a run that stops before :meth:`prepare` recorded its job: DEST as it was
        found (what this run wrote where imgtools had written nothing is removed, then the folders it made,
        if empty), the lock released."""
        fs, root = self.location.fs, self.location.root
        try:
            if self._fresh and self._read_job() is None:
                self._clear()
        finally:
            self.release_lock()
            self._opened = False
        if self._fresh and self.location.local:  # object stores have no folders (and rmdir there is for buckets)
            for folder in (self.path(".imgtools"), root) if self._made_root else (self.path(".imgtools"),):
                with contextlib.suppress(OSError):  # not empty: another run's
                    fs.rmdir(folder)

    def prepare(self, job: dict[str, Any], overwrite: bool, create: Callable[[], None],
                keep: int | None = None) -> None:
        """Lock DEST for this run (:meth:`open`, unless done) and get it ready for ``job``: ``create()``
        makes the layout's empty output (idempotent). The chunks earlier runs of the same job finished are
        then :meth:`done_rows` (or, by number alone, :meth:`complete_markers`).

        ``keep`` (an append, see :mod:`imgtools.append`): DEST's first ``keep`` rows stay and ``job`` may list
        more inputs than the recorded job (its config must be the same); the job record is then replaced and
        the done markers from the chunk holding row ``keep`` on are dropped, so that a rerun of an
        interrupted append resumes it.

        Raises
        ------
        DestinationError
            Another run holds DEST, DEST holds another job, or DEST is a non-empty folder imgtools did
            not write (never deleted, even with ``overwrite``).
        """
        self.open(overwrite)
        fs = self.location.fs
        try:
            previous = self._read_job()
            if previous is not None and not self._same_job(previous, job):
                if keep is None or (_with_defaults(previous.get("config", {}))
                                    != _with_defaults(job.get("config", {}))):
                    raise DestinationError(f"DEST {self.url!r} holds another job ({_differences(previous, job)}); "
                                           "use --overwrite to start again")
                self._drop_markers(keep // int(job["config"]["chunk"]))
                self.put(JOB_FILE, json.dumps(job, sort_keys=True, indent=1).encode())  # the append's job
            fs.makedirs(self.path(MARKER_DIR), exist_ok=True)
            if previous is None:
                self.put(JOB_FILE, json.dumps(job, sort_keys=True, indent=1).encode())
            else:  # no longer complete while this run works (a file, or a folder of parts)
                remove_manifest(self.location)
            create()
        except BaseException:
            self.release_lock()
            raise

    def _clear(self) -> None:
        """Remove everything an earlier run wrote in DEST but the lock this run holds (``overwrite``)."""
        fs, lock = self.location.fs, self.path(LOCK_FILE)
        keep = {self.path(".imgtools"), lock}
        for path in fs.ls(self.location.root, detail=False):
            if path.rstrip("/") not in keep:
                fs.rm(path, recursive=True)
        with_lock = fs.ls(self.path(".imgtools"), detail=False) if fs.exists(self.path(".imgtools")) else []
        for path in with_lock:
            if path.rstrip("/") != lock:
                fs.rm(path, recursive=True)
        fs.invalidate_cache(self.location.root)  # what was listed before is gone

    def _same_job(self, previous: dict[str, Any], job: dict[str, Any]) -> bool:
        previous = {**previous, "config": _with_defaults(previous.get("config", {}))}
        job = {**job, "config": _with_defaults(job.get("config", {}))}
        if self.positional:
            return previous == job
        return previous.get("config") == job.get("config")

    def recorded_job(self) -> dict[str, Any] | None:
        """The job DEST records (None when there is none), its config completed with the defaults of
        settings an older imgtools did not record."""
        job = self._read_job()
        return None if job is None else {**job, "config": _with_defaults(job.get("config", {}))}

    def _drop_markers(self, first: int) -> None:
        """Remove the done markers of chunks ``first`` and after."""
        fs = self.location.fs
        for index in sorted(self.marker_indices()):
            if index >= first:
                fs.rm_file(self.path(MARKER_DIR, f"{index:07d}.parquet"))

    def _nonempty(self) -> bool:
        fs, root = self.location.fs, self.location.root
        return fs.isdir(root) and bool(fs.ls(root, detail=False))

    def _read_job(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.location.fs.cat_file(self.path(JOB_FILE)))
        except FileNotFoundError:
            return None
        except ValueError:
            raise DestinationError(f"DEST {self.url!r} has a damaged job record; "
                                   "use --overwrite to start again") from None

    # ---- done markers and the manifest --------------------------------------------------------------
    def mark_done(self, index: int, rows: pd.DataFrame) -> None:
        """Chunk ``index``'s manifest rows: its done marker (write it after the chunk's data)."""
        self.put(posixpath.join(MARKER_DIR, f"{index:07d}.parquet"), parquet_bytes(rows))

    def marker_indices(self) -> set[int]:
        """The chunk numbers that have a done marker, from their names alone (nothing read)."""
        try:
            listed = self.location.fs.ls(self.path(MARKER_DIR), detail=False)
        except FileNotFoundError:  # object stores have no empty folders
            return set()
        return {int(posixpath.basename(p).split(".")[0]) for p in listed if p.endswith(".parquet")}

    def complete_markers(self, rows_of: Callable[[int], int]) -> set[int]:
        """The chunk numbers whose done marker can be read and holds ``rows_of(k)`` rows (a marker cut short
        by a killed run counts as not done), without keeping any marker's rows: a batch of markers at a time,
        their Parquet footers read."""
        import pyarrow.parquet as pq

        fs = self.location.fs
        indices = sorted(self.marker_indices())
        complete = set()
        for start in range(0, len(indices), 256):
            batch = indices[start : start + 256]
            paths = [self.path(MARKER_DIR, f"{k:07d}.parquet") for k in batch]
            blobs = fs.cat_ranges(paths, [None] * len(paths), [None] * len(paths), on_error="return")
            for k, blob in zip(batch, blobs):
                try:
                    if pq.read_metadata(io.BytesIO(blob)).num_rows == rows_of(k):
                        complete.add(k)
                except Exception:  # missing or partial: the chunk is redone
                    continue
        return complete

    def done_rows(self) -> pd.DataFrame:
        """Manifest rows of every chunk whose marker is complete, with a ``chunk`` column; a marker that
        cannot be read (a run killed while writing it) counts as not done."""
        fs = self.location.fs
        try:
            listed = fs.ls(self.path(MARKER_DIR), detail=False)
        except FileNotFoundError:  # object stores have no empty folders
            listed = []
        paths = sorted(p for p in listed if p.endswith(".parquet"))
        blobs = fs.cat_ranges(paths, [None] * len(paths), [None] * len(paths), on_error="return")
        frames = []
        for path, blob in zip(paths, blobs):
            try:
                rows = pd.read_parquet(io.BytesIO(blob))
            except Exception:  # missing or partial: the chunk is redone
                continue
            frames.append(rows.assign(chunk=int(posixpath.basename(path).split(".")[0])))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"chunk": [], "relpath": []})

    # ---- images past the time limit ---------------------------------------------------------------
    def record_timeouts(self, index: int, reasons: dict[str, str]) -> None:
        """Record chunk ``index``'s images that ran past the time limit (``relpath`` -> reason), with those
        recorded before; written before the stuck image is given up on, so that no try decodes it again.

        Examples
        --------
        >>> ledger = RunLedger(Location.resolve("memory://imgtools-doc/timeouts"), positional=True)
        >>> ledger.record_timeouts(3, {"cat/1.png": "timed out after 120 s"})
        >>> ledger.timeouts(3), ledger.timeouts(4)
        ({'cat/1.png': 'timed out after 120 s'}, {})
        """
        merged = {**self.timeouts(index), **reasons}
        self.put(posixpath.join(TIMEOUT_DIR, f"{index:07d}.json"), json.dumps(merged, sort_keys=True).encode())

    def timeouts(self, index: int) -> dict[str, str]:
        """Chunk ``index``'s images recorded as past the time limit: ``relpath`` -> reason (one read)."""
        try:
            return json.loads(self.location.fs.cat_file(self.path(TIMEOUT_DIR, f"{index:07d}.json")))
        except FileNotFoundError:
            return {}

    def all_timeouts(self) -> dict[int, dict[str, str]]:
        """Every chunk's images recorded as past the time limit, by chunk number (for a resumed run)."""
        fs = self.location.fs
        try:
            listed = fs.ls(self.path(TIMEOUT_DIR), detail=False, refresh=True)
        except FileNotFoundError:
            return {}
        indices = [int(posixpath.basename(p).split(".")[0]) for p in listed if p.endswith(".json")]
        return {k: found for k in indices if (found := self.timeouts(k))}

    def read_marker(self, index: int) -> pd.DataFrame:
        """Chunk ``index``'s manifest rows, from its done marker.

        Raises
        ------
        FileNotFoundError
            The chunk has no marker.
        """
        blob = self.location.fs.cat_file(self.path(MARKER_DIR, f"{index:07d}.parquet"))
        return pd.read_parquet(io.BytesIO(blob))

    def write_manifest(self, rows: ManifestRows, mapper: Mapper | None = None, per_row: bool = True) -> ManifestTally:
        """``manifest.parquet`` from the run's ``rows`` (chunk by chunk: a manifest of any length is written
        in the memory of one row group), and the tally of its rows: one file written here for runs of at
        most :data:`MANIFEST_PART_ROWS` rows, else a folder of parts of whole chunks, one task a part mapped
        with ``mapper`` (None: in this process), then its ``_SUCCESS``. Write the attributes after it: then
        the output is complete. ``per_row``: the tally keeps each row's ok and label.

        Raises
        ------
        DestinationError
            This run took the lock and another run has taken it over since: it must not complete DEST.
        """
        self._verify_lock()
        remove_manifest(self.location)  # one of the other form (prepare removed it unless DEST had no job record)
        if rows.n <= MANIFEST_PART_ROWS:
            tally = ManifestTally(per_row=per_row)
            for leftover in self.location.fs.glob(f"{self.path(MANIFEST)}.*.partial") if self.location.local else ():
                self.location.fs.rm_file(leftover)  # an earlier run's, killed mid-write (see open_whole)
            # killed mid-write, a rerun of a finished job must not leave part of a manifest beside its attributes
            with self.open_whole(MANIFEST) as f:
                write_rows(f, tally.count(rows.read(range(rows.chunks), self.read_marker)))
            return tally
        import pyarrow as pa

        first = next(rows.read([0], self.read_marker))  # every part gets its schema, as the single file does
        writer = PartWriter(self.location, pa.Table.from_pandas(first, preserve_index=False).schema, self.read_marker,
                            per_row=per_row)
        parts = rows.parts(max(1, MANIFEST_PART_ROWS // rows.chunk))
        self.location.fs.makedirs(self.path(MANIFEST), exist_ok=True)
        tally = ManifestTally(per_row=per_row)
        for part in (mapper or map_here)(writer, parts):
            tally.extend(part)
        self._verify_lock()  # the parts took a while: still this run's DEST
        done = {"parts": len(parts), "rows": tally.rows, "run": self.run_id}
        self.location.fs.pipe_file(self.path(MANIFEST, DONE_FILE), json.dumps(done).encode())
        return tally

    def _verify_lock(self) -> None:
        if self.lock.held or self.lock.lost:
            self.lock.verify()

    # ---- the run lock ------------------------------------------------------------------------------
    def take_lock(self) -> None:
        """Take the lock of DEST for this run (refusing a live holder, taking over a stale one); call again
        as the heartbeat, at most every LOCK_TTL / 4 (see :class:`~imgtools.sinks.lock.RunLock`).

        Raises
        ------
        DestinationError
            Another live run holds DEST; or, as a heartbeat, another run has taken the lock over meanwhile
            (this run was thought dead).

        Examples
        --------
        >>> ledger = RunLedger(Location.resolve("memory://imgtools-doc/take"), positional=True)
        >>> ledger.take_lock(); ledger.take_lock(); ledger.lock.held
        True
        >>> ledger.release_lock()
        """
        if self.lock.held or self.lock.lost:
            self.lock.refresh()
        else:
            self.lock.acquire()

    def release_lock(self) -> None:
        """Remove this run's lock (left alone if another run has taken it over)."""
        self.lock.release()


def _with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A recorded config as two jobs are compared: the settings an older imgtools did not record at their
    defaults, which is what that version did (so a new setting does not make an earlier output another
    job), and without the settings of how a run goes rather than what it writes
    (:data:`~imgtools.config.RUN_SETTINGS`: a resume may raise ``--image-timeout``)."""
    full = {**PresizeConfig().to_dict(), **config}
    return {k: v for k, v in full.items() if k not in RUN_SETTINGS}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    diffs = []
    old_config, new_config = _with_defaults(old.get("config", {})), _with_defaults(new.get("config", {}))
    for key in sorted(set(old_config) | set(new_config)):
        a, b = old_config.get(key), new_config.get(key)
        if a != b:
            diffs.append(f"{key}: {a!r} there, {b!r} now")
    if old.get("inputs") != new.get("inputs"):
        diffs.append(f"inputs: {old.get('n')} listed there, {new.get('n')} now, not the same files")
    return "; ".join(diffs) or "a different imgtools version"
