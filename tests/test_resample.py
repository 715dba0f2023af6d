"""The Numba resampler agrees with its NumPy reference and with Pillow's resize of the same box."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import gradient, psnr
from imgtools.resample import Filter, coefficients, resample, resample_ref

PILLOW = {Filter.BILINEAR: Image.Resampling.BILINEAR, Filter.BICUBIC: Image.Resampling.BICUBIC,
          Filter.LANCZOS: Image.Resampling.LANCZOS}


@pytest.mark.parametrize("channels", [3, 1, 4, 2])  # 1, 3, 4: the unrolled channel loops; 2: the general one
@pytest.mark.parametrize("kind", list(Filter))
@pytest.mark.parametrize("src, box, size", [
    ((375, 500), (62.5, 0.0, 437.5, 375.0), (224, 224)),   # ImageNet-like crop
    ((375, 500), (0.0, 0.0, 500.0, 375.0), (64, 64)),      # squash, strong reduction
    ((37, 29), (0.0, 0.0, 29.0, 37.0), (80, 101)),         # enlarging
    ((1, 1), (0.0, 0.0, 1.0, 1.0), (3, 2)),                # a single pixel
    ((300, 7), (0.3, 10.7, 6.9, 290.2), (5, 50)),          # fractional box, thin
])
def test_resample_matches_numpy_reference_within_one_level(kind, src, box, size, channels):
    rng = np.random.default_rng(sum(src) + int(kind))
    arr = rng.integers(0, 256, src + (channels,), dtype=np.uint8)
    got, ref = resample(arr, box, size, kind), resample_ref(arr, box, size, kind)
    assert got.shape == (size[1], size[0], channels) and got.dtype == np.uint8
    diff = np.abs(got.astype(int) - ref)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99


@pytest.mark.parametrize("kind", list(Filter))
@pytest.mark.parametrize("size", [(224, 224), (64, 64), (160, 120), (700, 500)])
def test_resample_gives_what_pillow_gives_for_the_same_box(kind, size):
    arr = gradient(500, 375, seed=3)
    box = (31.25, 12.5, 468.75, 362.5)
    ours = resample(arr, box, size, kind)
    pillow = np.asarray(Image.fromarray(arr).resize(size, PILLOW[kind], box=box))
    assert psnr(ours, pillow) > 45  # Pillow rounds between its passes; here only at the end


@pytest.mark.parametrize("kind", list(Filter))
def test_coefficients_are_normalised_and_cover_the_box(kind):
    starts, sizes, weights = coefficients(500, 64, 10.0, 490.0, kind)
    sums = np.array([weights[i, : sizes[i]].sum() for i in range(64)])
    np.testing.assert_allclose(sums, 1.0, atol=1e-5)
    assert starts[0] <= 10 and starts[-1] + sizes[-1] >= 489 and (np.diff(starts) >= 0).all()


def test_flat_image_stays_flat_at_any_scale():
    arr = np.full((123, 77, 3), (9, 130, 250), np.uint8)
    for size in [(1, 1), (20, 33), (300, 200)]:
        out = resample(arr, (0.0, 0.0, 77.0, 123.0), size)
        assert (out == np.array([9, 130, 250], np.uint8)).all()
