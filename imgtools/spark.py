"""Images as Spark's image data source gives them: ``read_images(source)`` -> a Dask DataFrame with Spark's
image schema (``origin``, ``height``, ``width``, ``nChannels``, ``mode``, ``data``), every file listed as Spark
lists it, undecodable ones as invalid rows; ``to_array`` / ``from_array`` convert a row exactly."""

from __future__ import annotations

import fnmatch
import posixpath
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from .config import Channels, DecodeLimits
from .errors import ConfigError

__all__ = ["read_images", "to_array", "from_array", "IMAGE_SCHEMA", "OCV_TYPES"]


#: Spark's image schema columns, in order.
IMAGE_SCHEMA = ["origin", "height", "width", "nChannels", "mode", "data"]
#: OpenCV type codes by channel count, as Spark's image data source writes them.
OCV_TYPES = {1: 0, 3: 16, 4: 24}


def to_array(row: Any) -> np.ndarray:
    """The (height, width, nChannels) uint8 array of a Spark-style image row (channel order as stored).

    Examples
    --------
    >>> to_array(from_array(np.arange(12, dtype=np.uint8).reshape(2, 2, 3))).shape
    (2, 2, 3)
    """
    if row["nChannels"] < 1:
        raise ValueError(f"row of {row['origin']!r} holds no image (it could not be decoded)")
    return np.frombuffer(row["data"], np.uint8).reshape(row["height"], row["width"], row["nChannels"]).copy()


def from_array(arr: np.ndarray, origin: str = "") -> dict[str, Any]:
    """A Spark-style image row from an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 array, bytes as given.

    Examples
    --------
    >>> from_array(np.zeros((2, 3), np.uint8))["mode"]
    0
    """
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in OCV_TYPES:
        raise ValueError(f"array of {arr.dtype} {arr.shape} is not uint8 with 1, 3 or 4 channels")
    h, w, c = arr.shape
    return {"origin": origin, "height": h, "width": w, "nChannels": c, "mode": OCV_TYPES[c],
            "data": np.ascontiguousarray(arr).tobytes()}


def _partition_columns(relpath: str) -> dict[str, str]:
    """``key=value`` folder names (a key that is a schema column is left out)."""
    pairs = (part.split("=", 1) for part in relpath.split("/")[:-1] if "=" in part)
    return {k: v for k, v in pairs if k not in IMAGE_SCHEMA}


def _image_rows(items: pd.DataFrame, limits: DecodeLimits, channel_order: str, drop_invalid: bool,
                keys: list[str], storage_options: dict[str, Any] | None, native: bool = True) -> pd.DataFrame:
    from .decode import decode, decode_native
    from .errors import DecodeError
    from .sources import read_bytes

    rows = []
    got = read_bytes(list(items["origin"]), storage_options)  # a session of its own: nothing stays open
    for origin, relpath, raw in zip(items["origin"], items["relpath"], got):
        try:
            if isinstance(raw, BaseException):
                raise DecodeError(str(raw))
            arr = decode_native(raw, limits) if native else decode(raw, limits).pixels
        except DecodeError:
            if drop_invalid:
                continue
            row = {"origin": origin, "height": -1, "width": -1, "nChannels": -1, "mode": -1, "data": b""}
        else:
            if channel_order == "BGR" and arr.shape[2] >= 3:
                arr = arr[:, :, [2, 1, 0, 3][: arr.shape[2]]]
            row = from_array(arr, origin)
        row.update({k: _partition_columns(relpath).get(k) for k in keys})
        rows.append(row)
    return _image_frame(rows, keys)


def _image_frame(rows: list[dict[str, Any]], keys: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=IMAGE_SCHEMA + keys)
    for col in ("height", "width", "nChannels", "mode"):
        frame[col] = frame[col].astype("int32")
    frame["origin"] = frame["origin"].astype("string")
    frame["data"] = frame["data"].astype(pd.ArrowDtype(pa.binary()))  # bytes, never taken for text
    for k in keys:
        frame[k] = frame[k].astype("string")
    return frame


def read_images(source: str, recursive: bool = True, drop_invalid: bool = True, sample_ratio: float = 1.0,
                seed: int = 0, npartitions: int | None = None, channel_order: str = "RGB",
                storage_options: dict[str, Any] | None = None, path_glob_filter: str | None = None,
                channels: int | None = None):
    """Images as a Dask DataFrame with Spark's image schema: ``origin``, ``height``, ``width``,
    ``nChannels`` (1, 3 or 4: as decoded, or every image brought to ``channels`` as presize brings it,
    transparency composited over white for 1 and 3), ``mode`` (OpenCV type: 0, 16, 24; -1 when invalid), ``data``
    (row-major bytes; ``channel_order="BGR"`` gives Spark's own BGR(A) order byte for byte), plus one text
    column per ``key=value`` folder name. As Spark's image source, every file is listed (hidden ones
    aside), image or not: undecodable files are dropped, or with ``drop_invalid=False`` kept as rows of -1
    and empty data; ``path_glob_filter`` (Spark's ``pathGlobFilter``, e.g. ``"*.png"``) keeps only the files
    whose name matches. Images are upright (EXIF orientation applied).

    Examples
    --------
    >>> df = imgtools.read_images("photos/", channel_order="BGR")     # doctest: +SKIP
    >>> to_array(df.head(1).iloc[0]).shape                              # doctest: +SKIP
    (375, 500, 3)
    """
    import dask
    import dask.dataframe as dd

    from .config import LabelSource
    from .sources import list_source

    if channel_order not in ("RGB", "BGR"):
        raise ConfigError(f"channel_order {channel_order!r} is not RGB or BGR")
    if not 0.0 < sample_ratio <= 1.0:
        raise ConfigError(f"sample_ratio {sample_ratio!r} must be in (0, 1]")
    limits = DecodeLimits() if channels is None else DecodeLimits(channels=Channels.parse(channels))
    items = list_source(source, LabelSource.NONE, storage_options, every_file=True).items
    if path_glob_filter is not None:
        items = items[[fnmatch.fnmatchcase(posixpath.basename(rel), path_glob_filter) for rel in items["relpath"]]]
    if not recursive:
        items = items[~items["relpath"].str.contains("/")]
    if sample_ratio < 1.0:
        items = items[np.random.default_rng(seed).random(len(items)) < sample_ratio]
    keys = sorted({k for rel in items["relpath"] for k in _partition_columns(rel)})
    n = max(1, min(len(items), npartitions or -(-len(items) // 256)))
    bounds = np.linspace(0, len(items), n + 1).astype(int)
    parts = [dask.delayed(_image_rows)(items.iloc[a:b], limits, channel_order, drop_invalid, keys, storage_options,
                                       channels is None)
             for a, b in zip(bounds[:-1], bounds[1:])]
    return dd.from_delayed(parts, meta=_image_frame([], keys), verify_meta=False)
