"""Every Numba kernel agrees with its plain NumPy reference on random inputs of many shapes."""

from __future__ import annotations

import numpy as np
import pytest

from imgtools import kernels as k

SHAPES = [(1, 1), (3, 5), (17, 31), (64, 48)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", list(k.ChannelLayout))
@pytest.mark.parametrize("background", [(255, 255, 255), (0, 0, 0), (12, 200, 99)])
def test_to_rgb_matches_numpy_reference(shape, layout, background):
    rng = np.random.default_rng(hash((shape, layout.value)) % 2**32)
    arr = rng.integers(0, 256, shape + (layout.channels,), dtype=np.uint8)
    if layout is k.ChannelLayout.GRAY:
        arr = arr[..., 0]
    got = k.to_rgb(arr, layout, background)
    assert got.dtype == np.uint8 and got.shape == shape + (3,)
    np.testing.assert_array_equal(got, k.to_rgb_ref(arr, layout, background))


def test_to_rgb_alpha_extremes_give_colour_or_background():
    rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0]]], np.uint8)
    out = k.to_rgb(rgba, k.ChannelLayout.RGBA, (200, 100, 50))
    assert out.tolist() == [[[10, 20, 30], [200, 100, 50]]]
    bgra = np.array([[[10, 20, 30, 255]]], np.uint8)
    assert k.to_rgb(bgra, k.ChannelLayout.BGRA).tolist() == [[[30, 20, 10]]]


@pytest.mark.parametrize("layout", [k.ChannelLayout.RGB, k.ChannelLayout.RGBA])
def test_to_rgb_rejects_wrong_channel_count_naming_shape(layout):
    with pytest.raises(ValueError, match=r"\(4, 4, 2\)"):
        k.to_rgb(np.zeros((4, 4, 2), np.uint8), layout)


@pytest.mark.parametrize("shape", [(7,), (5, 9), (33, 17), (2, 3, 4)])
def test_u16_to_u8_matches_reference_over_full_range(shape):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 65536, shape, dtype=np.uint16)
    np.testing.assert_array_equal(k.u16_to_u8(arr), k.u16_to_u8_ref(arr))


def test_u16_to_u8_scales_endpoints_without_clipping():
    arr = np.array([0, 128, 129, 257, 32768, 65535], np.uint16)
    assert k.u16_to_u8(arr).tolist() == [0, 0, 1, 1, 128, 255]
    every = np.arange(65536, dtype=np.uint16)
    np.testing.assert_array_equal(k.u16_to_u8(every), k.u16_to_u8_ref(every))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(9,), (13, 7), (4, 5, 3)])
def test_float_to_u8_matches_reference_with_clipping_and_nan(dtype, shape):
    rng = np.random.default_rng(1)
    arr = (rng.random(shape) * 1.6 - 0.3).astype(dtype)
    arr.flat[0] = np.nan
    np.testing.assert_array_equal(k.float_to_u8(arr), k.float_to_u8_ref(arr))


@pytest.mark.parametrize("shape", [(5, 4, 3), (2, 8, 6, 3), (1, 1, 3)])
@pytest.mark.parametrize("mean,std", [((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), (0.5, 0.5), (0.0, 1.0)])
def test_normalize_matches_reference(shape, mean, std):
    rng = np.random.default_rng(2)
    arr = rng.integers(0, 256, shape, dtype=np.uint8)
    got = k.normalize(arr, mean, std)
    assert got.dtype == np.float32 and got.shape == shape
    np.testing.assert_allclose(got, k.normalize_ref(arr, mean, std), rtol=1e-5, atol=1e-5)


def test_normalize_rejects_zero_std():
    with pytest.raises(ValueError, match="std"):
        k.normalize(np.zeros((2, 2, 3), np.uint8), 0.5, (1.0, 0.0, 1.0))


@pytest.mark.parametrize("shape", [(4, 5, 3), (2, 6, 7, 3), (1, 1, 1, 4)])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.int16])
def test_hwc_chw_round_trip_matches_numpy_transpose(shape, dtype):
    arr = np.random.default_rng(3).integers(0, 100, shape).astype(dtype)
    chw = k.hwc_to_chw(arr)
    axes = (2, 0, 1) if arr.ndim == 3 else (0, 3, 1, 2)
    np.testing.assert_array_equal(chw, np.transpose(arr, axes))
    assert chw.flags.c_contiguous
    np.testing.assert_array_equal(k.chw_to_hwc(chw), arr)
