"""On real photos: order and content of every row, and PSNR against a full-resolution LANCZOS reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr
from PIL import Image, ImageOps

import imgtools
from conftest import psnr
from imgtools.config import PresizeConfig

SUBSET = 120  # every 8th of the 1000 photos keeps this test to seconds


@pytest.fixture(scope="module")
def photos(imagenet, tmp_path_factory):
    files = sorted(imagenet.iterdir())[::8][:SUBSET]
    manifest = tmp_path_factory.mktemp("photos") / "subset.csv"
    pd.DataFrame({"path": [str(f) for f in files]}).to_csv(manifest, index=False)
    return manifest, files


def _reference(path, size):
    img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    return np.asarray(img.resize(size, Image.Resampling.LANCZOS))


@pytest.mark.parametrize("sizes", [[64], [224], [64, 224]], ids=["64", "224", "64+224"])
def test_squash_psnr_against_full_resolution_lanczos_meets_the_floor(photos, tmp_path, sizes):
    manifest, files = photos
    dest = tmp_path / "o"
    report = imgtools.presize(str(manifest), str(dest), sizes=sizes, mode="squash", workers=0, progress=False)
    assert report.failed == 0
    g = zarr.open_group(str(dest), mode="r")
    m = pd.read_parquet(dest / "manifest.parquet")
    assert [o.rsplit("/", 1)[1] for o in m["origin"]] == [f.name for f in files]
    for s in sizes:
        arr = g[f"{s}x{s}/images"][:]
        scores = np.array([psnr(arr[i], _reference(f, (s, s))) for i, f in enumerate(files)])
        assert np.median(scores) >= 35, (s, np.median(scores))
        assert np.percentile(scores, 1) >= 30, (s, np.percentile(scores, 1))
        assert scores.min() >= 25, (s, files[int(scores.argmin())].name)


def test_every_imagenet_photo_is_ok_in_sorted_order(imagenet, tmp_path, dask_client):
    dest = tmp_path / "all"
    report = imgtools.presize(str(imagenet), str(dest), config=PresizeConfig.build(sizes=[32], labels="none"),
                              client=dask_client, progress=False)
    assert (report.total, report.ok) == (1000, 1000)
    m = pd.read_parquet(dest / "manifest.parquet")
    assert list(m["relpath"]) == sorted(p.name for p in imagenet.iterdir())
    assert (m["mode"].isin(["RGB", "L"])).all() and (m["mode"] == "L").sum() == 23
    g = zarr.open_group(str(dest), mode="r")
    for i in (0, 499, 999):
        ref = np.asarray(ImageOps.fit(ImageOps.exif_transpose(Image.open(imagenet / m["relpath"][i])).convert("RGB"),
                                      (32, 32), Image.Resampling.LANCZOS))
        assert psnr(g["32x32/images"][i], ref) > 30
