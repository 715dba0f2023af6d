"""Numba pixel kernels, each with a plain NumPy reference (``*_ref``) that the tests hold it to.

Layouts are channel-last (``HWC``) unless a name says otherwise. Importing this module imports no Numba:
each kernel is made a Numba function on its first call (:func:`imgtools.jit.jit`).
"""

from __future__ import annotations

import enum

import numpy as np

from .jit import jit

__all__ = [
    "ChannelLayout",
    "to_rgb",
    "to_rgb_ref",
    "u16_to_u8",
    "u16_to_u8_ref",
    "float_to_u8",
    "float_to_u8_ref",
    "normalize",
    "normalize_ref",
    "NORMALIZE_DEFAULTS",
    "hwc_to_chw",
    "chw_to_hwc",
]


_jit = jit


class ChannelLayout(enum.Enum):
    """The channel order of an 8-bit array handed to :func:`to_rgb` (with its channel count)."""

    GRAY = ("gray", 1)
    GRAY_ALPHA = ("gray_alpha", 2)
    RGB = ("rgb", 3)
    BGR = ("bgr", 3)
    RGBA = ("rgba", 4)
    BGRA = ("bgra", 4)

    @property
    def channels(self) -> int:
        return self.value[1]


@_jit
def _gray_to_rgb(src, out):  # pragma: no cover - compiled
    h, w = src.shape[0], src.shape[1]
    for y in range(h):
        for x in range(w):
            v = src[y, x]
            out[y, x, 0] = v
            out[y, x, 1] = v
            out[y, x, 2] = v


@_jit
def _swap_rb(src, out):  # pragma: no cover - compiled
    h, w = src.shape[0], src.shape[1]
    for y in range(h):
        for x in range(w):
            out[y, x, 0] = src[y, x, 2]
            out[y, x, 1] = src[y, x, 1]
            out[y, x, 2] = src[y, x, 0]


@_jit
def _composite(src, bg, swap, out):  # pragma: no cover - compiled
    # src: H x W x C with alpha last; C == 2 (gray + alpha) or 4 (RGBA / BGRA when swap).
    h, w, c = src.shape[0], src.shape[1], src.shape[2]
    alpha_ch = c - 1
    for y in range(h):
        for x in range(w):
            a = np.uint32(src[y, x, alpha_ch])
            na = np.uint32(255) - a
            for k in range(3):
                if c == 2:
                    v = np.uint32(src[y, x, 0])
                elif swap:
                    v = np.uint32(src[y, x, 2 - k])
                else:
                    v = np.uint32(src[y, x, k])
                out[y, x, k] = (v * a + np.uint32(bg[k]) * na + np.uint32(127)) // np.uint32(255)


def _as_hwc(arr: np.ndarray, layout: ChannelLayout) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise TypeError(f"to_rgb takes uint8 pixels, not {arr.dtype}")
    if layout is ChannelLayout.GRAY and arr.ndim == 2:
        return arr
    if arr.ndim != 3 or arr.shape[2] != layout.channels:
        raise ValueError(f"array of shape {arr.shape} is not {layout.value[0]} ({layout.channels} channels)")
    return arr


def to_rgb(arr: np.ndarray, layout: ChannelLayout, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Convert an 8-bit image in ``layout`` to a new ``H x W x 3`` RGB array.

    Alpha is composited over ``background``: ``(c * a + bg * (255 - a) + 127) // 255``.

    Examples
    --------
    >>> to_rgb(np.array([[7]], np.uint8), ChannelLayout.GRAY).tolist()
    [[[7, 7, 7]]]
    """
    src = _as_hwc(arr, layout)
    if layout is ChannelLayout.RGB:
        return np.array(src, copy=True, order="C")
    src = np.ascontiguousarray(src)
    out = np.empty(src.shape[:2] + (3,), np.uint8)
    if layout is ChannelLayout.GRAY:
        _gray_to_rgb(src if src.ndim == 2 else src[:, :, 0], out)
    elif layout is ChannelLayout.BGR:
        _swap_rb(src, out)
    else:
        _composite(src, np.asarray(background, np.uint8), layout is ChannelLayout.BGRA, out)
    return out


def to_rgb_ref(arr: np.ndarray, layout: ChannelLayout,
               background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """NumPy reference of :func:`to_rgb`."""
    src = _as_hwc(arr, layout)
    if src.ndim == 2:
        src = src[:, :, None]
    if layout in (ChannelLayout.GRAY, ChannelLayout.RGB):
        return np.repeat(src, 3 // src.shape[2], axis=2).copy()
    if layout is ChannelLayout.BGR:
        return src[:, :, ::-1].copy()
    color = src[:, :, :-1].astype(np.uint32)
    if layout is ChannelLayout.BGRA:
        color = color[:, :, ::-1]
    color = np.broadcast_to(color, src.shape[:2] + (3,))
    a = src[:, :, -1:].astype(np.uint32)
    bg = np.asarray(background, np.uint32)
    return ((color * a + bg * (255 - a) + 127) // 255).astype(np.uint8)


@_jit
def _u16_to_u8(src, out):  # pragma: no cover - compiled
    for i in range(src.size):
        out[i] = (np.uint32(src[i]) * np.uint32(2) + np.uint32(257)) // np.uint32(514)


def u16_to_u8(arr: np.ndarray) -> np.ndarray:
    """Scale 16-bit values over the full range to 8 bits: ``round(x / 257)`` (65535 -> 255, never clipped).

    Examples
    --------
    >>> u16_to_u8(np.array([0, 257, 65535], np.uint16)).tolist()
    [0, 1, 255]
    """
    src = np.ascontiguousarray(arr, dtype=np.uint16)
    out = np.empty(src.shape, np.uint8)
    _u16_to_u8(src.reshape(-1), out.reshape(-1))
    return out


def u16_to_u8_ref(arr: np.ndarray) -> np.ndarray:
    """NumPy reference of :func:`u16_to_u8`."""
    return np.round(arr.astype(np.float64) / 257.0).astype(np.uint8)


@_jit
def _float_to_u8(src, out):  # pragma: no cover - compiled
    for i in range(src.size):
        v = src[i]
        if not v > 0.0:  # also NaN
            out[i] = 0
        elif v >= 1.0:
            out[i] = 255
        else:
            out[i] = np.uint8(np.floor(v * 255.0 + 0.5))


def float_to_u8(arr: np.ndarray) -> np.ndarray:
    """Map floats in [0, 1] to 8 bits, ``floor(x * 255 + 0.5)``; values outside clip, NaN gives 0.

    Examples
    --------
    >>> float_to_u8(np.array([0.0, 0.5, 1.0, 2.0], np.float32)).tolist()
    [0, 128, 255, 255]
    """
    src = np.ascontiguousarray(arr)
    if src.dtype not in (np.float32, np.float64):
        src = src.astype(np.float64)
    out = np.empty(src.shape, np.uint8)
    _float_to_u8(src.reshape(-1), out.reshape(-1))
    return out


def float_to_u8_ref(arr: np.ndarray) -> np.ndarray:
    """NumPy reference of :func:`float_to_u8`."""
    x = np.nan_to_num(np.asarray(arr, np.float64), nan=0.0)
    return np.floor(np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


@_jit
def _normalize(src, scale, offset, out):  # pragma: no cover - compiled
    n, c = src.shape[0], src.shape[1]
    for i in range(n):
        for k in range(c):
            out[i, k] = np.float32(src[i, k]) * scale[k] + offset[k]


_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

#: ``(mean, std)`` that :func:`normalize` uses by channel count: ImageNet's for RGB; for luminance the mean
#: of ImageNet's three (0.449, 0.226, as timm adapts RGB weights to one channel); for RGBA ImageNet's, with
#: alpha left as ``a / 255`` (mean 0, std 1).
NORMALIZE_DEFAULTS: dict[int, tuple[tuple[float, ...], tuple[float, ...]]] = {
    1: ((0.449,), (0.226,)),
    3: _IMAGENET,
    4: (_IMAGENET[0] + (0.0,), _IMAGENET[1] + (1.0,)),
}


def _norm_coefficients(mean, std, c: int) -> tuple[np.ndarray, np.ndarray]:
    if mean is None or std is None:
        if c not in NORMALIZE_DEFAULTS:
            raise ValueError(f"no default mean and std for {c} channels: give them")
        mean = NORMALIZE_DEFAULTS[c][0] if mean is None else mean
        std = NORMALIZE_DEFAULTS[c][1] if std is None else std
    values = {}
    for name, v in (("mean", mean), ("std", std)):
        arr = np.asarray(v, np.float32).reshape(-1)
        if arr.size not in (1, c):
            raise ValueError(f"{name} {np.asarray(v).tolist()} has {arr.size} values for {c} channels")
        values[name] = np.broadcast_to(arr, (c,))
    mean, std = values["mean"], values["std"]
    if np.any(std == 0):
        raise ValueError(f"std {std.tolist()} has a zero")
    scale = (np.float32(1.0 / 255.0) / std).astype(np.float32)
    offset = (-mean / std).astype(np.float32)
    return scale, offset


def normalize(arr: np.ndarray, mean=None, std=None) -> np.ndarray:
    """Channel-last uint8 pixels (any leading shape) to float32 ``(x / 255 - mean) / std``; ``mean`` and
    ``std`` hold one value or one per channel, and default to :data:`NORMALIZE_DEFAULTS` for the channel
    count (ImageNet's for RGB).

    Examples
    --------
    >>> normalize(np.full((1, 1, 3), 255, np.uint8), mean=0.5, std=0.5).tolist()
    [[[1.0, 1.0, 1.0]]]
    >>> round(float(normalize(np.full((1, 1, 1), 255, np.uint8))[0, 0, 0]), 2)  # L: (1 - 0.449) / 0.226
    2.44
    """
    src = np.ascontiguousarray(arr, dtype=np.uint8)
    c = src.shape[-1]
    scale, offset = _norm_coefficients(mean, std, c)
    out = np.empty(src.shape, np.float32)
    _normalize(src.reshape(-1, c), scale, offset, out.reshape(-1, c))
    return out


def normalize_ref(arr: np.ndarray, mean=None, std=None) -> np.ndarray:
    """NumPy reference of :func:`normalize` (computed in float64)."""
    defaults = NORMALIZE_DEFAULTS.get(arr.shape[-1], (None, None))
    mean = np.asarray(defaults[0] if mean is None else mean, np.float64)
    std = np.asarray(defaults[1] if std is None else std, np.float64)
    return ((arr.astype(np.float64) / 255.0 - mean) / std).astype(np.float32)


@_jit
def _nhwc_to_nchw(src, out):  # pragma: no cover - compiled
    n, h, w, c = src.shape
    for i in range(n):
        for k in range(c):
            for y in range(h):
                for x in range(w):
                    out[i, k, y, x] = src[i, y, x, k]


@_jit
def _nchw_to_nhwc(src, out):  # pragma: no cover - compiled
    n, c, h, w = src.shape
    for i in range(n):
        for y in range(h):
            for x in range(w):
                for k in range(c):
                    out[i, y, x, k] = src[i, k, y, x]


def _transpose(arr: np.ndarray, kernel, to_channel_first: bool) -> np.ndarray:
    if arr.ndim not in (3, 4):
        raise ValueError(f"expected a 3-d image or a 4-d batch, got shape {arr.shape}")
    batch = np.ascontiguousarray(arr if arr.ndim == 4 else arr[None])
    n, a, b, c = batch.shape
    shape = (n, c, a, b) if to_channel_first else (n, b, c, a)
    out = np.empty(shape, batch.dtype)
    kernel(batch, out)
    return out if arr.ndim == 4 else out[0]


def hwc_to_chw(arr: np.ndarray) -> np.ndarray:
    """``(H, W, C)`` or ``(N, H, W, C)`` to a contiguous channel-first array.

    Examples
    --------
    >>> hwc_to_chw(np.zeros((4, 5, 3), np.uint8)).shape
    (3, 4, 5)
    """
    return _transpose(arr, _nhwc_to_nchw, True)


def chw_to_hwc(arr: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` or ``(N, C, H, W)`` to a contiguous channel-last array.

    Examples
    --------
    >>> chw_to_hwc(np.zeros((3, 4, 5), np.uint8)).shape
    (4, 5, 3)
    """
    return _transpose(arr, _nchw_to_nhwc, False)
