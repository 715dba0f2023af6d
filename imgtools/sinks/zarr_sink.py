"""zarr v3 output: ``<size>/images`` (N, H, W, C) uint8 (C: ``config.channels``, 1, 3 or 4), ``ok`` (N,)
bool, ``labels`` (N,) int32, and with masks ``<size>/masks`` (N, H, W) uint8."""

from __future__ import annotations

import threading
import warnings
from typing import Any

import numpy as np
import zarr
from fsspec.implementations.local import LocalFileSystem

from ..config import Compression, OutputFormat
from ..location import Location
from .base import Chunk, Sink

__all__ = ["ZarrSink"]


_CODECS = {
    Compression.LZ4: lambda: [zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle")],
    Compression.ZSTD: lambda: [zarr.codecs.ZstdCodec(level=3)],
    Compression.NONE: lambda: None,
}


#: Every chunk is written, even one that is all fill value: zarr's check for that scans the whole chunk
#: and doubled the time of a chunk write; each chunk object is then written exactly once per run. It is a
#: runtime setting, not kept in the array's metadata: an array opened again must be given it again.
_WRITE_ALL = {"write_empty_chunks": True}


def _writable(group, name: str):
    """Array ``name`` of ``group``, opened to write every chunk (see ``_WRITE_ALL``)."""
    return group[name].with_config(_WRITE_ALL)


#: The arrays a run writes, opened once in each process that writes its chunks, by (DEST, run id): opening
#: the group and its arrays again for every chunk read their metadata each time (~3 ms a chunk). A run's
#: arrays keep their shape and codecs while its chunks are written (an append grows them before, in
#: ``prepare``); a new run has a new id. The last few runs of a long-lived worker are kept.
_OPENED: dict[tuple[str, str], dict[str, Any]] = {}
_OPENED_RUNS = 4
_OPENING = threading.Lock()


def _zarr_store(fs, root: str, storage_options: dict[str, Any]):
    if isinstance(fs, LocalFileSystem):  # zarr's own local store makes folders as it writes
        return zarr.storage.LocalStore(root)
    store = zarr.storage.FsspecStore.from_url(fs.unstrip_protocol(root), storage_options=storage_options or None)
    # zarr's store has an async filesystem of its own, whose listings fsspec caches: a DEST removed and written
    # again (--overwrite) must not look as it did (zarr 3.4 then skips the parent groups' metadata)
    store.fs.invalidate_cache()
    return store


class ZarrSink(Sink):
    """A zarr v3 group, one chunk of ``config.chunk`` images per task; the group attributes come last."""

    format = OutputFormat.ZARR

    def group(self, mode: str = "r"):
        """The zarr group of this output (to write: from its nodes' own metadata, never the consolidated copy,
        which is only made anew when a run or a derive ends)."""
        return zarr.open_group(self._store(), mode=mode, use_consolidated=None if mode == "r" else False)

    @staticmethod
    def open_group(location: Location, mode: str = "r"):
        """The zarr group at ``location``."""
        return zarr.open_group(_zarr_store(location.fs, location.root, location.storage_options), mode=mode)

    def _store(self):
        return _zarr_store(self.fs, self.root, self.storage_options)

    def _create(self, n: int) -> None:
        group = zarr.open_group(self._store(), mode="a", zarr_format=3, use_consolidated=False)
        if "labels" in group:  # made by the earlier run of this job (labels come last)
            if group["labels"].shape[0] < n:  # an append: every array grows, chunks stay as they are
                self._grow(group, n)
            return
        c = self.config.chunk
        for size, key in zip(self.config.sizes, self.config.size_keys):
            self.create_images(group, key, n, size)
            if self.config.masks:
                self.create_images(group, key, n, size, masks=True)
        group.create_array("ok", shape=(n,), dtype="bool", chunks=(c,), fill_value=False, overwrite=True,
                           dimension_names=("image",), config=_WRITE_ALL)
        group.create_array("labels", shape=(n,), dtype="int32", chunks=(c,), fill_value=-1, overwrite=True,
                           dimension_names=("image",), config=_WRITE_ALL)

    def _grow(self, group, n: int) -> None:
        """Every array of the group to ``n`` rows (metadata only: no chunk is touched), ``labels`` last."""
        for name in self._names():
            array = group[name]
            array.resize((n, *array.shape[1:]))

    def create_images(self, group, key: str, n: int, size, masks: bool = False):
        """The empty ``<key>/images`` (n, H, W, C) or ``<key>/masks`` (n, H, W) array, chunked by images."""
        shape = (n, size.height, size.width) + (() if masks else (int(self.config.channels),))
        return group.create_array(f"{key}/{'masks' if masks else 'images'}", shape=shape, dtype="uint8",
                                  chunks=(self.config.chunk,) + shape[1:], fill_value=0, overwrite=True,
                                  compressors=_CODECS[self.config.compression](),
                                  dimension_names=("image", "y", "x") + (() if masks else ("channel",)),
                                  config=_WRITE_ALL)

    def create_size(self, key: str, n: int, size, masks: bool = False) -> None:
        self.create_images(self.group("r+"), key, n, size, masks=masks)

    def read_part(self, key: str, index: int, masks: bool = False) -> np.ndarray:
        start = index * self.config.chunk
        return self.group("r")[f"{key}/{'masks' if masks else 'images'}"][start : start + self.config.chunk]

    def write_part(self, key: str, index: int, arr: np.ndarray, masks: bool = False) -> None:
        start = index * self.config.chunk
        _writable(self.group("r+"), f"{key}/{'masks' if masks else 'images'}")[start : start + len(arr)] = arr

    def _names(self) -> list[str]:
        """The arrays of this output, ``labels`` last."""
        return [*(f"{key}/{kind}" for key in self.config.size_keys
                  for kind in ("images", "masks") if kind == "images" or self.config.masks), "ok", "labels"]

    def _arrays(self) -> dict[str, Any]:
        """This run's arrays, by name, opened to write (once per process: see ``_OPENED``)."""
        run = (self.url, self.ledger.run_id)
        with _OPENING:  # threaded workers write chunks of one run side by side
            arrays = _OPENED.get(run)
            if arrays is None:
                group = self.group("r+")
                arrays = {name: _writable(group, name) for name in self._names()}
                while len(_OPENED) >= _OPENED_RUNS:
                    _OPENED.pop(next(iter(_OPENED)))
                _OPENED[run] = arrays
        return arrays

    def _write(self, chunk: Chunk) -> None:
        arrays = self._arrays()
        stop = chunk.start + len(chunk.rows)
        # rows an earlier run wrote (an append's base) are left out: zarr merges the rest into the chunk object
        start = min(max(chunk.start, self.kept), stop)
        skip = start - chunk.start
        for size, key in zip(self.config.sizes, self.config.size_keys):
            arrays[f"{key}/images"][start : stop] = chunk.stacked(key, size.height, size.width,
                                                                  channels=self.config.channels)[skip:]
            if self.config.masks:
                arrays[f"{key}/masks"][start : stop] = chunk.stacked(key, size.height, size.width, masks=True)[skip:]
        arrays["ok"][start : stop] = chunk.ok[skip:]
        arrays["labels"][start : stop] = chunk.labels[skip:]

    def _finalize(self, ok: np.ndarray | None, labels: np.ndarray | None) -> None:  # ok, labels went with the chunks
        # zarr's local store writes a chunk to ``<key>.<uuid>.partial`` and renames it; a run killed in
        # between leaves that temporary file, which the chunk's redo does not reuse
        for leftover, info in self.fs.glob(self.path("**", "*.partial"), detail=True).items():
            if info.get("type") == "file":
                self.fs.rm_file(leftover)

    def read_attrs(self) -> dict[str, Any] | None:
        try:
            return dict(self.group("r").attrs)
        except Exception:  # not a zarr group (yet)
            return None

    def write_attrs(self, attrs: dict[str, Any]) -> None:
        """The attributes, then the group's consolidated metadata (what xarray and zarr read in one request
        instead of listing DEST, where the manifest and the run record are not zarr nodes)."""
        self.group("r+").attrs.update(attrs)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Object at .* is not recognized", zarr.errors.ZarrUserWarning)
            warnings.filterwarnings("ignore", "Consolidated metadata is currently not part",
                                    zarr.errors.ZarrUserWarning)
            zarr.consolidate_metadata(self._store())
