"""The per-image and per-chunk work: bytes -> every size, and one chunk of inputs -> one chunk of output.

Pure functions over the stages (sources, decode, resize, sinks); nothing here knows of Dask. A failure
of one image is a manifest row with its reason, never an exception out of :func:`process_chunk`.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from .config import PresizeConfig
from .decode import decode
from .errors import DecodeError
from .resize import draft_request, resize_all
from .sinks import Chunk, Sink
from .sources import read_bytes

__all__ = ["ImageResult", "process_image", "process_chunk", "MANIFEST_COLUMNS"]

#: Manifest columns, in order.
MANIFEST_COLUMNS = ["index", "origin", "relpath", "label", "label_id", "status", "error", "height", "width", "mode"]


@dataclasses.dataclass(frozen=True)
class ImageResult:
    """What became of one image: ``arrays`` by size key when ok, else ``error``."""

    arrays: dict[str, np.ndarray] | None
    error: str | None
    height: int = -1
    width: int = -1
    mode: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def process_image(data: bytes | BaseException, config: PresizeConfig) -> ImageResult:
    """Decode once and resize to every size of ``config``; failures come back as ``error``.

    ``data`` may be the exception that reading the file raised; it becomes the reason.

    Examples
    --------
    >>> import io; from PIL import Image
    >>> buf = io.BytesIO(); Image.new("RGB", (90, 60)).save(buf, "JPEG")
    >>> r = process_image(buf.getvalue(), PresizeConfig.build(sizes=[32]))
    >>> r.ok, r.arrays["32x32"].shape, (r.width, r.height, r.mode)
    (True, (32, 32, 3), (90, 60, 'RGB'))
    >>> process_image(b"", PresizeConfig()).error
    'empty file (0 bytes)'
    """
    if isinstance(data, BaseException):
        return ImageResult(None, f"read failed: {type(data).__name__}: {data}")
    try:
        decoded = decode(data, config, partial(draft_request, config=config))
    except DecodeError as exc:
        return ImageResult(None, str(exc))
    meta: dict[str, Any] = {"height": decoded.height, "width": decoded.width, "mode": decoded.mode}
    try:
        arrays = resize_all(decoded.pixels, config, (decoded.width, decoded.height))
    except MemoryError:
        return ImageResult(None, "out of memory while resizing", **meta)
    except Exception as exc:  # a resize failure is this image's, never the run's
        return ImageResult(None, f"resize failed: {type(exc).__name__}: {exc}", **meta)
    return ImageResult(arrays, None, **meta)


def process_chunk(items: pd.DataFrame, chunk_index: int, config: PresizeConfig, fs: Any, sink: Sink) -> pd.DataFrame:
    """Read, decode, resize and write one chunk of inputs (listing rows); returns its manifest rows.

    The bytes of the whole chunk are fetched in one batched call, so remote sources are read
    concurrently. The sink writes the chunk and, last, its done marker.
    """
    n = len(items)
    start = int(items["index"].iloc[0])
    images = {s.key(config.mode): np.zeros((n, s.height, s.width, 3), np.uint8) for s in config.sizes}
    ok = np.zeros(n, bool)
    status, errors, heights, widths, modes = [], [], [], [], []
    for i, data in enumerate(read_bytes(fs, list(items["origin"]))):
        result = process_image(data, config)
        if result.ok:
            for key, arr in result.arrays.items():  # type: ignore[union-attr]
                images[key][i] = arr
            ok[i] = True
        status.append("ok" if result.ok else "failed")
        errors.append(result.error)
        heights.append(result.height)
        widths.append(result.width)
        modes.append(result.mode)
    rows = items.reset_index(drop=True).copy()
    rows["status"] = status
    rows["error"] = pd.array(errors, dtype="string")
    rows["height"] = np.asarray(heights, np.int32)
    rows["width"] = np.asarray(widths, np.int32)
    rows["mode"] = pd.array(modes, dtype="string")
    rows = manifest_frame(rows)
    labels = rows["label_id"].to_numpy(np.int32)
    sink.write(Chunk(index=chunk_index, start=start, images=images, ok=ok, labels=labels, rows=rows))
    return rows


def manifest_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """Manifest columns in their order and dtypes."""
    out = rows[MANIFEST_COLUMNS].copy()
    out["index"] = out["index"].astype("int64")
    for col in ("origin", "relpath", "label", "status", "error", "mode"):
        out[col] = out[col].astype("string")
    out["label_id"] = out["label_id"].astype("int32")
    out["height"] = out["height"].astype("int32")
    out["width"] = out["width"].astype("int32")
    return out
