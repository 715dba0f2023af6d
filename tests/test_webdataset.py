"""``--format webdataset``: tar shards the ``webdataset`` package reads as they are, one per chunk and size,
keyed by manifest index; the same bytes on every run and after a shard is rewritten; imgtools.open reads the
pixels the package decodes; failed inputs stay in the manifest only; bad options exit 2 writing nothing."""

from __future__ import annotations

import gc
import json
import tarfile
import warnings

import numpy as np
import pandas as pd
import pytest
import webdataset as wds
from PIL import Image

import imgtools
from conftest import encode, gradient, tree_bytes
from imgtools.cli import main
from imgtools.config import PresizeConfig
from imgtools.engine import process_image
from imgtools.errors import ConfigError

SIZES = ["16x16", "24x20"]


@pytest.fixture
def wds_source(labelled_dir):
    """The 80 labelled images and one corrupt file (a failed row)."""
    (labelled_dir / "class1" / "corrupt.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return labelled_dir


def _presize(source, dest, **options):
    cfg = PresizeConfig.build(sizes=[16, "24x20"], format="webdataset", chunk=16, **options)
    return imgtools.presize(str(source), str(dest), config=cfg, workers=0, progress=False)


def _read(urls, decode: str | None = "rgb8") -> list[dict]:
    """Every sample of ``urls`` as ``wds.WebDataset`` gives them."""
    dataset = wds.WebDataset(urls, shardshuffle=False)
    with warnings.catch_warnings():  # webdataset leaves the last shard's file to the collector (webdataset#311)
        warnings.simplefilter("ignore", ResourceWarning)
        samples = list(dataset.decode(decode) if decode else dataset)
        gc.collect()
    return samples


def _samples(dest, size: str) -> list[dict]:
    return _read(sorted(str(p) for p in (dest / size).glob("shard-*.tar")))


@pytest.mark.parametrize("image", ["jpg", "png", "webp"])
def test_the_webdataset_package_reads_every_ok_image_as_imgtools_open_does(wds_source, tmp_path, image):
    dest = tmp_path / "o"
    report = _presize(wds_source, dest, shard_image=image)
    assert (report.total, report.failed) == (81, 1)
    m = pd.read_parquet(dest / "manifest.parquet")
    ok = np.flatnonzero(m["status"] == "ok")
    ds = imgtools.open(str(dest))
    assert ds.sizes == SIZES and len(ds) == 80
    for size in SIZES:
        samples = _samples(dest, size)
        keys = [s["__key__"] for s in samples]
        assert keys == [f"{i:09d}" for i in ok]  # unique, in index order, no dot and no slash
        for s in samples:
            i = int(s["__key__"])
            meta = s["json"]
            assert (meta["index"], meta["relpath"], meta["origin"], meta["label"]) == (
                i, m["relpath"][i], m["origin"][i], m["label"][i])
            assert (meta["height"], meta["width"]) == (m["height"][i], m["width"][i])
            assert s["cls"] == m["label_id"][i] == ds.labels[i]
            np.testing.assert_array_equal(s[image], ds.image(i, size))
        if image == "png":  # lossless: the very pixels of the resize
            i = int(ok[5])
            direct = process_image((wds_source / m["relpath"][i]).read_bytes(), ds.config)
            np.testing.assert_array_equal(ds.image(i, size), direct.arrays[size])
    corrupt = int(np.flatnonzero(m["relpath"] == "class1/corrupt.jpg")[0])
    assert m["status"][corrupt] == "failed" and ds.image(corrupt) is None
    x, y = next(ds.batches("24x20", batch_size=80, shuffle=False))
    assert x.shape == (80, 20, 24, 3) and y.tolist() == m["label_id"][ok].tolist()


def test_shards_are_one_per_chunk_with_fixed_headers_and_their_urls_in_the_attributes(wds_source, tmp_path):
    dest = tmp_path / "o"
    _presize(wds_source, dest)
    shards = sorted(p.name for p in (dest / "16x16").iterdir())
    assert shards == [f"shard-{k:06d}.tar" for k in range(6)]  # 81 inputs, 16 a shard
    with tarfile.open(dest / "16x16" / "shard-000002.tar") as tar:
        members = tar.getmembers()
    names = [t.name for t in members]
    assert names == sorted(names) and len(names) == 3 * 16
    assert {(t.mtime, t.uid, t.gid, t.uname, t.gname, t.mode) for t in members} == {(0, 0, 0, "", "", 0o444)}
    attrs = json.loads((dest / "imgtools.json").read_text())["webdataset"]
    assert attrs == {"shards": 6, "image": "jpg", "urls": {s: f"{s}/shard-{{000000..000005}}.tar" for s in SIZES}}
    expanded = _read(str(dest / attrs["urls"]["16x16"]), decode=None)
    assert len(expanded) == 80


def test_a_rerun_rewrites_only_a_deleted_shard_with_the_same_bytes(wds_source, tmp_path):
    dest = tmp_path / "o"
    _presize(wds_source, dest)
    before = tree_bytes(dest)
    stamps = {p: p.stat().st_mtime_ns for p in dest.glob("*/shard-*.tar")}
    (dest / "24x20" / "shard-000003.tar").unlink()
    report = _presize(wds_source, dest)
    assert (report.chunks_done, report.chunks_resumed, report.processed) == (1, 5, 16)
    assert tree_bytes(dest) == before
    changed = {p.relative_to(dest).as_posix() for p, t in stamps.items() if p.stat().st_mtime_ns != t}
    assert changed == {"16x16/shard-000003.tar", "24x20/shard-000003.tar"}  # the chunk is redone at every size


def test_a_local_cluster_writes_the_same_shards_as_one_process(wds_source, tmp_path, dask_client):
    _presize(wds_source, tmp_path / "one")
    cfg = PresizeConfig.build(sizes=[16, "24x20"], format="webdataset", chunk=16)
    imgtools.presize(str(wds_source), str(tmp_path / "many"), config=cfg, client=dask_client, progress=False)
    assert tree_bytes(tmp_path / "many") == tree_bytes(tmp_path / "one")


def test_variable_sizes_go_into_shards(labelled_dir, tmp_path):
    cfg = PresizeConfig.build(sizes=[40], mode="shortest", format="webdataset", shard_image="png")
    imgtools.presize(str(labelled_dir), str(tmp_path / "o"), config=cfg, workers=0, progress=False)
    assert cfg.chunk == 1024 and len(list((tmp_path / "o" / "short40").iterdir())) == 1
    samples = _samples(tmp_path / "o", "short40")
    assert len(samples) == 80 and {min(s["png"].shape[:2]) for s in samples} == {40}


def test_an_unchanged_image_is_the_source_file_itself(tmp_path):
    (tmp_path / "src" / "a").mkdir(parents=True)
    jpeg = encode(Image.fromarray(gradient(16, 16)), "JPEG", quality=70)
    (tmp_path / "src" / "a" / "x.jpg").write_bytes(jpeg)
    cfg = PresizeConfig.build(sizes=[16], format="webdataset")
    imgtools.presize(str(tmp_path / "src"), str(tmp_path / "o"), config=cfg, workers=0, progress=False)
    with tarfile.open(tmp_path / "o" / "16x16" / "shard-000000.tar") as tar:
        assert tar.extractfile("000000000.jpg").read() == jpeg


@pytest.mark.torch
def test_a_torch_dataloader_reads_the_shards_in_two_workers(wds_source, tmp_path):
    from torch.utils.data import DataLoader

    dest = tmp_path / "o"
    _presize(wds_source, dest)
    urls = sorted(str(p) for p in (dest / "16x16").glob("*.tar"))
    pipeline = wds.WebDataset(urls, shardshuffle=False).decode("torchrgb").to_tuple("jpg", "cls")
    batches = list(DataLoader(pipeline, batch_size=8, num_workers=2))
    labels = sorted(int(y) for _, ys in batches for y in ys)
    assert {tuple(x.shape[1:]) for x, _ in batches} == {(3, 16, 16)}
    m = pd.read_parquet(dest / "manifest.parquet")
    assert labels == sorted(m["label_id"][m["status"] == "ok"].tolist())


def test_show_draws_a_webdataset_output_and_derive_refuses_it(wds_source, tmp_path, capsys):
    dest = tmp_path / "o"
    _presize(wds_source, dest)
    assert main(["show", str(dest), "--n", "9", "--out", str(tmp_path / "sheet.png")]) == 0
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.width > 3 * 96  # three thumbnails a row, the failed input listed beside
    capsys.readouterr()
    assert main(["derive", str(dest), "--from", "16x16", "--size", "8", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a complete zarr or npy output" in err


def test_dry_run_estimates_shards(labelled_dir, tmp_path):
    plan = imgtools.dry_run(str(labelled_dir), str(tmp_path / "o"), config=PresizeConfig.build(
        sizes=[64], format="webdataset"))
    assert (plan.chunks, plan.chunk, plan.estimated) == (1, 1024, True) and not (tmp_path / "o").exists()


@pytest.mark.parametrize("args,names", [
    (["--format", "webdataset", "--shard-image", "gif"], "--shard-image"),
    (["--format", "png", "--shard-image", "png"], "shard_image 'png' is for --format webdataset only"),
    (["--format", "webdataset", "--masks", "MASKS"], "masks are not written into webdataset shards"),
])
def test_a_bad_option_exits_2_naming_it_and_writes_nothing(labelled_dir, tmp_path, capsys, args, names):
    dest = tmp_path / "o"
    argv = ["presize", str(labelled_dir), str(dest), "--workers", "0", "--quiet"]
    argv += [str(labelled_dir) if a == "MASKS" else a for a in args]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refuses a choice itself
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and names in err, err
    assert not dest.exists()


def test_rgba_is_refused_in_jpg_shards():
    with pytest.raises(ConfigError, match="--shard-image png|webp"):
        PresizeConfig.build(format="webdataset", channels=4)
    assert PresizeConfig.build(format="webdataset", channels=4, shard_image="webp").image_format.value == "webp"


@pytest.mark.parametrize("channels,decode", [(1, "l8"), (4, "rgba8")])
def test_gray_and_alpha_go_into_png_shards_as_they_are_read_back(tmp_path, channels, decode):
    (tmp_path / "src" / "a").mkdir(parents=True)
    rgba = np.dstack([gradient(40, 30, seed=1), np.tile(np.arange(0, 240, 6, dtype=np.uint8), (30, 1))])
    (tmp_path / "src" / "a" / "x.png").write_bytes(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    cfg = PresizeConfig.build(sizes=[16], format="webdataset", channels=channels, shard_image="png")
    imgtools.presize(str(tmp_path / "src"), str(tmp_path / "o"), config=cfg, workers=0, progress=False)
    (sample,) = _read(str(tmp_path / "o" / "16x16" / "shard-000000.tar"), decode=decode)
    mine = imgtools.open(str(tmp_path / "o")).image(0)
    assert mine.shape == (16, 16, channels)
    np.testing.assert_array_equal(sample["png"].reshape(mine.shape), mine)
    if channels == 4:
        assert mine[..., 3].min() < 100 < mine[..., 3].max()  # the alpha kept
