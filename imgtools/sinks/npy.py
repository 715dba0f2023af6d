"""``.npy`` output: ``<size>/part-00000.npy`` (n, H, W, 3) uint8 per chunk, memory-mappable; ``ok.npy``,
``labels.npy`` and ``imgtools.json`` (the attributes) written last from the manifest; with masks,
``<size>/masks-part-00000.npy`` (n, H, W) uint8 beside each part."""

from __future__ import annotations

import io
import json
import posixpath
from typing import Any

import numpy as np
import pandas as pd

from ..config import OutputFormat
from .base import Chunk, Sink

__all__ = ["NpySink", "ATTRS_FILE"]

ATTRS_FILE = "imgtools.json"


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


class NpySink(Sink):
    """One ``.npy`` file per chunk and size: ``np.load(path, mmap_mode="r")`` reads it without copying."""

    format = OutputFormat.NPY

    def _create(self, items: pd.DataFrame) -> None:
        for key in self.config.size_keys:
            self.fs.makedirs(self.path(key), exist_ok=True)

    def _write(self, chunk: Chunk) -> None:
        for size, key in zip(self.config.sizes, self.config.size_keys):
            part = posixpath.join(key, f"part-{chunk.index:05d}.npy")
            self.put(part, npy_bytes(chunk.stacked(key, size.height, size.width)))
            if self.config.masks:
                masks = posixpath.join(key, f"masks-part-{chunk.index:05d}.npy")
                self.put(masks, npy_bytes(chunk.stacked(key, size.height, size.width, masks=True)))

    def _finalize(self, manifest: pd.DataFrame, attrs: dict[str, Any]) -> None:
        self.put("ok.npy", npy_bytes((manifest["status"] == "ok").to_numpy()))
        self.put("labels.npy", npy_bytes(manifest["label_id"].to_numpy(np.int32)))
        self.put(ATTRS_FILE, json.dumps(attrs, sort_keys=True, indent=1).encode())
