"""The sink interface: DEST on any fsspec URL, the job record, the run lock, done markers, the manifest.

A sink is made on the client, pickled to the workers, and used in three steps: :meth:`Sink.prepare`
(client: take the lock, check DEST against the job, create the empty output), :meth:`Sink.write`
(worker: one chunk, then its done marker, last) and :meth:`Sink.finalize` (client: ``manifest.parquet``,
then the attributes that mark the output complete). A chunk counts as done only when its marker can be
read, so an interrupted run redoes exactly the chunks whose output may be incomplete.
"""

from __future__ import annotations

import abc
import dataclasses
import io
import json
import os
import posixpath
import socket
import time
import uuid
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from fsspec.core import url_to_fs

from ..config import OutputFormat, PresizeConfig
from ..errors import DestinationError

__all__ = ["Chunk", "Sink", "write_files", "JOB_FILE", "MARKER_DIR", "LOCK_FILE", "MANIFEST", "ATTRS_FILE", "LOCK_TTL"]

JOB_FILE = ".imgtools/job.json"
LOCK_FILE = ".imgtools/lock.json"
MARKER_DIR = ".imgtools/chunks"
MANIFEST = "manifest.parquet"
ATTRS_FILE = "imgtools.json"
#: Seconds after its last heartbeat that a lock of a run on another host counts as abandoned.
LOCK_TTL = 120.0


@dataclasses.dataclass
class Chunk:
    """One chunk of results: manifest ``rows`` ``start .. start + n`` and, per size key, what the sink
    encoded of each image (None where the image failed or its output is already there)."""

    index: int
    start: int
    rows: pd.DataFrame
    #: per size key, what :meth:`Sink.encode` made of each image (None where there is none)
    images: dict[str, list[Any]]
    #: per size key, one 2-d uint8 label mask per image (empty without masks)
    masks: dict[str, list[np.ndarray | None]] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> np.ndarray:
        return (self.rows["status"] == "ok").to_numpy()

    @property
    def labels(self) -> np.ndarray:
        return self.rows["label_id"].to_numpy(np.int32)

    def stacked(self, key: str, height: int, width: int, masks: bool = False) -> np.ndarray:
        """The images (or masks) of one fixed size as an (n, H, W, 3) (or (n, H, W)) array, zeros where
        there is none."""
        shape = (len(self.rows), height, width) if masks else (len(self.rows), height, width, 3)
        out = np.zeros(shape, np.uint8)
        for i, arr in enumerate((self.masks if masks else self.images)[key]):
            if arr is not None:
                out[i] = arr
        return out


def write_files(fs, files: dict[str, bytes]) -> None:
    """Write many files (bytes by path) in one call: each folder is made once, and the files go in one
    ``fs.pipe``, which async filesystems (gcsfs, s3fs) send concurrently."""
    for folder in sorted({posixpath.dirname(path) for path in files}):
        fs.makedirs(folder, exist_ok=True)
    if files:
        fs.pipe(files)


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False, engine="pyarrow")
    return buf.getvalue()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Sink(abc.ABC):
    """Base of every output form."""

    format: ClassVar[OutputFormat]
    #: True when output rows are positions (arrays): the job then includes the exact input list, and a
    #: marker is trusted by chunk number. False for mirrored files: markers are trusted by ``relpath``,
    #: so adding images to SOURCE and re-running only does the new ones (the presized-file cache).
    positional: ClassVar[bool] = True

    def __init__(self, dest: str, config: PresizeConfig, storage_options: dict[str, Any] | None = None):
        self.url = str(dest)
        self.config = config
        self.storage_options = dict(storage_options or {})
        self.fs, root = url_to_fs(self.url, **self.storage_options)
        self.root = root.rstrip("/") or root
        self.run_id = uuid.uuid4().hex
        self._locked = False

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def put(self, relpath: str, data: bytes) -> None:
        path = self.path(relpath)
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        self.fs.pipe_file(path, data)

    def put_all(self, files: dict[str, bytes]) -> None:
        """Write many files (bytes by relative path) in one call (see :func:`write_files`)."""
        write_files(self.fs, {self.path(relpath): data for relpath, data in files.items()})

    # ---- client side -------------------------------------------------------------------------------
    def prepare(self, items: pd.DataFrame, job: dict[str, Any], overwrite: bool = False) -> pd.DataFrame:
        """Lock DEST for this run and get it ready for ``job`` (config and inputs) and the listed ``items``.

        Returns the manifest rows that earlier runs of the same job finished (see :meth:`done_rows`).

        Raises
        ------
        DestinationError
            Another run holds DEST, DEST holds another job, or DEST is a non-empty folder imgtools did
            not write (never deleted, even with ``overwrite``).
        ConfigError
            This form cannot hold the listed items (see :meth:`_check_items`); DEST is left untouched.
        """
        self._check_items(items)
        ours = self.fs.exists(self.path(".imgtools"))
        if not ours and self._nonempty():
            raise DestinationError(f"DEST {self.url!r} is not empty and was not written by imgtools; choose another DEST")
        if ours:
            self._check_lock()
        if ours and overwrite:
            self.fs.rm(self.root, recursive=True)
            self.fs.invalidate_cache(self.root)  # what was listed before is gone
            ours = False
        previous = self._read_job() if ours else None
        if ours and previous is not None and not self._same_job(previous, job):
            raise DestinationError(f"DEST {self.url!r} holds another job ({_differences(previous, job)}); "
                                   "use --overwrite to start again")
        self.take_lock()
        try:
            self.fs.makedirs(self.path(MARKER_DIR), exist_ok=True)
            if previous is None:
                self.put(JOB_FILE, json.dumps(job, sort_keys=True, indent=1).encode())
            elif self.fs.exists(self.path(MANIFEST)):  # no longer complete while this run works
                self.fs.rm_file(self.path(MANIFEST))
            self._create(items)
            return self.done_rows()
        except BaseException:
            self.release_lock()
            raise

    def _same_job(self, previous: dict[str, Any], job: dict[str, Any]) -> bool:
        if self.positional:
            return previous == job
        return previous.get("config") == job.get("config")

    def finalize(self, manifest: pd.DataFrame, attrs: dict[str, Any]) -> None:
        """Write what this form derives from the manifest, ``manifest.parquet``, then the attributes:
        an output is complete when its manifest exists."""
        self._finalize(manifest)
        self.put(MANIFEST, _parquet_bytes(manifest))
        self.write_attrs(attrs)

    def read_attrs(self) -> dict[str, Any] | None:
        """The attributes of a finished output (None when there are none)."""
        try:
            return json.loads(self.fs.cat_file(self.path(ATTRS_FILE)))
        except (FileNotFoundError, ValueError):
            return None

    def write_attrs(self, attrs: dict[str, Any]) -> None:
        """Record the attributes of the output (``imgtools.json``; zarr keeps them in the group)."""
        self.put(ATTRS_FILE, json.dumps(attrs, sort_keys=True, indent=1).encode())

    def _nonempty(self) -> bool:
        return self.fs.isdir(self.root) and bool(self.fs.ls(self.root, detail=False))

    def _read_job(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.fs.cat_file(self.path(JOB_FILE)))
        except FileNotFoundError:
            return None
        except ValueError:
            raise DestinationError(f"DEST {self.url!r} has a damaged job record; use --overwrite to start again") from None

    def done_rows(self) -> pd.DataFrame:
        """Manifest rows of every chunk whose marker is complete, with a ``chunk`` column; a marker that
        cannot be read (a run killed while writing it) counts as not done."""
        try:
            listed = self.fs.ls(self.path(MARKER_DIR), detail=False)
        except FileNotFoundError:  # object stores have no empty folders
            listed = []
        paths = sorted(p for p in listed if p.endswith(".parquet"))
        blobs = self.fs.cat_ranges(paths, [None] * len(paths), [None] * len(paths), on_error="return")
        frames = []
        for path, blob in zip(paths, blobs):
            try:
                rows = pd.read_parquet(io.BytesIO(blob))
            except Exception:  # missing or partial: the chunk is redone
                continue
            frames.append(rows.assign(chunk=int(posixpath.basename(path).split(".")[0])))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"chunk": [], "relpath": []})

    # ---- the run lock ------------------------------------------------------------------------------
    def _check_lock(self) -> None:
        try:
            lock = json.loads(self.fs.cat_file(self.path(LOCK_FILE)))
        except (FileNotFoundError, ValueError):
            return
        age = time.time() - float(lock.get("heartbeat", 0))
        same_host = lock.get("host") == socket.gethostname()
        alive = age < LOCK_TTL and (not same_host or _pid_alive(int(lock.get("pid", -1))))
        if alive and lock.get("run") != self.run_id:
            raise DestinationError(
                f"DEST {self.url!r} is being written by another run (pid {lock.get('pid')} on {lock.get('host')}, "
                f"last seen {age:.0f} s ago); wait for it, or stop it and run again")

    def take_lock(self) -> None:
        """Record this run as the writer of DEST; call again as a heartbeat, at most every LOCK_TTL / 4.

        Raises
        ------
        DestinationError
            When another run has taken the lock over meanwhile (this run was thought dead).
        """
        try:
            held = json.loads(self.fs.cat_file(self.path(LOCK_FILE))).get("run")
        except (FileNotFoundError, ValueError):
            held = None
        if held not in (None, self.run_id) and self._locked:
            raise DestinationError(f"DEST {self.url!r} was taken over by another run")
        self._locked = True
        lock = {"run": self.run_id, "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}
        self.put(LOCK_FILE, json.dumps(lock).encode())

    def release_lock(self) -> None:
        """Remove this run's lock (left alone if another run has taken it over)."""
        try:
            if json.loads(self.fs.cat_file(self.path(LOCK_FILE))).get("run") == self.run_id:
                self.fs.rm_file(self.path(LOCK_FILE))
        except (FileNotFoundError, ValueError):
            pass

    # ---- worker side -------------------------------------------------------------------------------
    def encode(self, image: np.ndarray, original: bytes | None = None) -> Any:
        """What this form keeps of one resized image (raising here fails only that image). ``original``
        is the source file when the image is exactly that file's pixels. Arrays keep the array."""
        return image

    def write(self, chunk: Chunk) -> None:
        """Write one chunk, then its done marker (last, so a readable marker always means complete data)."""
        self._write(chunk)
        self.put(posixpath.join(MARKER_DIR, f"{chunk.index:07d}.parquet"), _parquet_bytes(chunk.rows))

    # ---- per form ----------------------------------------------------------------------------------
    def _check_items(self, items: pd.DataFrame) -> None:
        """Refuse inputs this form cannot hold apart, before DEST is touched (arrays hold anything)."""

    def _create(self, items: pd.DataFrame) -> None:
        """Get the output ready for the listed ``items`` (idempotent: a resumed run calls it again); by
        default nothing, as folders appear with their files."""

    @abc.abstractmethod
    def _write(self, chunk: Chunk) -> None:
        """Write the data of one chunk (idempotent: writing it twice gives the same bytes)."""

    def _finalize(self, manifest: pd.DataFrame) -> None:
        """Write what this form keeps beside the manifest, once every chunk is written."""


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    diffs = []
    for key in sorted(set(old.get("config", {})) | set(new.get("config", {}))):
        a, b = old.get("config", {}).get(key), new.get("config", {}).get(key)
        if a != b:
            diffs.append(f"{key}: {a!r} there, {b!r} now")
    if old.get("inputs") != new.get("inputs"):
        diffs.append(f"inputs: {old.get('n')} listed there, {new.get('n')} now, not the same files")
    return "; ".join(diffs) or "a different imgtools version"
