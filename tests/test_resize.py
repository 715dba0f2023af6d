"""Geometry of every mode, and the resampling against Pillow references."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import gradient, psnr
from imgtools.config import PresizeConfig, ResizeMode, Size
from imgtools.resize import draft_request, plan, resize, resize_all


@pytest.mark.parametrize("w,h", [(400, 200), (200, 400), (100, 100), (37, 1000), (1, 1)])
@pytest.mark.parametrize("size", [Size(64, 64), Size(96, 48), Size(20, 90)])
@pytest.mark.parametrize("mode", [ResizeMode.SQUASH, ResizeMode.CROP, ResizeMode.PAD])
@pytest.mark.parametrize("only_if_bigger", [False, True])
def test_fixed_modes_fill_exactly_the_target(w, h, size, mode, only_if_bigger):
    p = plan(w, h, size, mode, only_if_bigger)
    assert p.canvas == (size.width, size.height)
    assert 1 <= p.scaled[0] <= size.width and 1 <= p.scaled[1] <= size.height
    assert 0 <= p.offset[0] and p.offset[0] + p.scaled[0] <= size.width
    x0, y0, x1, y1 = p.box
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    if only_if_bigger:
        assert p.scaled[0] <= (x1 - x0) + 0.5 and p.scaled[1] <= (y1 - y0) + 0.5


def test_crop_keeps_the_centre_and_pad_keeps_the_aspect():
    assert plan(400, 200, Size(100, 100), ResizeMode.CROP).box == (100.0, 0.0, 300.0, 200.0)
    p = plan(400, 200, Size(100, 100), ResizeMode.PAD)
    assert p.scaled == (100, 50) and p.offset == (0, 25)


@pytest.mark.parametrize("mode,w,h,n,expected", [
    (ResizeMode.SHORTEST, 400, 300, 150, (200, 150)), (ResizeMode.LONGEST, 400, 300, 200, (200, 150)),
    (ResizeMode.SHORTEST, 100, 80, 160, (200, 160)),
])
def test_variable_modes_keep_the_aspect(mode, w, h, n, expected):
    p = plan(w, h, Size(n, n), mode)
    assert p.scaled == expected and p.canvas == expected


def test_only_if_bigger_never_enlarges():
    assert plan(100, 80, Size(160, 160), ResizeMode.SHORTEST, only_if_bigger=True).scaled == (100, 80)
    p = plan(50, 40, Size(64, 64), ResizeMode.CROP, only_if_bigger=True)
    assert p.scaled == (50, 40) and p.offset == (7, 12)


def test_pad_uses_the_pad_colour():
    cfg = PresizeConfig.build(sizes=[32], mode="pad", pad_color="#0a141e")
    out = resize(Image.new("RGB", (64, 16), (200, 200, 200)), Size(32, 32), cfg, (64, 16))
    assert out[0, 0].tolist() == [10, 20, 30] and out[16, 16].tolist() == [200, 200, 200]


@pytest.mark.parametrize("mode", ["squash", "crop", "pad"])
def test_resize_matches_pillow_reference(mode):
    img = Image.fromarray(gradient(300, 200))
    cfg = PresizeConfig.build(sizes=[64], mode=mode)
    got = resize(img, Size(64, 64), cfg, (300, 200))
    if mode == "squash":
        ref = img.resize((64, 64), Image.Resampling.LANCZOS)
    elif mode == "crop":
        ref = ImageOps.fit(img, (64, 64), Image.Resampling.LANCZOS)
    else:
        ref = ImageOps.pad(img, (64, 64), Image.Resampling.LANCZOS, color=(0, 0, 0))
    assert psnr(got, np.asarray(ref)) > 40


def test_resize_plans_on_the_original_size_after_draft_reduction():
    full = Image.fromarray(gradient(400, 300))
    half = full.reduce(2)
    cfg = PresizeConfig.build(sizes=["50x50"], mode="crop")
    a = resize(full, Size(50, 50), cfg, (400, 300))
    b = resize(half, Size(50, 50), cfg, (400, 300))
    assert psnr(a, b) > 35


def test_draft_request_keeps_twice_every_target():
    cfg = PresizeConfig.build(sizes=[64, 100], mode="squash")
    assert draft_request(1000, 500, cfg) == (200, 200)
    cfg = PresizeConfig.build(sizes=[64], mode="crop")
    assert draft_request(1000, 500, cfg) == (256, 128)
    assert draft_request(100, 50, cfg) == (100, 50)  # never more than the image


def test_resize_all_gives_every_size_from_one_array():
    out = resize_all(gradient(120, 90), PresizeConfig.build(sizes=[16, "40x20"], mode="crop"), (120, 90))
    assert {k: v.shape for k, v in out.items()} == {"16x16": (16, 16, 3), "40x20": (20, 40, 3)}
