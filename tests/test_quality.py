"""On real photos (``photo_dir``: scikit-image's bundled photographs as JPEGs): order and content of every row,
and PSNR against a full-resolution LANCZOS reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr
from PIL import Image, ImageOps

import imgtools
from conftest import PHOTO_SOURCES, psnr
from imgtools.config import PresizeConfig


@pytest.fixture(scope="module")
def photos(photo_dir, tmp_path_factory):
    files = sorted(photo_dir.iterdir())
    manifest = tmp_path_factory.mktemp("photos") / "photos.csv"
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


def test_every_photo_is_ok_in_sorted_order(photo_dir, tmp_path, dask_client):
    dest = tmp_path / "all"
    # chunks of 16: the 40 photos make three chunks, so the two workers share them and the order is put back
    cfg = PresizeConfig.build(sizes=[32], labels="none", chunk=16)
    report = imgtools.presize(str(photo_dir), str(dest), config=cfg, client=dask_client, progress=False)
    assert (report.total, report.ok) == (40, 40)
    m = pd.read_parquet(dest / "manifest.parquet")
    assert list(m["relpath"]) == sorted(p.name for p in photo_dir.iterdir())
    assert (m["mode"].isin(["RGB", "L"])).all() and (m["mode"] == "L").sum() == len(PHOTO_SOURCES["grey"]) == 4
    g = zarr.open_group(str(dest), mode="r")
    for i in (0, 2, 19, 39):  # 2: astronaut_portrait.jpg, stored turned (EXIF orientation 6)
        ref = np.asarray(ImageOps.fit(ImageOps.exif_transpose(Image.open(photo_dir / m["relpath"][i])).convert("RGB"),
                                      (32, 32), Image.Resampling.LANCZOS))
        assert psnr(g["32x32/images"][i], ref) > 30
