"""derive: smaller sizes from a stored size, close to a direct presize, on zarr and npy."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import zarr

import imgtools
from conftest import psnr
from imgtools.config import PresizeConfig
from imgtools.derive import derive, resample_block
from imgtools.errors import ConfigError


@pytest.fixture(scope="module")
def photos_csv(photo_dir, tmp_path_factory):
    files = sorted(photo_dir.iterdir())  # 40 real photographs (see conftest.photo_dir)
    path = tmp_path_factory.mktemp("derive") / "photos.csv"
    pd.DataFrame({"path": [str(f) for f in files]}).to_csv(path, index=False)
    return path


def _arrays(dest, fmt, key):
    if fmt == "zarr":
        return zarr.open_group(str(dest), mode="r")[f"{key}/images"][:]
    return np.concatenate([np.load(p) for p in sorted((dest / key).glob("part-*.npy"))])


@pytest.mark.parametrize("fmt", ["zarr", "npy"])
@pytest.mark.parametrize("mode", ["crop", "squash"])
def test_derived_sizes_are_close_to_a_direct_presize(photos_csv, tmp_path, fmt, mode):
    cfg = PresizeConfig.build(sizes=[160], mode=mode, format=fmt, chunk=16)
    dest = tmp_path / "o"
    imgtools.presize(str(photos_csv), str(dest), config=cfg, workers=0, progress=False)
    report = derive(str(dest), "160x160", [80, 40], workers=0)
    assert report.sizes == ("80x80", "40x40") and report.images == 40 and "images/s" in str(report)
    for side in (80, 40):
        direct = tmp_path / f"direct{side}"
        imgtools.presize(str(photos_csv), str(direct), config=PresizeConfig.build(sizes=[side], mode=mode, format=fmt),
                         workers=0, progress=False)
        got, want = _arrays(dest, fmt, f"{side}x{side}"), _arrays(direct, fmt, f"{side}x{side}")
        assert got.shape == want.shape == (40, side, side, 3)
        scores = [psnr(a, b) for a, b in zip(got, want)]
        assert np.median(scores) > 30 and min(scores) > 24, (side, np.median(scores), min(scores))


def test_derive_records_sizes_and_runs_on_a_cluster(labelled_dir, tmp_path, dask_client):
    dest = tmp_path / "o"
    imgtools.presize(str(labelled_dir), str(dest), config=PresizeConfig.build(sizes=["64x32"], chunk=16), workers=0,
                     progress=False)
    derive(str(dest), "64x32", ["32x16"], client=dask_client)
    info = zarr.open_group(str(dest), mode="r").attrs["imgtools"]
    assert info["sizes"] == ["64x32", "32x16"] and info["derived"]["32x16"]["from"] == "64x32"
    assert zarr.open_group(str(dest), mode="r")["32x16/images"].chunks == (16, 16, 32, 3)


@pytest.mark.parametrize("source,sizes,match", [("64x64", [32], "is not in"), ("64x32", [128], "not smaller"),
                                                ("64x32", [16], "aspect ratio"), ("64x32", ["64x32"], "already")])
def test_derive_refuses_bad_requests_naming_them(labelled_dir, tmp_path, source, sizes, match):
    dest = tmp_path / "o"
    imgtools.presize(str(labelled_dir), str(dest), sizes=["64x32"], workers=0, progress=False)
    with pytest.raises(ConfigError, match=match):
        derive(str(dest), source, sizes, workers=0)


def test_derive_cli_prints_speed_and_bad_dest_exits_2(labelled_dir, tmp_path, cli_env):
    dest = tmp_path / "o"
    imgtools.presize(str(labelled_dir), str(dest), sizes=[32], format="npy", workers=0, progress=False)
    cmd = [sys.executable, "-m", "imgtools.cli", "derive"]
    ok = subprocess.run(cmd + [str(dest), "--from", "32x32", "--size", "16", "--workers", "0"], capture_output=True,
                        text=True, env=cli_env)
    assert ok.returncode == 0 and "derived 16x16 from 32x32 for 80 images" in ok.stdout, ok.stderr
    bad = subprocess.run(cmd + [str(tmp_path), "--from", "32x32", "--size", "16"], capture_output=True, text=True,
                         env=cli_env)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "not a complete zarr or npy output" in bad.stderr


def test_resample_block_keeps_flat_images_flat_and_hits_the_target_shape():
    block = np.full((3, 50, 70, 3), 77.0, np.float32)
    out = resample_block(block, 20, 28)
    assert out.shape == (3, 20, 28, 3) and (out == 77).all()


def test_rerunning_presize_keeps_the_derived_sizes_listed(labelled_dir, tmp_path):
    dest = tmp_path / "o"
    imgtools.presize(str(labelled_dir), str(dest), sizes=[32], workers=0, progress=False)
    derive(str(dest), "32x32", [16], workers=0)
    imgtools.presize(str(labelled_dir), str(dest), sizes=[32], workers=0, progress=False)
    assert zarr.open_group(str(dest), mode="r").attrs["imgtools"]["sizes"] == ["32x32", "16x16"]


def test_derive_on_an_image_file_output_exits_2(labelled_dir, tmp_path, cli_env):
    imgtools.presize(str(labelled_dir), str(tmp_path / "o"), sizes=[32], format="png", workers=0, progress=False)
    proc = subprocess.run([sys.executable, "-m", "imgtools.cli", "derive", str(tmp_path / "o"), "--from", "32x32",
                           "--size", "16", "--workers", "0"], capture_output=True, text=True, env=cli_env)
    assert proc.returncode == 2 and "not a complete zarr or npy output" in proc.stderr, proc.stderr
