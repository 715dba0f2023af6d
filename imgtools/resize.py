"""Resize stage: geometry of each mode, and the antialiased resampling itself.

A :class:`Plan` says which box of the source is resampled to which size and where that lands on the
output canvas; the same plan tells the decoder how much resolution it may drop (:func:`draft_request`).

The resampler (:mod:`imgtools.resample`, Numba) is imported on the first resize, not with this module: a
client that only plans and gathers (the CLI, ``presize`` on a cluster) never loads Numba.

Images have 1 (L), 3 (RGB) or 4 (RGBA) channels, each resampled alike. RGBA with any alpha below 255 is
resampled premultiplied, as Pillow's ``Image.resize`` does it (Pillow's own ``RGBa`` conversions, so a fully
transparent pixel's colour never bleeds into its neighbours). The padding of ``pad`` is ``pad_color``: its
``L`` for one channel, and transparent (alpha 0, as ``ImageOps.pad`` pads RGBA) for four.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image

from .config import PresizeConfig, ResizeMode, Size

__all__ = ["Plan", "plan", "draft_request", "resize", "resize_all", "is_identity", "resize_mask", "transform_points"]


@dataclasses.dataclass(frozen=True)
class Plan:
    """Resample ``box`` (x0, y0, x1, y1 in source pixels) to ``scaled`` (w, h), placed at ``offset`` on a
    ``canvas`` (w, h) filled with the pad colour."""

    box: tuple[float, float, float, float]
    scaled: tuple[int, int]
    canvas: tuple[int, int]
    offset: tuple[int, int]


def _side(value: float) -> int:
    return max(1, int(round(value)))


def plan(width: int, height: int, size: Size, mode: ResizeMode, only_if_bigger: bool = False) -> Plan:
    """The geometry that brings a ``width`` x ``height`` image to ``size`` in ``mode``.

    With ``only_if_bigger``, nothing is enlarged: a smaller image keeps its scale and, for the fixed-size
    modes, is centred on the padded canvas.

    Examples
    --------
    >>> plan(400, 200, Size(100, 100), ResizeMode.CROP).box
    (100.0, 0.0, 300.0, 200.0)
    >>> plan(400, 200, Size(100, 100), ResizeMode.PAD).scaled
    (100, 50)
    """
    w, h = float(width), float(height)
    full = (0.0, 0.0, w, h)
    cap = (lambda s: min(s, 1.0)) if only_if_bigger else (lambda s: s)
    if mode in (ResizeMode.SHORTEST, ResizeMode.LONGEST):
        side = min(w, h) if mode is ResizeMode.SHORTEST else max(w, h)
        s = cap(size.width / side)
        scaled = (_side(w * s), _side(h * s))
        return Plan(full, scaled, scaled, (0, 0))
    target = (size.width, size.height)
    if mode is ResizeMode.SQUASH:
        scaled = (_side(w * cap(size.width / w)), _side(h * cap(size.height / h)))
        box = full
    elif mode is ResizeMode.PAD:
        s = cap(min(size.width / w, size.height / h))
        scaled = (min(size.width, _side(w * s)), min(size.height, _side(h * s)))
        box = full
    else:  # CROP: the shortest side meets the target, the rest is cut off evenly
        s = cap(max(size.width / w, size.height / h))
        bw, bh = min(w, size.width / s), min(h, size.height / s)
        box = ((w - bw) / 2, (h - bh) / 2, (w + bw) / 2, (h + bh) / 2)
        scaled = (min(size.width, _side(bw * s)), min(size.height, _side(bh * s)))
    offset = ((target[0] - scaled[0]) // 2, (target[1] - scaled[1]) // 2)
    return Plan(box, scaled, target, offset)


def draft_request(width: int, height: int, config: PresizeConfig) -> tuple[int, int]:
    """The smallest upright size a ``width`` x ``height`` image may be decoded at for every size of
    ``config``: ``draft_factor`` (2) times the resolution each plan samples, so no quality is lost.

    Examples
    --------
    >>> draft_request(500, 375, PresizeConfig.build(sizes=[64], mode="squash"))
    (128, 128)
    """
    need_w = need_h = 1
    for size in config.sizes:
        p = plan(width, height, size, config.mode, config.only_if_bigger)
        x0, y0, x1, y1 = p.box
        need_w = max(need_w, math.ceil(config.draft_factor * p.scaled[0] * width / (x1 - x0)))
        need_h = max(need_h, math.ceil(config.draft_factor * p.scaled[1] * height / (y1 - y0)))
    return min(need_w, width), min(need_h, height)


def _premultiplied(pixels: np.ndarray) -> np.ndarray | None:
    """An RGBA image with some transparency premultiplied (Pillow's ``RGBa``); None for any other image
    (nothing to premultiply: opaque RGBA premultiplies to itself)."""
    if pixels.ndim != 3 or pixels.shape[2] != 4 or pixels[:, :, 3].min() == 255:
        return None
    return np.asarray(Image.fromarray(np.ascontiguousarray(pixels)).convert("RGBa"))


def _unpremultiplied(pixels: np.ndarray) -> np.ndarray:
    """Premultiplied RGBa pixels back to RGBA, as Pillow converts them."""
    h, w = pixels.shape[:2]
    img = Image.frombuffer("RGBa", (w, h), np.ascontiguousarray(pixels), "raw", "RGBa", 0, 1)
    return np.asarray(img.convert("RGBA"))


def _pad_pixel(config: PresizeConfig, channels: int) -> np.ndarray:
    """The padding of one pixel: ``pad_color``, its ``L`` for one channel, transparent for four."""
    if channels == 1:
        return np.asarray(Image.new("RGB", (1, 1), config.pad_color).convert("L"), np.uint8).reshape(1)
    return np.asarray(config.pad_color + ((0,) if channels == 4 else ()), np.uint8)


def resize(pixels: np.ndarray | Image.Image, size: Size, config: PresizeConfig,
           original: tuple[int, int]) -> np.ndarray:
    """Resize one upright image (H x W x C uint8, C = 1, 3 or 4) to ``size`` following ``config`` (mode,
    filter, pad colour).

    ``original`` is the (width, height) the image had before any draft reduction: the plan is made on it,
    so the output does not depend on how much the decoder reduced.

    Examples
    --------
    >>> img = np.full((200, 400, 3), 9, np.uint8)
    >>> resize(img, Size(64, 64), PresizeConfig.build(mode="pad"), (400, 200)).shape
    (64, 64, 3)
    """
    pixels = np.asarray(pixels)
    return _resize(pixels, _premultiplied(pixels), size, config, original)


def _resize(pixels: np.ndarray, premultiplied: np.ndarray | None, size: Size, config: PresizeConfig,
            original: tuple[int, int]) -> np.ndarray:
    """:func:`resize`, given the premultiplied image of RGBA with transparency (None otherwise)."""
    p = plan(original[0], original[1], size, config.mode, config.only_if_bigger)
    height, width = pixels.shape[:2]
    fx, fy = width / original[0], height / original[1]
    x0, y0, x1, y1 = p.box
    box = (x0 * fx, y0 * fy, x1 * fx, y1 * fy)
    if p.scaled == (width, height) and box == (0.0, 0.0, float(width), float(height)):
        out = pixels
    else:
        from .resample import Filter, resample  # here, not at the top: see the module's docstring

        kind = Filter[config.resample.name]
        if premultiplied is None:
            out = resample(pixels, box, p.scaled, kind)
        else:
            out = _unpremultiplied(resample(premultiplied, box, p.scaled, kind))
    if p.scaled == p.canvas:
        return out
    channels = pixels.shape[2]
    canvas = np.empty((p.canvas[1], p.canvas[0], channels), np.uint8)
    canvas[...] = _pad_pixel(config, channels)
    ox, oy = p.offset
    canvas[oy : oy + out.shape[0], ox : ox + out.shape[1]] = out
    return canvas


def resize_all(pixels: np.ndarray | Image.Image, config: PresizeConfig,
               original: tuple[int, int]) -> dict[str, np.ndarray]:
    """Every size of ``config`` from one decoded image (Pillow or H x W x C array), keyed by size name
    (``64x64``, ``short160``).

    Examples
    --------
    >>> out = resize_all(np.zeros((30, 40, 3), np.uint8), PresizeConfig.build(sizes=[8, 16]), (40, 30))
    >>> {k: v.shape for k, v in out.items()}
    {'8x8': (8, 8, 3), '16x16': (16, 16, 3)}
    """
    array = np.asarray(pixels)
    premultiplied = _premultiplied(array)  # once for every size
    return {s.key(config.mode): _resize(array, premultiplied, s, config, original) for s in config.sizes}


def is_identity(width: int, height: int, size: Size, config: PresizeConfig) -> bool:
    """True when ``size`` leaves a ``width`` x ``height`` image exactly as it is (no resampling, no pad).

    Examples
    --------
    >>> cfg = PresizeConfig.build(sizes=[100], mode="longest", format="jpeg", only_if_bigger=True)
    >>> is_identity(80, 60, Size(100, 100), cfg), is_identity(800, 600, Size(100, 100), cfg)
    (True, False)
    """
    p = plan(width, height, size, config.mode, config.only_if_bigger)
    return p.box == (0.0, 0.0, float(width), float(height)) and p.scaled == p.canvas == (width, height)


def resize_mask(mask: np.ndarray, size: Size, config: PresizeConfig, original: tuple[int, int]) -> np.ndarray:
    """Resize a 2-d label mask with the geometry of its image, nearest neighbour (labels stay labels);
    padding is 0.

    Examples
    --------
    >>> m = np.zeros((20, 40), np.uint8); m[:, 20:] = 3
    >>> resize_mask(m, Size(8, 8), PresizeConfig.build(mode="pad"), (40, 20))[3].tolist()
    [0, 0, 0, 0, 3, 3, 3, 3]
    """
    p = plan(original[0], original[1], size, config.mode, config.only_if_bigger)
    out = np.asarray(Image.fromarray(mask).resize(p.scaled, Image.Resampling.NEAREST, box=p.box))
    canvas = np.zeros((p.canvas[1], p.canvas[0]), mask.dtype)
    ox, oy = p.offset
    canvas[oy : oy + out.shape[0], ox : ox + out.shape[1]] = out
    return canvas


def transform_points(xy: np.ndarray, size: Size, config: PresizeConfig, original: tuple[int, int]) -> np.ndarray:
    """Map ``(k, 2)`` pixel coordinates ``x, y`` of the upright original to the output of ``size``.
    Points cut off by a crop land outside ``[0, W) x [0, H)``.

    Examples
    --------
    >>> transform_points(np.array([[200.0, 100.0]]), Size(100, 100), PresizeConfig.build(mode="crop"), (400, 200))
    array([[50., 50.]])
    """
    p = plan(original[0], original[1], size, config.mode, config.only_if_bigger)
    x0, y0, x1, y1 = p.box
    scale = np.array([p.scaled[0] / (x1 - x0), p.scaled[1] / (y1 - y0)])
    return (np.asarray(xy, np.float64).reshape(-1, 2) - [x0, y0]) * scale + p.offset
