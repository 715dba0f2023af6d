"""presize() end to end: layout, manifest <-> array rows, failures as rows, resume, refusals."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import zarr

import imgtools
from conftest import make_labelled, tree_bytes
from imgtools.config import PresizeConfig
from imgtools.engine import MANIFEST_COLUMNS
from imgtools.errors import DestinationError


def _open(dest):
    return zarr.open_group(str(dest), mode="r")


def test_presize_writes_the_documented_zarr_layout(labelled_dir, tmp_path):
    dest = tmp_path / "out.zarr"
    report = imgtools.presize(str(labelled_dir), str(dest), sizes=[16, "24x12"], mode="crop", workers=0,
                              config=None, progress=False)
    assert (report.total, report.ok, report.failed) == (80, 80, 0)
    g = _open(dest)
    assert g["16x16/images"].shape == (80, 16, 16, 3) and g["16x16/images"].dtype == np.uint8
    assert g["24x12/images"].shape == (80, 12, 24, 3)
    assert g["ok"].dtype == bool and g["ok"][:].all()
    assert g["labels"].dtype == np.int32
    attrs = g.attrs["imgtools"]
    assert attrs["label_names"] == ["class0", "class1", "class2", "class3"]
    assert PresizeConfig.from_dict(attrs["config"]).size_keys == ["16x16", "24x12"]
    manifest = pd.read_parquet(dest / "manifest.parquet")
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert list(manifest["index"]) == list(range(80))
    np.testing.assert_array_equal(g["labels"][:], manifest["label_id"].to_numpy())


def test_manifest_row_i_is_array_row_i(labelled_dir, tmp_path):
    truth = make_labelled(labelled_dir, per_class=20, classes=4)  # same files again: deterministic
    dest = tmp_path / "o"
    imgtools.presize(str(labelled_dir), str(dest), config=PresizeConfig.build(sizes=[8], mode="squash", chunk=7),
                     workers=0, progress=False)
    manifest = pd.read_parquet(dest / "manifest.parquet")
    assert list(manifest["relpath"]) == [rel for rel, _ in truth]
    images = _open(dest)["8x8/images"][:]
    for i in (0, 13, 41, 79):
        direct = imgtools.engine.process_image((labelled_dir / manifest["relpath"][i]).read_bytes(),
                                               PresizeConfig.build(sizes=[8], mode="squash"))
        np.testing.assert_array_equal(images[i], direct.arrays["8x8"])


def test_failed_images_are_rows_with_reasons_and_zero_pixels(labelled_dir, tmp_path):
    (labelled_dir / "class1" / "broken.jpg").write_bytes(b"not a jpeg")
    (labelled_dir / "class2" / "empty.png").write_bytes(b"")
    dest = tmp_path / "o"
    report = imgtools.presize(str(labelled_dir), str(dest), sizes=[8], workers=0, progress=False)
    assert (report.total, report.failed) == (82, 2)
    manifest = pd.read_parquet(dest / "manifest.parquet")
    bad = manifest[manifest["status"] == "failed"]
    assert sorted(bad["relpath"]) == ["class1/broken.jpg", "class2/empty.png"]
    assert bad["error"].str.len().min() > 5 and manifest[manifest["status"] == "ok"]["error"].isna().all()
    g = _open(dest)
    idx = bad["index"].to_numpy()
    assert not g["ok"][:][idx].any() and (g["8x8/images"][:][idx] == 0).all()
    assert (bad["height"] == -1).all() and bad["mode"].isna().all()
    assert list(bad["label"]) == ["class1", "class2"]


def test_dask_cluster_output_equals_in_process_output(labelled_dir, tmp_path, dask_client):
    cfg = PresizeConfig.build(sizes=[16, 32], mode="pad", chunk=16)
    a, b = tmp_path / "a", tmp_path / "b"
    imgtools.presize(str(labelled_dir), str(a), config=cfg, workers=0, progress=False)
    report = imgtools.presize(str(labelled_dir), str(b), config=cfg, client=dask_client, progress=False)
    assert report.chunks_done == 5
    fa, fb = tree_bytes(a), tree_bytes(b)
    fa.pop(".imgtools/job.json"), fb.pop(".imgtools/job.json")
    fa.pop("zarr.json"), fb.pop("zarr.json")  # the group attributes name the source
    assert fa.keys() == fb.keys() and all(fa[k] == fb[k] for k in fa)


def test_rerun_resumes_only_missing_chunks_and_gives_identical_output(labelled_dir, tmp_path):
    cfg = PresizeConfig.build(sizes=[16], mode="crop", chunk=16)
    dest = tmp_path / "o"
    imgtools.presize(str(labelled_dir), str(dest), config=cfg, workers=0, progress=False)
    before = tree_bytes(dest)
    (dest / ".imgtools/chunks/0000002.parquet").unlink()  # as if the run died while writing chunk 2
    (dest / "16x16/images/c/2/0/0/0").unlink()
    (dest / "manifest.parquet").unlink()
    report = imgtools.presize(str(labelled_dir), str(dest), config=cfg, workers=0, progress=False)
    assert (report.chunks_done, report.chunks_resumed) == (1, 4)
    assert tree_bytes(dest) == before


def test_changed_config_on_existing_dest_is_refused_naming_the_difference(labelled_dir, tmp_path):
    dest = tmp_path / "o"
    imgtools.presize(str(labelled_dir), str(dest), sizes=[16], workers=0, progress=False)
    with pytest.raises(DestinationError, match=r"sizes: \['16x16'\] there, \['32x32'\] now"):
        imgtools.presize(str(labelled_dir), str(dest), sizes=[32], workers=0, progress=False)
    report = imgtools.presize(str(labelled_dir), str(dest), sizes=[32], workers=0, progress=False, overwrite=True)
    assert report.chunks_resumed == 0
    assert _open(dest)["32x32/images"].shape[0] == 80 and not (dest / "16x16").exists()
    assert json.loads((dest / ".imgtools/job.json").read_text())["config"]["sizes"] == ["32x32"]


def test_non_imgtools_dest_is_never_written_or_deleted(labelled_dir, tmp_path):
    dest = tmp_path / "precious"
    dest.mkdir()
    (dest / "thesis.tex").write_text("years of work")
    for overwrite in (False, True):
        with pytest.raises(DestinationError, match="not written by imgtools"):
            imgtools.presize(str(labelled_dir), str(dest), workers=0, progress=False, overwrite=overwrite)
    assert [p.name for p in dest.iterdir()] == ["thesis.tex"]


def test_report_summarises_counts_and_speed(labelled_dir, tmp_path):
    report = imgtools.presize(str(labelled_dir), str(tmp_path / "o"), sizes=[8], workers=0, progress=False)
    text = str(report)
    assert "80 images: 80 ok, 0 failed" in text and "images/s" in text and report.images_per_second > 0


def test_errors_keep_their_type_when_a_default_client_exists(labelled_dir, tmp_path, dask_client):
    from distributed import default_client

    assert default_client() is dask_client
    dest = tmp_path / "o"
    imgtools.presize(str(labelled_dir), str(dest), sizes=[8], progress=False)
    with pytest.raises(DestinationError, match="holds another job"):
        imgtools.presize(str(labelled_dir), str(dest), sizes=[16], progress=False)
    assert not (dest / ".imgtools" / "lock.json").exists()
