"""The layout interface: how one output form lays out its files in DEST, on any fsspec URL.

A sink is a layout that owns a :class:`~imgtools.sinks.ledger.RunLedger` (the job record, the run lock,
done markers, the manifest). It is made on the client, pickled to the workers, and used in three steps:
:meth:`Sink.prepare` (client: the ledger locks DEST and checks the job, the layout creates its empty output),
:meth:`Sink.write` (worker: one chunk of data, then its done marker, last) and :meth:`Sink.finalize`
(client: ``manifest.parquet``, one file or a folder of parts written by tasks the client maps, what the layout
derives from it, then the attributes that mark the output complete). :func:`~imgtools.sinks.detect` finds the
layout of a finished output from its attributes.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import posixpath
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from ..config import OutputFormat, PresizeConfig
from ..errors import UnsupportedError
from ..location import Location
from ..schema import ManifestTally, ok_mask
from .ledger import ATTRS_FILE, JOB_FILE, LOCK_FILE, LOCK_TTL, MANIFEST, MARKER_DIR, RunLedger
from .manifest import ManifestRows

if TYPE_CHECKING:
    from ..folders import Mapper

__all__ = ["Chunk", "Sink", "write_files", "JOB_FILE", "MARKER_DIR", "LOCK_FILE", "MANIFEST", "ATTRS_FILE", "LOCK_TTL"]


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
        return ok_mask(self.rows)

    @property
    def labels(self) -> np.ndarray:
        return self.rows["label_id"].to_numpy(np.int32)

    def stacked(self, key: str, height: int, width: int, masks: bool = False, channels: int = 3) -> np.ndarray:
        """The images (or masks) of one fixed size as an (n, H, W, channels) (or (n, H, W)) array, zeros
        where there is none."""
        shape = (len(self.rows), height, width) if masks else (len(self.rows), height, width, channels)
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


class Sink(abc.ABC):
    """Base of every output form (a layout), owning the run ledger of its DEST."""

    format: ClassVar[OutputFormat]
    #: True when output rows are positions (arrays): the job then includes the exact input list, and a
    #: marker is trusted by chunk number. False for mirrored files: markers are trusted by ``relpath``,
    #: so adding images to SOURCE and re-running only does the new ones (the presized-file cache).
    positional: ClassVar[bool] = True
    #: True when :meth:`_finalize` writes every row's ``ok`` and ``labels`` at the end (npy): the manifest's
    #: tally then keeps them (5 bytes a row on the client); other forms write them with their chunks, or not.
    needs_rows: ClassVar[bool] = False
    #: Rows below this one hold data an earlier run wrote (the base of an append, see :mod:`imgtools.append`):
    #: writing a chunk leaves their data as it is (an append rewrites the base's last, partial chunk).
    kept: int = 0

    def __init__(self, dest: str | Location, config: PresizeConfig, storage_options: dict[str, Any] | None = None):
        self.location = dest if isinstance(dest, Location) else Location.resolve(str(dest), storage_options)
        self.url = self.location.url
        self.config = config
        self.storage_options = self.location.storage_options
        self.fs = self.location.fs
        self.root = self.location.root
        self.ledger = RunLedger(self.location, self.positional)

    def path(self, *parts: str) -> str:
        return self.location.path(*parts)

    def put(self, relpath: str, data: bytes) -> None:
        self.ledger.put(relpath, data)

    def put_all(self, files: dict[str, bytes]) -> None:
        """Write many files (bytes by relative path) in one call (see :func:`write_files`)."""
        write_files(self.fs, {self.path(relpath): data for relpath, data in files.items()})

    def put_whole(self, relpath: str, data: bytes) -> None:
        """Replace a file so that a kill leaves the old file or the new one, never a part of it: on a local
        disk, a temporary ``<name>.<run>.partial`` beside it renamed over it; stores that replace an object
        whole (buckets) take it as it is."""
        with self.ledger.open_whole(relpath) as f:
            f.write(data)

    # ---- client side -------------------------------------------------------------------------------
    def prepare(self, n: int, job: dict[str, Any], overwrite: bool = False, keep: int | None = None) -> None:
        """Lock DEST for this run and get it ready for ``job`` (config and inputs) of ``n`` inputs (see
        :meth:`RunLedger.prepare`); :meth:`done_rows` / :meth:`done_chunks` then say what earlier runs of the
        same job finished. Check the inputs first (:meth:`check_items`) where this form may refuse them.
        ``keep``: an append keeping DEST's first ``keep`` rows (their data is then left alone: :attr:`kept`).

        Raises
        ------
        DestinationError
            Another run holds DEST, DEST holds another job, or DEST is a non-empty folder imgtools did
            not write (never deleted, even with ``overwrite``).
        """
        self.kept = keep or 0
        self.ledger.prepare(job, overwrite, lambda: self._create(n), keep=keep)

    def done_chunks(self, rows_of: Callable[[int], int]) -> set[int]:
        """The chunks an earlier run of this job finished, by number alone (chunk ``k`` has ``rows_of(k)``
        rows): their markers are read but not kept (a positional output's resume, any length)."""
        return self.ledger.complete_markers(rows_of)

    def check_items(self, items: pd.DataFrame) -> None:
        """Raise ConfigError when this form cannot hold the listed ``items``; touches nothing."""
        self._check_items(items)

    def finalize(self, rows: ManifestRows, attrs: dict[str, Any], mapper: Mapper | None = None) -> ManifestTally:
        """Write ``manifest.parquet`` from the run's ``rows`` (chunk by chunk: memory bounded whatever the
        length; a long run's as a folder of parts, written by tasks ``mapper`` maps, None: in this process,
        see :meth:`RunLedger.write_manifest`), what this form derives from it, then the attributes: the
        output is then complete. Returns the tally of the rows (ok and label of each, the failed ones)."""
        tally = self.ledger.write_manifest(rows, mapper, per_row=self.needs_rows)
        if self.needs_rows:
            self._finalize(tally.ok, tally.labels)
        else:
            self._finalize(None, None)
        self.write_attrs(attrs)
        return tally

    def take_lock(self) -> None:
        """The run lock's heartbeat (see :meth:`RunLedger.take_lock`)."""
        self.ledger.take_lock()

    def release_lock(self) -> None:
        self.ledger.release_lock()

    def done_rows(self) -> pd.DataFrame:
        return self.ledger.done_rows()

    def read_attrs(self) -> dict[str, Any] | None:
        """The attributes of a finished output (None when there are none)."""
        try:
            return json.loads(self.fs.cat_file(self.path(ATTRS_FILE)))
        except (FileNotFoundError, ValueError):
            return None

    def write_attrs(self, attrs: dict[str, Any]) -> None:
        """Record the attributes of the output (``imgtools.json``; zarr keeps them in the group)."""
        self.put(ATTRS_FILE, json.dumps(attrs, sort_keys=True, indent=1).encode())

    # ---- worker side -------------------------------------------------------------------------------
    def encode(self, image: np.ndarray, original: bytes | None = None) -> Any:
        """What this form keeps of one resized image (raising here fails only that image). ``original``
        is the source file when the image is exactly that file's pixels. Arrays keep the array."""
        return image

    def write(self, chunk: Chunk) -> None:
        """Write one chunk, then its done marker (last, so a readable marker always means complete data)."""
        self._write(chunk)
        self.ledger.mark_done(chunk.index, chunk.rows)

    # ---- arrays, a chunk at a time (derive) -----------------------------------------------------------
    def create_size(self, key: str, n: int, size, masks: bool = False) -> None:
        """Make room for a new size ``key`` of ``n`` images (or masks) in a finished output."""
        raise UnsupportedError(f"{self.config.format.value} outputs hold no arrays to add a size to")

    def read_part(self, key: str, index: int, masks: bool = False) -> np.ndarray:
        """Images (or masks) of chunk ``index`` of size ``key``."""
        raise UnsupportedError(f"{self.config.format.value} outputs hold no arrays")

    def write_part(self, key: str, index: int, arr: np.ndarray, masks: bool = False) -> None:
        """Write images (or masks) of chunk ``index`` of size ``key``."""
        raise UnsupportedError(f"{self.config.format.value} outputs hold no arrays")

    # ---- per form ----------------------------------------------------------------------------------
    def _check_items(self, items: pd.DataFrame) -> None:  # noqa: B027 - optional hook: forms that hold anything keep it
        """Refuse inputs this form cannot hold apart, before DEST is touched (arrays hold anything)."""

    def _create(self, n: int) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Get the output ready for ``n`` inputs (idempotent: a resumed run calls it again); by
        default nothing, as folders appear with their files."""

    @abc.abstractmethod
    def _write(self, chunk: Chunk) -> None:
        """Write the data of one chunk (idempotent: writing it twice gives the same bytes)."""

    def _finalize(self, ok: np.ndarray | None, labels: np.ndarray | None) -> None:  # noqa: B027 - optional hook
        """Write what this form keeps beside the manifest, once every chunk is written: ``ok`` and ``labels``
        of every row, in order, when :attr:`needs_rows` (None otherwise). A no-op by default."""
