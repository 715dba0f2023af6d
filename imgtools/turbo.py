"""The fast path for plain JPEGs: the header read without Pillow, the pixels decoded by libjpeg-turbo.

:func:`plain_header` walks a JPEG's markers up to the first scan and gives what Pillow's ``Image.open``
would say of it (size, mode, EXIF orientation) for a *plain* JPEG only: 8-bit baseline, extended or
progressive Huffman coding, one or three components, no Adobe APP14 marker (colour transform), no MPF
APP2 marker (Pillow may open the file as MPO), no orientation left to XMP. For anything else, and for
anything it does not fully understand (junk between markers, a second frame header, a segment running
past the end, an EXIF block Pillow's ``Exif`` cannot read), it returns None and the caller opens the
file with Pillow as before: the fast path never decides differently from Pillow, it only skips parsing
the header twice. :func:`turbo_pixels` decodes at the DCT scale Pillow's ``draft`` picks
(:func:`draft_scale`), giving Pillow's pixels. Opening with Pillow cost 0.2-0.4 ms per ImageNet photo, a
tenth to a sixth of its decode (``benchmarks/RESULTS.md``, session 7).
"""

from __future__ import annotations

import dataclasses
import math
import struct

import numpy as np
from PIL import Image

try:  # libjpeg-turbo without Pillow around it
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover - a dependency; Pillow alone still decodes everything
    _simplejpeg = None

__all__ = ["JpegHeader", "opened_as_jpeg", "plain_header", "draft_scale", "turbo_pixels"]

_ORIENTATION_TAG = 0x0112
_SOI = b"\xff\xd8\xff"
#: Frame headers of the Huffman-coded 8-bit DCT processes (baseline, extended sequential, progressive).
_PLAIN_FRAMES = frozenset({0xC0, 0xC1, 0xC2})
#: The other segments a plain header may hold, each with its length: Huffman and arithmetic-coding tables
#: (DHT, DAC), DNL, DRI, EXP, quantization tables (DQT, checked as Pillow reads them), APP0-15 and comments.
#: Any other marker (other frame headers, DHP, markers without a length, JPGn) is left to Pillow.
_SEGMENTS = frozenset({0xC4, 0xCC, 0xDC, 0xDD, 0xDF, 0xDB, 0xFE, *range(0xE0, 0xF0)}) | _PLAIN_FRAMES
_EXIF = b"Exif\0\0"
_XMP = b"http://ns.adobe.com/xap/1.0/\x00"


@dataclasses.dataclass(frozen=True)
class JpegHeader:
    """What Pillow's ``Image.open`` says of a plain JPEG: stored ``width`` x ``height``, ``mode`` (``L`` or
    ``RGB``) and the EXIF ``orientation`` (1 when there is none)."""

    width: int
    height: int
    mode: str
    orientation: int


def opened_as_jpeg(data: bytes, formats: tuple[str, ...]) -> bool:
    """Whether Pillow, trying ``formats`` in their order, opens ``data`` as a JPEG: JPEG is listed and no
    format before it would take the bytes.

    Examples
    --------
    >>> jpeg = bytes([0xFF, 0xD8, 0xFF, 0xE0])
    >>> opened_as_jpeg(jpeg, ("PNG", "JPEG")), opened_as_jpeg(jpeg, ("PNG",))
    (True, False)
    """
    for name in formats:
        if name == "JPEG":
            return True
        if name not in Image.OPEN:
            Image.init()
        accept = Image.OPEN.get(name, (None, None))[1]
        if accept is None or accept(data[:16]):  # Pillow tries a format without an accept on any bytes
            return False
    return False


def plain_header(data: bytes) -> JpegHeader | None:
    """The header of a plain JPEG (see the module's docstring), or None: then ask Pillow.

    Examples
    --------
    >>> import io
    >>> buf = io.BytesIO(); Image.new("RGB", (40, 30)).save(buf, "JPEG")
    >>> plain_header(buf.getvalue())
    JpegHeader(width=40, height=30, mode='RGB', orientation=1)
    >>> plain_header(b"GIF89a") is None
    True
    """
    if not data.startswith(_SOI):
        return None
    pos, end = 2, len(data)
    size = layers = exif = None
    xmp = dpi = False
    while True:
        if pos + 4 > end or data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # a fill byte before the marker
            pos += 1
            continue
        if marker == 0xDA:  # start of scan: the header is complete
            break
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker not in _SEGMENTS or length < 2 or pos + 2 + length > end:
            return None
        segment = data[pos + 4 : pos + 2 + length]
        pos += 2 + length
        if marker in _PLAIN_FRAMES:
            if size is not None or len(segment) < 6 or segment[0] != 8:
                return None
            size = (int.from_bytes(segment[3:5], "big"), int.from_bytes(segment[1:3], "big"))
            layers = segment[5]
        elif marker == 0xDB and not _whole_tables(segment):
            return None
        elif marker == 0xE0 and segment.startswith(b"JFIF"):
            if len(segment) < 12:  # Pillow reads the version and density unguarded: short ones fail there
                return None
            dpi = dpi or segment[7] in (1, 2)
        elif marker == 0xE1 and segment.startswith(_EXIF):  # Pillow joins the EXIF segments so
            exif = segment if exif is None else exif + segment[6:]
        elif marker == 0xE1 and segment.startswith(_XMP):
            xmp = True
        elif marker == 0xE2 and segment.startswith(b"ICC_PROFILE\0") and len(segment) < 14:
            return None  # Pillow's open reads byte 13 of each part of the profile
        elif ((marker == 0xE2 and segment.startswith(b"MPF\0"))  # maybe an MPO
              or (marker == 0xED and segment.startswith(b"Photoshop 3.0\x00") and not _resources_read(segment))
              or (marker == 0xEE and segment.startswith(b"Adobe"))):  # a colour transform
            return None
    if size is None or layers not in (1, 3) or 0 in size:
        return None
    orientation = 1 if exif is None else _orientation(exif, dpi)
    if orientation is None or (xmp and (exif is None or orientation == 0)):  # Pillow would read the XMP
        return None
    return JpegHeader(size[0], size[1], "L" if layers == 1 else "RGB", orientation or 1)


def _whole_tables(segment: bytes) -> bool:
    """Whether a DQT segment holds whole tables (Pillow's open fails on a cut one)."""
    while segment:
        length = 65 if segment[0] < 16 else 129
        if len(segment) < length:
            return False
        segment = segment[length:]
    return True


def _resources_read(segment: bytes) -> bool:
    """Whether Pillow's open gets through a Photoshop segment's 8BIM resources: it stops quietly at a
    resource cut short (a ``struct.error``), but fails on a name length past the end (an ``IndexError``)."""
    offset = 14
    try:
        while segment[offset : offset + 4] == b"8BIM":
            code = struct.unpack_from(">H", segment, offset + 4)[0]
            offset += 7 + segment[offset + 6]
            offset += offset & 1
            size = struct.unpack_from(">I", segment, offset)[0]
            if code == 0x03ED:  # the resolution, read field by field
                for fmt, at in ((">I", 0), (">H", 4), (">I", 8), (">H", 12)):
                    struct.unpack_from(fmt, segment[offset + 4 : offset + 4 + size], at)
            offset += 4 + size
            offset += offset & 1
    except struct.error:
        return True
    except IndexError:
        return False
    return True


def _orientation(exif: bytes, dpi: bool) -> int | None:
    """The EXIF orientation as Pillow's ``getexif`` reads it (1 outside 1..8, 0 when there is none), or
    None when Pillow's open would not read the block cleanly: a part it could not load, or a resolution its
    open reads from the EXIF (``dpi`` False: none in the JFIF segment) with an error it does not catch."""
    try:
        tags = Image.Exif()
        tags.load(exif)
        if not dpi:
            try:  # JpegImageFile._read_dpi_from_exif, whose caught errors leave the open going
                x = tags[0x011A]
                _ = tags[0x0128]
                try:
                    ratio = float(x[0]) / x[1]
                except TypeError:
                    ratio = x
                math.isnan(ratio)
            except (struct.error, KeyError, SyntaxError, TypeError, ValueError, ZeroDivisionError):
                pass
        found = tags.get(_ORIENTATION_TAG)
        value = 0 if found is None else int(found)
    except Exception:  # Pillow's open or getexif may fail or go on: its call
        return None
    return value if 0 <= value <= 8 else 1


def draft_scale(size: tuple[int, int], need: tuple[int, int]) -> tuple[int, int]:
    """The size Pillow's ``draft(None, need)`` gives a JPEG of ``size``: the largest DCT reduction (8, 4,
    2 or 1) that keeps at least ``need``, rounded up.

    Examples
    --------
    >>> draft_scale((500, 375), (128, 128)), draft_scale((500, 375), (40, 40))
    ((250, 188), (63, 47))
    >>> draft_scale((500, 375), (800, 800))  # more than there is: full size
    (500, 375)
    """
    scale = min(size[0] // need[0], size[1] // need[1])
    s = next((s for s in (8, 4, 2, 1) if scale >= s), 1)
    return (size[0] + s - 1) // s, (size[1] + s - 1) // s


def turbo_pixels(data: bytes, mode: str, stored: tuple[int, int], drafted: tuple[int, int],
                 channels: int = 3) -> np.ndarray | None:
    """A plain JPEG (Pillow ``mode`` L or RGB) straight to an array with libjpeg-turbo (simplejpeg), at the
    DCT scale of ``drafted``: the same pixels as Pillow's decoder gives, a third faster (no Pillow image,
    no copy). For ``channels`` 1, a grey JPEG is decoded straight to grey, a colour one to RGB then
    Pillow's ``L`` of it; for 4, RGB with alpha 255. None when simplejpeg is missing or refuses the file:
    Pillow then decodes it (and names the fault)."""
    if _simplejpeg is None:
        return None
    factor = stored[0] // drafted[0] if drafted[0] else 1
    gray = channels == 1 and mode == "L"
    colorspace = "GRAY" if gray else "RGBA" if channels == 4 else "RGB"
    try:
        out = _simplejpeg.decode_jpeg(data, colorspace=colorspace, min_factor=factor, min_width=drafted[0],
                                      min_height=drafted[1])
    except Exception:
        return None
    if (out.shape[1], out.shape[0]) != drafted:
        return None
    if channels == 1 and not gray:
        return np.asarray(Image.fromarray(out).convert("L"))[:, :, None]
    return out
