"""Decoding: every Pillow mode to RGB, EXIF orientation, draft decoding, the guards; failures as reasons."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import encode, gradient, hostile_files, png_header_only, with_orientation
from imgtools.config import PresizeConfig
from imgtools.decode import decode
from imgtools.errors import DecodeError

CFG = PresizeConfig().limits
RGB = gradient(64, 48)


def _decode(data: bytes, **kwargs):
    return decode(data, PresizeConfig.build(**kwargs).limits if kwargs else CFG)


@pytest.mark.parametrize("mode,fmt", [("RGB", "PNG"), ("L", "PNG"), ("RGB", "BMP"), ("RGB", "TIFF"), ("L", "TIFF"),
                                      ("RGB", "WEBP"), ("LA", "PNG"), ("RGBA", "PNG"), ("RGBA", "TIFF"), ("P", "PNG"),
                                      ("P", "GIF"), ("1", "PNG"), ("CMYK", "TIFF"), ("I", "TIFF"), ("F", "TIFF"),
                                      ("I;16", "PNG"), ("YCbCr", "JPEG"), ("RGB", "JPEG"), ("L", "JPEG"),
                                      ("CMYK", "JPEG")])
def test_every_mode_decodes_to_upright_rgb_uint8(mode, fmt):
    img = Image.fromarray(RGB).convert(mode) if mode not in ("I", "F", "I;16") else None
    if mode == "I;16":
        img = Image.fromarray((np.arange(48 * 64).reshape(48, 64) * 20).astype(np.uint16))
    elif mode == "I":
        img = Image.fromarray((np.arange(48 * 64).reshape(48, 64) * 20).astype(np.int32))
    elif mode == "F":
        img = Image.fromarray((np.arange(48 * 64).reshape(48, 64) / (48 * 64)).astype(np.float32))
    params = {"lossless": True} if fmt == "WEBP" else {}
    d = _decode(encode(img, fmt, **params))
    assert d.pixels.dtype == np.uint8 and d.pixels.shape == (48, 64, 3)
    assert (d.width, d.height) == (64, 48)
    assert d.format == fmt


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_rgb_pixels_are_exact_for_lossless_formats(fmt):
    params = {"lossless": True} if fmt == "WEBP" else {}
    np.testing.assert_array_equal(_decode(encode(Image.fromarray(RGB), fmt, **params)).pixels, RGB)


def test_sixteen_bit_is_scaled_over_its_full_range_not_clipped():
    values = np.array([[0, 257, 32896, 65535]], np.uint16)
    d = _decode(encode(Image.fromarray(values), "PNG"))
    assert d.pixels[0, :, 0].tolist() == [0, 1, 128, 255]
    assert d.mode.startswith("I")


def test_float_image_maps_zero_one_to_0_255():
    values = np.array([[0.0, 0.5, 1.0, 3.0]], np.float32)
    assert _decode(encode(Image.fromarray(values), "TIFF")).pixels[0, :, 1].tolist() == [0, 128, 255, 255]


@pytest.mark.parametrize("background,expected", [("white", [255, 255, 255]), ("#204060", [32, 64, 96])])
def test_transparent_pixels_take_the_background(background, expected):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[:2, :, :] = (200, 10, 10, 255)
    d = _decode(encode(Image.fromarray(rgba), "PNG"), background=background)
    assert d.pixels[0, 0].tolist() == [200, 10, 10]
    assert d.pixels[3, 3].tolist() == expected


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_is_composited(fmt):
    img = Image.new("P", (8, 8))
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (0, 0, 4, 8))
    d = _decode(encode(img, fmt, transparency=0))
    assert d.pixels[0, 0].tolist() == [255, 0, 0]
    assert d.pixels[0, 7].tolist() == [255, 255, 255]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow_exif_transpose(orientation):
    data = with_orientation(Image.fromarray(gradient(60, 40)), orientation)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    d = decode(data, CFG)
    np.testing.assert_array_equal(d.pixels, expected)
    assert (d.width, d.height) == (60, 40)  # the upright size, whatever the stored one


@pytest.mark.parametrize("need,expected_width", [((1000, 1000), 800), ((300, 200), 400), ((200, 100), 200),
                                                 ((50, 10), 100)])
def test_jpeg_draft_decodes_at_the_smallest_scale_that_keeps_the_request(need, expected_width):
    data = encode(Image.fromarray(gradient(800, 600)), "JPEG")
    d = decode(data, CFG, lambda w, h: need)
    assert d.pixels.shape[1] == expected_width
    assert (d.width, d.height) == (800, 600)


def test_draft_request_is_turned_for_rotated_jpegs():
    data = with_orientation(Image.fromarray(gradient(800, 400)), 6)  # stored 400 x 800
    d = decode(data, CFG, lambda w, h: (400, 200))  # upright 800 x 400 -> half
    assert d.pixels.shape[:2] == (200, 400)


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert decode(buf.getvalue(), CFG).pixels[5, 5].tolist() == [255, 0, 0]


def test_pixel_guard_refuses_before_decoding():
    with pytest.raises(DecodeError, match="40000x40000 = 1600000000 pixels is above max_pixels"):
        decode(png_header_only(40000, 40000), CFG)
    with pytest.raises(DecodeError, match="max_pixels 100"):
        _decode(encode(Image.new("RGB", (20, 20)), "PNG"), max_pixels=100)


def test_pixel_guard_counts_pixels_after_draft_reduction():
    data = encode(Image.fromarray(gradient(800, 800)), "JPEG")
    cfg = PresizeConfig.build(max_pixels=200 * 200).limits
    assert decode(data, cfg, lambda w, h: (150, 150)).pixels.shape[:2] == (200, 200)
    with pytest.raises(DecodeError, match="max_pixels"):
        decode(data, cfg)


def test_format_allowlist_refuses_others_and_can_be_widened():
    ppm = encode(Image.fromarray(RGB), "PPM")
    with pytest.raises(DecodeError, match="allowed format"):
        decode(ppm, CFG)
    assert _decode(ppm, formats=["PPM"]).pixels.shape == (48, 64, 3)
    with pytest.raises(DecodeError, match="allowed format"):
        _decode(encode(Image.fromarray(RGB), "PNG"), formats=["JPEG"])


@pytest.mark.parametrize("name", [n for n in hostile_files() if n.endswith("!")])
def test_broken_files_raise_decode_error_with_a_reason(name):
    with pytest.raises(DecodeError) as info:
        decode(hostile_files()[name], CFG)
    assert str(info.value).strip()


@pytest.mark.parametrize("name", [n for n in hostile_files() if not n.endswith("!")])
def test_awkward_but_valid_files_decode(name):
    d = decode(hostile_files()[name], CFG)
    assert d.pixels.ndim == 3 and d.pixels.shape[2] == 3 and d.pixels.dtype == np.uint8


JPEG_VARIANTS = {
    "baseline 4:2:0": dict(quality=90),
    "progressive": dict(quality=85, progressive=True),
    "4:4:4": dict(quality=95, subsampling=0),
    "odd size 4:2:2": dict(quality=80, subsampling=1),
}


def _refuse(*args, **kwargs):
    """simplejpeg refusing a file: decode falls back to Pillow, as where simplejpeg is not installed."""
    raise ValueError("refused by the test")


@pytest.mark.parametrize("request_size", [None, (60, 40), (130, 90), (20, 20)])
@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
@pytest.mark.parametrize("variant", list(JPEG_VARIANTS))
def test_libjpeg_turbo_path_gives_pillows_pixels_at_every_draft_scale(variant, orientation, request_size, monkeypatch):
    import simplejpeg

    img = Image.fromarray(gradient(251, 187, seed=orientation))
    data = encode(img, "JPEG", **JPEG_VARIANTS[variant]) if orientation == 1 else with_orientation(img, orientation)
    request = None if request_size is None else (lambda w, h: request_size)
    calls = []
    real = simplejpeg.decode_jpeg

    def counting(*args, **kwargs):  # the real decoder, counted: the fast path must be the one taken
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(simplejpeg, "decode_jpeg", counting)
    fast = decode(data, CFG, request)
    assert calls
    monkeypatch.setattr(simplejpeg, "decode_jpeg", _refuse)
    slow = decode(data, CFG, request)
    assert (fast.width, fast.height, fast.orientation) == (slow.width, slow.height, slow.orientation)
    np.testing.assert_array_equal(fast.pixels, slow.pixels)


def test_grey_and_cmyk_jpegs_decode_to_the_same_rgb_by_either_path(monkeypatch):
    import simplejpeg

    grey = encode(Image.fromarray(gradient(90, 70)[..., 0]), "JPEG")
    cmyk = encode(Image.fromarray(gradient(90, 70)).convert("CMYK"), "JPEG")
    fast = [decode(d, CFG).pixels for d in (grey, cmyk)]
    monkeypatch.setattr(simplejpeg, "decode_jpeg", _refuse)
    for got, d in zip(fast, (grey, cmyk)):
        np.testing.assert_array_equal(got, decode(d, CFG).pixels)
