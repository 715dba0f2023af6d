"""Sinks stage: where results go. One small class per output form behind one interface.

A sink is made on the client, pickled to the workers, and used in three steps:
:meth:`Sink.prepare` (client: check DEST, record the job, create empty arrays), :meth:`Sink.write`
(worker: one chunk of whole images, then its done marker, last) and :meth:`Sink.finalize` (client:
``manifest.parquet``, then the group attributes). A chunk is only done when its marker exists, so an
interrupted run redoes exactly the chunks whose output may be incomplete.
"""

from __future__ import annotations

import abc
import dataclasses
import io
import json
import posixpath
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import zarr
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from .config import OutputFormat, PresizeConfig
from .errors import ConfigError, DestinationError, UnsupportedError

__all__ = ["Chunk", "Sink", "ZarrSink", "SINKS", "make_sink", "JOB_FILE", "MARKER_DIR"]

JOB_FILE = ".imgtools/job.json"
MARKER_DIR = ".imgtools/chunks"
MANIFEST = "manifest.parquet"


@dataclasses.dataclass
class Chunk:
    """One chunk of results, rows ``start .. start + len(rows)`` of the output."""

    index: int
    start: int
    images: dict[str, np.ndarray]  # size key -> (n, H, W, 3) uint8, zeros where failed
    ok: np.ndarray  # (n,) bool
    labels: np.ndarray  # (n,) int32
    rows: pd.DataFrame  # the manifest rows of the chunk


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False, engine="pyarrow")
    return buf.getvalue()


class Sink(abc.ABC):
    """Base of every output form: DEST on any fsspec URL, the job record, markers and the manifest."""

    format: ClassVar[OutputFormat]

    def __init__(self, dest: str, config: PresizeConfig, storage_options: dict[str, Any] | None = None):
        self.url = str(dest)
        self.config = config
        self.storage_options = dict(storage_options or {})
        self.fs, root = url_to_fs(self.url, **self.storage_options)
        self.root = root.rstrip("/") or root

    def _path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    # ---- client side -------------------------------------------------------------------------------
    def prepare(self, n: int, job: dict[str, Any], overwrite: bool = False) -> dict[int, pd.DataFrame]:
        """Get DEST ready for ``job`` (its config and inputs) with ``n`` images.

        Returns the manifest rows of the chunks already done by an earlier run of the same job.

        Raises
        ------
        DestinationError
            DEST holds another job, or is a non-empty folder imgtools did not write.
        """
        previous = self._read_job()
        if previous is None and self._nonempty():
            raise DestinationError(f"DEST {self.url!r} is not empty and was not written by imgtools; choose another DEST")
        if previous is not None and overwrite:
            self.fs.rm(self.root, recursive=True)
            previous = None
        if previous is not None and previous != job:
            raise DestinationError(f"DEST {self.url!r} holds another job ({_differences(previous, job)}); "
                                   "use --overwrite to start again")
        if previous is None:
            self.fs.makedirs(self._path(MARKER_DIR), exist_ok=True)
            self._create(n)
            self.fs.pipe_file(self._path(JOB_FILE), json.dumps(job, sort_keys=True, indent=1).encode())
            return {}
        return self._done_chunks()

    def finalize(self, manifest: pd.DataFrame, attrs: dict[str, Any]) -> None:
        """Write ``manifest.parquet``, then the attributes that mark the output complete."""
        self.fs.pipe_file(self._path(MANIFEST), _parquet_bytes(manifest))
        self._finalize(attrs)

    def _nonempty(self) -> bool:
        return self.fs.isdir(self.root) and bool(self.fs.ls(self.root, detail=False))

    def _read_job(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.fs.cat_file(self._path(JOB_FILE)))
        except FileNotFoundError:
            return None

    def _done_chunks(self) -> dict[int, pd.DataFrame]:
        paths = [p for p in self.fs.ls(self._path(MARKER_DIR), detail=False) if p.endswith(".parquet")]
        blobs = self.fs.cat_ranges(paths, [None] * len(paths), [None] * len(paths))
        return {int(posixpath.basename(p).split(".")[0]): pd.read_parquet(io.BytesIO(b)) for p, b in zip(paths, blobs)}

    # ---- worker side -------------------------------------------------------------------------------
    def write(self, chunk: Chunk) -> None:
        """Write one chunk, then its done marker (last, so a marker always means complete data)."""
        self._write(chunk)
        self.fs.pipe_file(self._path(MARKER_DIR, f"{chunk.index:07d}.parquet"), _parquet_bytes(chunk.rows))

    # ---- per form ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def _create(self, n: int) -> None:
        """Create the empty output for ``n`` images."""

    @abc.abstractmethod
    def _write(self, chunk: Chunk) -> None:
        """Write the data of one chunk (idempotent: writing it twice gives the same bytes)."""

    @abc.abstractmethod
    def _finalize(self, attrs: dict[str, Any]) -> None:
        """Record the run's attributes once every chunk is written."""


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    diffs = []
    for key in sorted(set(old.get("config", {})) | set(new.get("config", {}))):
        a, b = old.get("config", {}).get(key), new.get("config", {}).get(key)
        if a != b:
            diffs.append(f"{key}: {a!r} there, {b!r} now")
    if old.get("inputs") != new.get("inputs"):
        diffs.append(f"inputs: {old.get('n')} listed there, {new.get('n')} now, not the same files")
    return "; ".join(diffs) or "a different imgtools version"


class ZarrSink(Sink):
    """A zarr v3 group: ``<size>/images`` (N, H, W, 3) uint8, ``ok`` (N,) bool, ``labels`` (N,) int32."""

    format = OutputFormat.ZARR

    def __init__(self, dest: str, config: PresizeConfig, storage_options: dict[str, Any] | None = None):
        super().__init__(dest, config, storage_options)
        if config.mode.variable:
            raise UnsupportedError(f"zarr cannot hold the variable sizes of mode {config.mode.value!r}")

    def _store(self):
        if isinstance(self.fs, LocalFileSystem):
            return zarr.storage.LocalStore(self.root)
        return zarr.storage.FsspecStore.from_url(self.fs.unstrip_protocol(self.root),
                                                 storage_options=self.storage_options or None)

    def _create(self, n: int) -> None:
        group = zarr.open_group(self._store(), mode="a", zarr_format=3)
        c = self.config.chunk
        for size, key in zip(self.config.sizes, self.config.size_keys):
            group.create_array(f"{key}/images", shape=(n, size.height, size.width, 3), dtype="uint8",
                               chunks=(c, size.height, size.width, 3), fill_value=0, overwrite=True,
                               dimension_names=("image", "y", "x", "channel"))
        group.create_array("ok", shape=(n,), dtype="bool", chunks=(c,), fill_value=False, overwrite=True)
        group.create_array("labels", shape=(n,), dtype="int32", chunks=(c,), fill_value=-1, overwrite=True)

    def _write(self, chunk: Chunk) -> None:
        group = zarr.open_group(self._store(), mode="r+")
        stop = chunk.start + len(chunk.ok)
        for key, pixels in chunk.images.items():
            group[f"{key}/images"][chunk.start : stop] = pixels
        group["ok"][chunk.start : stop] = chunk.ok
        group["labels"][chunk.start : stop] = chunk.labels

    def _finalize(self, attrs: dict[str, Any]) -> None:
        zarr.open_group(self._store(), mode="r+").attrs.update(attrs)


#: Output forms by name; each later form (npy, image files) registers its class here.
SINKS: dict[OutputFormat, type[Sink]] = {OutputFormat.ZARR: ZarrSink}


def make_sink(dest: str, config: PresizeConfig, storage_options: dict[str, Any] | None = None) -> Sink:
    """The sink for ``config.format`` writing to ``dest``.

    Examples
    --------
    >>> make_sink("memory://out.zarr", PresizeConfig()).url
    'memory://out.zarr'
    """
    try:
        cls = SINKS[config.format]
    except KeyError:
        raise ConfigError(f"format {config.format.value!r} has no writer yet (available: "
                          f"{', '.join(f.value for f in SINKS)})") from None
    return cls(dest, config, storage_options)
