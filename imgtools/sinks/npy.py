"""``.npy`` output: ``<size>/part-00000.npy`` (n, H, W, C) uint8 per chunk (C: ``config.channels``),
memory-mappable; ``ok.npy``, ``labels.npy`` and ``imgtools.json`` (the attributes) written last from the
manifest; with masks, ``<size>/masks-part-00000.npy`` (n, H, W) uint8 beside each part."""

from __future__ import annotations

import io
import posixpath

import numpy as np

from ..config import OutputFormat
from .base import Chunk, Sink

__all__ = ["NpySink", "npy_bytes"]


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


class NpySink(Sink):
    """One ``.npy`` file per chunk and size: ``np.load(path, mmap_mode="r")`` reads it without copying."""

    format = OutputFormat.NPY
    needs_rows = True  # ok.npy and labels.npy are written at the end

    @staticmethod
    def part(key: str, index: int, masks: bool = False) -> str:
        """The relative path of chunk ``index`` of size ``key``."""
        return posixpath.join(key, f"{'masks-' if masks else ''}part-{index:05d}.npy")

    def create_size(self, key: str, n: int, size, masks: bool = False) -> None:
        """Nothing to make: parts appear as they are written."""

    def read_part(self, key: str, index: int, masks: bool = False) -> np.ndarray:
        with self.fs.open(self.path(self.part(key, index, masks)), "rb") as f:
            return np.load(f, allow_pickle=False)

    def write_part(self, key: str, index: int, arr: np.ndarray, masks: bool = False) -> None:
        self.put(self.part(key, index, masks), npy_bytes(arr))

    def _write(self, chunk: Chunk) -> None:
        keep = min(max(self.kept - chunk.start, 0), len(chunk.rows))  # rows of an append's base: kept as they are
        for size, key in zip(self.config.sizes, self.config.size_keys):
            self._write_part(key, chunk.index, chunk.stacked(key, size.height, size.width,
                                                             channels=self.config.channels), keep)
            if self.config.masks:
                self._write_part(key, chunk.index, chunk.stacked(key, size.height, size.width, masks=True), keep,
                                 masks=True)

    def _write_part(self, key: str, index: int, arr: np.ndarray, keep: int, masks: bool = False) -> None:
        """:meth:`write_part`, except that with ``keep`` the first ``keep`` rows are those of the part already
        there (an append's base, never decoded again) and the part is replaced whole, so that a kill
        leaves the old part or the new one (:meth:`Sink.put_whole`)."""
        if not keep:
            return self.write_part(key, index, arr, masks)
        arr[:keep] = self.read_part(key, index, masks)[:keep]
        self.put_whole(self.part(key, index, masks), npy_bytes(arr))

    def _finalize(self, ok: np.ndarray | None, labels: np.ndarray | None) -> None:
        assert ok is not None and labels is not None  # needs_rows
        for key in self.config.size_keys if self.kept else ():  # a replacement a kill cut short (put_whole)
            for leftover in self.fs.glob(self.path(key, "*.partial")):
                self.fs.rm_file(leftover)
        self.put("ok.npy", npy_bytes(ok))
        self.put("labels.npy", npy_bytes(labels.astype(np.int32)))
