"""The plain-JPEG fast path says of a file what Pillow's open says, or leaves the file to Pillow; decoding
through it gives the decode Pillow's path gives, pixels and failures alike."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image, ImageOps

import imgtools.decode
from conftest import encode, gradient, hostile_files, with_orientation
from imgtools.config import DecodeLimits, PresizeConfig
from imgtools.decode import decode
from imgtools.errors import DecodeError
from imgtools.turbo import JpegHeader, draft_scale, opened_as_jpeg, plain_header

RGB = Image.fromarray(gradient(97, 61, seed=5))


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _insert(jpeg: bytes, *segments: bytes) -> bytes:
    """``jpeg`` with ``segments`` right after its SOI marker."""
    return jpeg[:2] + b"".join(segments) + jpeg[2:]


def _pillow(data: bytes) -> JpegHeader:
    img = Image.open(io.BytesIO(data), formats=["JPEG"])
    orientation = int(img.getexif().get(0x0112, 1))
    return JpegHeader(img.size[0], img.size[1], img.mode, orientation if 1 <= orientation <= 8 else 1)


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


PHOTOSHOP = b"Photoshop 3.0\x00" + b"8BIM" + struct.pack(">H", 0x0404) + b"\x00\x00" + struct.pack(">I", 4) + b"abcd"
XMP = b"http://ns.adobe.com/xap/1.0/\x00<x tiff:Orientation=\"6\"/>"
PLAIN = {
    "baseline": encode(RGB, "JPEG", quality=90),
    "progressive": encode(RGB, "JPEG", quality=80, progressive=True),
    "grey": encode(RGB.convert("L"), "JPEG"),
    "orientation 6": with_orientation(RGB, 6),
    "orientation 8, icc": _insert(with_orientation(RGB, 8), _segment(0xE2, b"ICC_PROFILE\x00\x01\x01" + b"x" * 40)),
    "jfif dpi": encode(RGB, "JPEG", dpi=(300, 300)),
    "photoshop resources": _insert(encode(RGB, "JPEG"), _segment(0xED, PHOTOSHOP)),
    "comment, fill bytes": _insert(encode(RGB, "JPEG"), _segment(0xFE, b"hello"), b"\xff\xff"),
    "orientation 99": encode(RGB, "JPEG", exif=_exif(99)),
}
LEFT_TO_PILLOW = {
    "cmyk (Adobe marker)": encode(RGB.convert("CMYK"), "JPEG"),
    "xmp orientation": _insert(encode(RGB, "JPEG"), _segment(0xE1, XMP)),
    "mpf marker": _insert(encode(RGB, "JPEG"), _segment(0xE2, b"MPF\x00" + b"\x00" * 16)),
    "cut quantization table": _insert(encode(RGB, "JPEG"), _segment(0xDB, b"\x00" + b"\x01" * 10)),
    "photoshop name past the end": _insert(encode(RGB, "JPEG"), _segment(0xED, b"Photoshop 3.0\x00" + b"8BIM\x04\x04")),
    "short icc part": _insert(encode(RGB, "JPEG"), _segment(0xE2, b"ICC_PROFILE\x00")),
    "lossless frame": b"\xff\xd8" + _segment(0xC3, b"\x08\x00\x10\x00\x10\x01\x01\x11\x00") + b"\xff\xda",
    "12-bit frame": b"\xff\xd8" + _segment(0xC1, b"\x0c\x00\x10\x00\x10\x01\x01\x11\x00") + b"\xff\xda",
    "header cut short": encode(RGB, "JPEG")[:100],
    "png": encode(RGB, "PNG"),
}


@pytest.mark.parametrize("name", list(PLAIN))
def test_plain_header_says_what_pillows_open_says(name):
    assert plain_header(PLAIN[name]) == _pillow(PLAIN[name])


@pytest.mark.parametrize("name", list(LEFT_TO_PILLOW))
def test_files_the_fast_path_does_not_fully_understand_are_left_to_pillow(name):
    assert plain_header(LEFT_TO_PILLOW[name]) is None


def test_a_header_read_is_pillows_on_damaged_files():
    """Random damage to a header with EXIF, ICC, Photoshop and JFIF segments: whatever the fast path
    reads, Pillow's open reads the same (size, mode, orientation); where Pillow's open fails, the fast path
    has left the file to it."""
    base = _insert(with_orientation(RGB, 6), _segment(0xED, PHOTOSHOP),
                   _segment(0xE2, b"ICC_PROFILE\x00\x01\x01" + b"x" * 20))
    scan = base.index(b"\xff\xda")
    rng = np.random.default_rng(0)
    read = 0
    for _ in range(400):
        damaged = bytearray(base)
        for at in rng.integers(2, scan, rng.integers(1, 4)):
            damaged[at] = int(rng.integers(0, 256))
        header = plain_header(bytes(damaged))
        if header is not None:
            read += 1
            assert header == _pillow(bytes(damaged))
    assert read > 50  # most single-byte damage is in pixels' tables and EXIF values: still read


@pytest.mark.parametrize("channels", [3, 1, 4])
@pytest.mark.parametrize("request_size", [None, (30, 20), (8, 8)])
@pytest.mark.parametrize("name", list(PLAIN) + list(LEFT_TO_PILLOW)
                         + [n for n in hostile_files() if n.endswith((".jpg", ".jpg!", ".jpeg", ".jpeg!"))])
def test_decode_gives_what_pillows_path_gives(name, request_size, channels, monkeypatch):
    data = {**PLAIN, **LEFT_TO_PILLOW, **hostile_files()}[name]
    limits = PresizeConfig.build(channels=channels).limits
    request = None if request_size is None else (lambda w, h: request_size)

    def attempt():
        try:
            return decode(data, limits, request)
        except DecodeError as exc:
            return f"{type(exc).__name__}: {exc}"

    fast = attempt()
    monkeypatch.setattr(imgtools.decode, "plain_header", lambda data: None)
    slow = attempt()
    if isinstance(slow, str):
        assert fast == slow
        return
    assert (fast.width, fast.height, fast.mode, fast.format, fast.orientation) == (
        slow.width, slow.height, slow.mode, slow.format, slow.orientation)
    np.testing.assert_array_equal(fast.pixels, slow.pixels)


def test_decode_turns_the_fast_paths_pixels_upright():
    data = with_orientation(RGB, 6)
    assert plain_header(data).orientation == 6
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    np.testing.assert_array_equal(decode(data, DecodeLimits()).pixels, upright)


def test_draft_scale_is_pillows():
    data = encode(Image.fromarray(gradient(517, 389)), "JPEG")
    for need in [(1, 1), (60, 60), (65, 49), (130, 98), (258, 200), (517, 389), (900, 900)]:
        img = Image.open(io.BytesIO(data))
        img.draft(None, need)
        assert draft_scale((517, 389), need) == img.size, need


@pytest.mark.parametrize("formats, expected", [
    (("JPEG",), True), (("PNG", "GIF", "JPEG"), True), (("PNG",), False), (("MPO", "JPEG"), False),
    (("TGA", "JPEG"), False),  # a format without an accept test is tried on any bytes
])
def test_the_fast_path_only_takes_what_pillow_would_open_as_jpeg(formats, expected):
    assert opened_as_jpeg(PLAIN["baseline"], formats) is expected
