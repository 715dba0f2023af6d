"""Outputs as the ecosystem's readers expect them: xarray opens a zarr output's root group and each size
group with named dimensions, also after `derive` added sizes."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import zarr

import imgtools
from imgtools.derive import derive


@pytest.fixture
def zarr_output(labelled_dir, tmp_path):
    (labelled_dir / "class1" / "broken.png").write_bytes(b"nope")
    dest = str(tmp_path / "out.zarr")
    cfg = imgtools.PresizeConfig.build(sizes=[32, "24x16"], mode="crop", chunk=16)
    imgtools.presize(str(labelled_dir), dest, config=cfg, workers=0, progress=False)
    return dest


def test_xarray_opens_the_root_and_size_groups_with_named_dimensions(zarr_output):
    root = xr.open_zarr(zarr_output)
    assert root["ok"].dims == ("image",) and root["labels"].dims == ("image",)
    assert int(root["ok"].sum()) == 80 and root.sizes["image"] == 81
    images = xr.open_zarr(zarr_output, group="24x16")["images"]
    assert images.dims == ("image", "y", "x", "channel") and images.shape == (81, 16, 24, 3)
    np.testing.assert_array_equal(images[5].values, zarr.open_group(zarr_output, mode="r")["24x16/images"][5])
    assert root.attrs["imgtools"]["sizes"] == ["32x32", "24x16"]


def test_sizes_added_by_derive_open_in_xarray_too(zarr_output):
    derive(zarr_output, "32x32", [16], workers=0)
    small = xr.open_zarr(zarr_output, group="16x16")["images"]
    assert small.dims == ("image", "y", "x", "channel") and small.shape == (81, 16, 16, 3)
    assert xr.open_zarr(zarr_output).attrs["imgtools"]["sizes"] == ["32x32", "24x16", "16x16"]
