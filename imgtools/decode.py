"""Decode stage: image bytes -> an ``(H, W, C)`` ``uint8`` array, upright (EXIF orientation applied), with
C = ``limits.channels``: Pillow's ``L``, RGB (the default) or RGBA.

Pillow does the decoding, but for plain JPEGs (nearly every photo): libjpeg-turbo, after
:mod:`imgtools.turbo` read the header as Pillow's open would. JPEGs are decoded in the DCT domain at the
smallest scale that still leaves the requested size (see :func:`imgtools.resize.draft_request`), every
Pillow mode is brought to RGB with the :mod:`imgtools.kernels` (transparency composited over the
background), to ``L`` as Pillow converts that RGB (a grey file straight to ``L``), or to RGBA as Pillow
converts it (alpha kept; 255 where there is none), and a pixel-count guard refuses decompression bombs
before any pixel is decoded. Only formats in ``limits.formats`` are opened, so untrusted bytes never reach rarely used
decoders or make Pillow start an outside program. Every failure is a :class:`~imgtools.errors.DecodeError`
whose message is the reason recorded in the manifest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import threading
import warnings
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import kernels
from .config import DecodeLimits
from .errors import DecodeError
from .turbo import draft_scale, opened_as_jpeg, plain_header, turbo_pixels

__all__ = ["Decoded", "Outside", "decode", "decode_mask", "decode_native", "ORIENTATION_SWAPS"]

_ORIENTATION_TAG = 0x0112
#: EXIF orientations that swap width and height.
ORIENTATION_SWAPS = frozenset({5, 6, 7, 8})


class _LiftedBombCheck:
    """Pillow's own bomb check reads a process-wide global; imgtools applies its own guard (max_pixels, on
    the pixels actually decoded), so the global is lifted while any thread parses a header and put back
    when the last one is done. Counted, not locked across the parse: a header parser that never returns
    (see :mod:`imgtools.watchdog`) must not stop the other threads' opens."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._saved: int | None = None

    def __enter__(self) -> None:
        with self._lock:
            if self._active == 0:
                self._saved = Image.MAX_IMAGE_PIXELS
                Image.MAX_IMAGE_PIXELS = None
            self._active += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._active -= 1
            if self._active == 0:
                Image.MAX_IMAGE_PIXELS = self._saved


_BOMB_CHECK_LIFTED = _LiftedBombCheck()

# Pillow mode -> (mode to convert to first, or None to keep; layout handed to the kernels).
_MODES: dict[str, tuple[str | None, kernels.ChannelLayout]] = {
    "1": ("L", kernels.ChannelLayout.GRAY),
    "L": (None, kernels.ChannelLayout.GRAY),
    "LA": (None, kernels.ChannelLayout.GRAY_ALPHA),
    "La": ("LA", kernels.ChannelLayout.GRAY_ALPHA),
    "P": ("RGB", kernels.ChannelLayout.RGB),
    "PA": ("RGBA", kernels.ChannelLayout.RGBA),
    "RGB": (None, kernels.ChannelLayout.RGB),
    "RGBA": (None, kernels.ChannelLayout.RGBA),
    "RGBa": ("RGBA", kernels.ChannelLayout.RGBA),
    "RGBX": ("RGB", kernels.ChannelLayout.RGB),
    "CMYK": ("RGB", kernels.ChannelLayout.RGB),
    "YCbCr": ("RGB", kernels.ChannelLayout.RGB),
    "LAB": ("RGB", kernels.ChannelLayout.RGB),
    "HSV": ("RGB", kernels.ChannelLayout.RGB),
}


@dataclasses.dataclass(frozen=True)
class Decoded:
    """One decoded image: ``pixels`` (H x W x C uint8, C = ``limits.channels``: L, RGB or RGBA; upright,
    possibly reduced by JPEG draft decoding), the original ``width`` x ``height`` after EXIF orientation, its
    Pillow ``mode`` and ``format``, and the EXIF ``orientation`` that was applied (1: none)."""

    pixels: np.ndarray
    width: int
    height: int
    mode: str
    format: str
    orientation: int = 1
    #: the file carried transparency that was composited over the background
    transparent: bool = False


class Outside(DecodeError):
    """The image falls outside the write-time filters (``limits.min_side`` / ``limits.max_aspect``): found
    from its header, before any pixel is decoded. The message is the reason; ``width``, ``height`` (upright)
    and ``mode`` are the original's, for its manifest row.

    Examples
    --------
    >>> exc = Outside("shorter side 48 < --min-side 64", 100, 48, "RGB")
    >>> str(exc), exc.width, exc.height
    ('shorter side 48 < --min-side 64', 100, 48)
    """

    def __init__(self, reason: str, width: int, height: int, mode: str | None = None):
        super().__init__(reason)
        self.width, self.height, self.mode = width, height, mode

    def __reduce__(self):
        return type(self), (str(self), self.width, self.height, self.mode)


def _open(data: bytes, formats: tuple[str, ...]) -> Image.Image:
    if not data:
        raise DecodeError("empty file (0 bytes)")
    with _BOMB_CHECK_LIFTED:
        try:
            return Image.open(io.BytesIO(data), formats=list(formats))
        except UnidentifiedImageError:
            raise DecodeError(f"not an image in an allowed format ({', '.join(formats)})") from None


def _orientation(img: Image.Image) -> int:
    try:
        if img.format == "PNG":  # PNG's getexif() decodes every pixel to look for a late eXIf chunk
            exif = Image.Exif()
            if img.info.get("exif"):
                exif.load(img.info["exif"])
        else:
            exif = img.getexif()
        value = int(exif.get(_ORIENTATION_TAG, 1))
    except Exception:  # a broken EXIF block does not make the pixels unusable
        return 1
    return value if 1 <= value <= 8 else 1


# EXIF orientation -> the array operation that makes the picture upright (as ImageOps.exif_transpose);
# rows and columns only, so it serves H x W masks and H x W x C images alike.
_UPRIGHT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1), 6: lambda a: a.swapaxes(0, 1)[:, ::-1],
    7: lambda a: a.swapaxes(0, 1)[::-1, ::-1], 8: lambda a: a.swapaxes(0, 1)[::-1],
}


def _upright(arr: np.ndarray, orientation: int) -> np.ndarray:
    turn = _UPRIGHT.get(orientation)
    return arr if turn is None else np.ascontiguousarray(turn(arr))


def _to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any mode to an RGB image: Pillow's own conversions where they are exact, the kernels elsewhere."""
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        raw = np.asarray(img)
        if mode == "I":
            raw = np.clip(raw, 0, 65535)
        return Image.fromarray(kernels.to_rgb(kernels.u16_to_u8(raw), kernels.ChannelLayout.GRAY))
    if mode == "F":
        return Image.fromarray(kernels.to_rgb(kernels.float_to_u8(np.asarray(img)), kernels.ChannelLayout.GRAY))
    if "transparency" in img.info and mode in ("P", "L", "RGB", "1"):
        convert, layout = "RGBA", kernels.ChannelLayout.RGBA
    elif mode == "P" and img.palette is not None and img.palette.mode == "RGBA":
        convert, layout = "RGBA", kernels.ChannelLayout.RGBA
    elif mode in _MODES:
        convert, layout = _MODES[mode]
    else:
        raise DecodeError(f"unsupported image mode {mode!r}")
    if convert is not None:
        img = img.convert(convert)
    if layout is kernels.ChannelLayout.RGB:
        return img  # no copy: the decoded image is used as it is
    return Image.fromarray(kernels.to_rgb(np.asarray(img), layout, background))


def _to_gray(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any mode to an ``L`` image: Pillow's ``convert("L")`` of :func:`_to_rgb`'s RGB; grey modes without
    transparency directly (the same values: a grey triple's luma is the grey)."""
    mode = img.mode
    if "transparency" not in img.info:
        if mode == "L":
            return img
        if mode == "1":
            return img.convert("L")
        if mode.startswith("I;16") or mode == "I":
            raw = np.asarray(img)
            return Image.fromarray(kernels.u16_to_u8(np.clip(raw, 0, 65535) if mode == "I" else raw))
        if mode == "F":
            return Image.fromarray(kernels.float_to_u8(np.asarray(img)))
    return _to_rgb(img, background).convert("L")


#: Pillow modes that Pillow itself brings to RGBA keeping their alpha or transparency.
_RGBA_DIRECT = ("RGBa", "LA", "PA", "P", "L", "RGB", "1")


def _to_rgba(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any mode to an RGBA image, alpha kept (``transparency`` made alpha): Pillow's ``convert("RGBA")``;
    modes without alpha through :func:`_to_rgb` (alpha 255)."""
    mode = img.mode
    if mode == "RGBA":
        return img
    if mode == "La":
        img, mode = img.convert("LA"), "LA"
    if mode in _RGBA_DIRECT:
        return img.convert("RGBA")
    return _to_rgb(img, background).convert("RGBA")


def _convert(img: Image.Image, limits: DecodeLimits) -> np.ndarray:
    """The decoded image as an (H, W, C) array of ``limits.channels`` channels."""
    if limits.channels == 1:
        return np.asarray(_to_gray(img, limits.background))[:, :, None]
    if limits.channels == 4:
        return np.asarray(_to_rgba(img, limits.background))
    return np.asarray(_to_rgb(img, limits.background))


def decode(
    data: bytes,
    limits: DecodeLimits,
    request: Callable[[int, int], tuple[int, int]] | None = None,
) -> Decoded:
    """Decode image bytes into an upright (H, W, C) array, C = ``limits.channels`` (L, RGB or RGBA).

    Parameters
    ----------
    data : bytes
        The encoded file.
    limits : DecodeLimits
        The allowed Pillow ``formats``, the ``max_pixels`` guard, the ``background`` for alpha (for 1 and 3
        channels) and the ``channels`` (a config's :attr:`~imgtools.config.PresizeConfig.limits`).
    request : callable, optional
        ``request(width, height) -> (min_width, min_height)``: given the upright size, the smallest
        upright size the caller still needs. JPEGs are then decoded at the smallest DCT scale (1/2, 1/4,
        1/8) that keeps at least that much. ``None`` decodes at full size.

    Returns
    -------
    Decoded

    Raises
    ------
    Outside
        The header's size is outside ``limits.min_side`` / ``limits.max_aspect`` (nothing decoded).
    DecodeError
        With the reason, for anything that is not a decodable image within the limits.

    Examples
    --------
    >>> from PIL import Image; import io
    >>> buf = io.BytesIO(); Image.new("L", (4, 3), 9).save(buf, "PNG")
    >>> d = decode(buf.getvalue(), DecodeLimits())
    >>> d.pixels.shape, d.mode
    ((3, 4, 3), 'L')
    """
    with _reasons():
        return _decode(data, limits, request)


@contextlib.contextmanager
def _reasons(prefix: str = "") -> Iterator[None]:
    """Pillow's warnings about odd files silenced; any failure raised as a DecodeError with the reason."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        except DecodeError:
            raise
        except MemoryError:
            raise DecodeError(f"{prefix}out of memory while decoding") from None
        except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ...
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise DecodeError(prefix + (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)) from None


def _open_guarded(data: bytes, limits: DecodeLimits, what: str = "") -> tuple[Image.Image, int]:
    """Open at full size under the pixel guard: (image, EXIF orientation)."""
    img = _open(data, limits.formats)
    w, h = img.size
    if w * h > limits.max_pixels:
        raise DecodeError(f"{what}{w}x{h} = {w * h} pixels is above max_pixels {limits.max_pixels}")
    return img, _orientation(img)


def _plain(data: bytes, limits: DecodeLimits, request) -> Decoded | None:
    """A plain JPEG (see :mod:`imgtools.turbo`) decoded as :func:`_decode` decodes it, without opening it
    with Pillow; None: not a plain JPEG, or libjpeg-turbo refused it (then Pillow opens it)."""
    header = plain_header(data) if opened_as_jpeg(data, limits.formats) else None
    if header is None:
        return None
    stored, orientation = (header.width, header.height), header.orientation
    width, height = stored[::-1] if orientation in ORIENTATION_SWAPS else stored
    reason = limits.outside(width, height)
    if reason is not None:
        raise Outside(reason, width, height, header.mode)
    drafted = stored
    if request is not None:
        need = request(width, height)
        need = need[::-1] if orientation in ORIENTATION_SWAPS else need
        drafted = draft_scale(stored, (max(1, need[0]), max(1, need[1])))
    if drafted[0] * drafted[1] > limits.max_pixels:
        return None  # Pillow's path names it
    pixels = turbo_pixels(data, header.mode, stored, drafted, limits.channels)
    if pixels is None:
        return None
    return Decoded(pixels=_upright(pixels, orientation), width=width, height=height, mode=header.mode,
                   format="JPEG", orientation=orientation)


def _decode(data: bytes, limits: DecodeLimits, request) -> Decoded:
    fast = _plain(data, limits, request)
    if fast is not None:
        return fast
    img = _open(data, limits.formats)
    fmt = img.format or "unknown"
    orientation = _orientation(img)
    mode = img.mode
    stored_w, stored_h = img.size
    width, height = (stored_h, stored_w) if orientation in ORIENTATION_SWAPS else (stored_w, stored_h)
    reason = limits.outside(width, height)  # the write-time filters, from the header alone
    if reason is not None:
        raise Outside(reason, width, height, mode)
    if request is not None and fmt in ("JPEG", "MPO"):
        need_w, need_h = request(width, height)
        if orientation in ORIENTATION_SWAPS:
            need_w, need_h = need_h, need_w
        img.draft(None, (max(1, need_w), max(1, need_h)))
    dw, dh = img.size
    if dw * dh > limits.max_pixels:
        raise DecodeError(f"{dw}x{dh} = {dw * dh} pixels is above max_pixels {limits.max_pixels}")
    meta = dict(width=width, height=height, mode=mode, format=fmt, orientation=orientation)
    fast = (turbo_pixels(data, mode, (stored_w, stored_h), (dw, dh), limits.channels)
            if fmt == "JPEG" and mode in ("RGB", "L") and img.info.get("adobe_transform") is None else None)
    if fast is not None:
        return Decoded(pixels=_upright(fast, orientation), **meta)
    img.load()
    pixels = _upright(_convert(img, limits), orientation)
    return Decoded(pixels=pixels, transparent="transparency" in img.info, **meta)


def decode_mask(data: bytes, limits: DecodeLimits) -> np.ndarray:
    """Decode a label mask: one channel of class indices (modes 1, L, P as indices, I and I;16 up to 255),
    upright, as a 2-d uint8 array.

    Examples
    --------
    >>> from PIL import Image; import io
    >>> buf = io.BytesIO(); Image.new("L", (4, 3), 2).save(buf, "PNG")
    >>> decode_mask(buf.getvalue(), DecodeLimits()).shape
    (3, 4)
    """
    with _reasons("mask: "):
        img, orientation = _open_guarded(data, limits, "mask ")
        if img.mode not in ("1", "L", "P", "I", "I;16", "I;16B", "I;16L"):
            raise DecodeError(f"mask has mode {img.mode!r}; a mask has one channel of class indices")
        arr = _upright(np.asarray(img.convert("L") if img.mode == "1" else img), orientation)
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DecodeError(f"mask has class indices up to {int(arr.max())}; at most 255 are kept")
        arr = arr.astype(np.uint8)
    return arr


#: Pillow modes decoded to one channel, as Spark's image source does for grey images (alpha dropped).
_GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")


def decode_native(data: bytes, limits: DecodeLimits) -> np.ndarray:
    """Decode to the channels the file has, Spark-style: (H, W, 1) for grey, (H, W, 4) RGBA when there is
    transparency, else (H, W, 3) RGB; uint8, upright, full size.

    Examples
    --------
    >>> from PIL import Image; import io
    >>> buf = io.BytesIO(); Image.new("LA", (4, 3)).save(buf, "PNG")
    >>> decode_native(buf.getvalue(), DecodeLimits()).shape
    (3, 4, 1)
    """
    with _reasons():
        img, orientation = _open_guarded(data, limits)
        img.load()
        if img.mode in _GRAY_MODES:
            gray = img.convert("L") if img.mode in ("1", "LA", "La") else img
            out = gray if gray.mode == "L" else _to_rgb(gray, limits.background).getchannel(0)
        elif img.mode in ("RGBA", "RGBa", "PA") or "transparency" in img.info or (
                img.mode == "P" and img.palette is not None and img.palette.mode == "RGBA"):
            out = img.convert("RGBA")
        else:
            out = _to_rgb(img, limits.background)
        arr = _upright(np.asarray(out), orientation)
        return np.ascontiguousarray(arr[:, :, None] if arr.ndim == 2 else arr)
