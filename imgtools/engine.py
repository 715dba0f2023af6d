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
from .resize import draft_request, is_identity, resize_all
from .sinks.base import Chunk, Sink
from .sources import read_bytes

__all__ = ["ImageResult", "process_image", "process_chunk", "MANIFEST_COLUMNS"]

#: Manifest columns, in order.
MANIFEST_COLUMNS = ["index", "origin", "relpath", "label", "label_id", "status", "error", "height", "width", "mode"]


@dataclasses.dataclass(frozen=True)
class ImageResult:
    """What became of one image: ``arrays`` by size key when ok, else ``error``. ``unchanged`` names the
    sizes whose output is exactly the source file (same pixels, same format): those are copied."""

    arrays: dict[str, np.ndarray] | None
    error: str | None
    height: int = -1
    width: int = -1
    mode: str | None = None
    unchanged: frozenset[str] = frozenset()

    @property
    def ok(self) -> bool:
        return self.error is None


def _unchanged(decoded, config: PresizeConfig) -> frozenset[str]:
    if (decoded.format != config.format.pillow_format or decoded.orientation != 1 or decoded.mode != "RGB"
            or decoded.pixels.shape[:2] != (decoded.height, decoded.width)):
        return frozenset()
    return frozenset(s.key(config.mode) for s in config.sizes
                     if is_identity(decoded.width, decoded.height, s, config))


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
    return ImageResult(arrays, None, unchanged=_unchanged(decoded, config), **meta)


def process_chunk(items: pd.DataFrame, chunk_index: int, config: PresizeConfig, fs: Any, sink: Sink,
                  reuse: pd.DataFrame | None = None) -> pd.DataFrame:
    """Read, decode, resize and write one chunk of inputs (listing rows); returns its manifest rows.

    The bytes of the whole chunk are fetched in one batched call, so remote sources are read
    concurrently. Rows of ``reuse`` (earlier manifest rows, by ``relpath``) are taken as they are and
    their images are neither read nor written again. The sink writes the chunk and, last, its marker.
    """
    items = items.reset_index(drop=True)
    n = len(items)
    keys = config.size_keys
    known = {} if reuse is None or reuse.empty else dict(zip(reuse["relpath"], range(len(reuse))))
    todo = [i for i, rel in enumerate(items["relpath"]) if rel not in known]
    fetched = dict(zip(todo, read_bytes(fs, list(items["origin"].iloc[todo])))) if todo else {}
    images: dict[str, list[np.ndarray | None]] = {k: [None] * n for k in keys}
    unchanged = {k: [False] * n for k in keys}
    data: list[bytes | None] = [None] * n
    columns: dict[str, list[Any]] = {c: [None] * n for c in ("status", "error", "height", "width", "mode")}
    for i in range(n):
        if i not in fetched:
            old = reuse.iloc[known[items["relpath"].iloc[i]]]
            for c in columns:
                columns[c][i] = None if pd.isna(old[c]) else old[c]
            continue
        raw = fetched.pop(i)
        result = process_image(raw, config)
        if result.ok:
            for key, arr in result.arrays.items():  # type: ignore[union-attr]
                images[key][i] = arr
                unchanged[key][i] = key in result.unchanged
        if result.unchanged:
            data[i] = raw  # type: ignore[assignment]  # copied, not re-encoded
        columns["status"][i] = "ok" if result.ok else "failed"
        columns["error"][i] = result.error
        columns["height"][i], columns["width"][i], columns["mode"][i] = result.height, result.width, result.mode
    rows = manifest_frame(items.assign(**columns))
    sink.write(Chunk(index=chunk_index, start=int(items["index"].iloc[0]), rows=rows, images=images,
                     unchanged=unchanged, data=data))
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
