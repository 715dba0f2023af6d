"""presize --append: new inputs become rows at the end of every array and of the manifest, DEST's rows and
their data stay byte for byte, changed or vanished inputs and another config are refused in one line, and an
append killed part-way resumes to the same bytes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from PIL import Image

import imgtools
from conftest import encode, gradient, make_labelled, read_back, tree_bytes
from imgtools.config import PresizeConfig
from imgtools.derive import derive
from imgtools.engine import process_image
from imgtools.errors import ConfigError

IMGTOOLS = [sys.executable, "-m", "imgtools.cli"]
FORMATS = ["zarr", "npy", "png"]
#: 30 inputs in chunks of 8: the last chunk (rows 24-29) is partial, so an append fills it
CHUNK = 8


def cli(*args, timeout=300):
    return subprocess.run(IMGTOOLS + [str(a) for a in args], capture_output=True, text=True, timeout=timeout)


def presize(src, dest, fmt, **kw):
    cfg = PresizeConfig.build(sizes=[16, "12x10"], format=fmt, chunk=CHUNK)
    return imgtools.presize(str(src), str(dest), config=cfg, workers=0, progress=False, **kw)


def png(color, size=(40, 30)) -> bytes:
    return encode(Image.new("RGB", size, color), "PNG")


@pytest.fixture
def src(tmp_path):
    root = tmp_path / "src"
    make_labelled(root, per_class=10, classes=3)
    return root


def add_inputs(src) -> list[str]:
    """A new label folder that sorts before the others, a corrupt file, and a file of a known label that sorts
    among DEST's rows; returns their relpaths in listing order."""
    (src / "aardvark").mkdir()
    (src / "aardvark" / "a.png").write_bytes(png((10, 200, 30)))
    (src / "aardvark" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (src / "class1" / "img004b.png").write_bytes(png((200, 0, 30), (33, 51)))
    return ["aardvark/a.png", "aardvark/broken.jpg", "class1/img004b.png"]


def stored_chunks(dest, fmt) -> dict[str, bytes]:
    """The files that hold DEST's data, by relative path (no manifest, attributes, metadata or ledger)."""
    files = tree_bytes(dest)
    if fmt == "zarr":
        return {k: v for k, v in files.items() if "/c/" in k or k.startswith(("ok/c", "labels/c"))}
    if fmt == "npy":
        return {k: v for k, v in files.items() if "/part-" in k}
    return {k: v for k, v in files.items() if k.startswith(("16x16/", "12x10/"))}


@pytest.mark.parametrize("fmt", FORMATS)
def test_append_adds_new_inputs_after_the_rows_of_dest_which_stay_byte_for_byte(src, tmp_path, fmt):
    dest = tmp_path / "out"
    presize(src, dest, fmt)
    before_manifest = pd.read_parquet(dest / "manifest.parquet")
    before_chunks = stored_chunks(dest, fmt)
    before_pixels = {key: read_back(dest, fmt, key) for key in ("16x16", "12x10")}
    added = add_inputs(src)

    report = presize(src, dest, fmt, append=True)

    assert (report.total, report.appended, report.processed, report.failed) == (33, 3, 3, 1)
    m = pd.read_parquet(dest / "manifest.parquet")
    pd.testing.assert_frame_equal(m.iloc[:30], before_manifest)  # DEST's rows as they were
    assert m["relpath"].iloc[30:].tolist() == added and m["index"].tolist() == list(range(33))
    assert m["status"].iloc[30:].tolist() == ["ok", "failed", "ok"]
    after_chunks = stored_chunks(dest, fmt)
    rewritten = {k for k in before_chunks if after_chunks[k] != before_chunks[k]}
    if fmt == "png":
        assert not rewritten  # one file per input: nothing of DEST's is written again
    else:  # only the partial last chunk (3) takes the new rows; the full ones are left byte for byte
        assert rewritten and all(("part-00003" in k) if fmt == "npy" else k.endswith("/3") or "/c/3/" in k
                                 for k in rewritten), rewritten
    for key in ("16x16", "12x10"):
        pixels = read_back(dest, fmt, key)
        for i in range(30):
            if before_pixels[key][i] is None:
                assert pixels[i] is None
            else:
                np.testing.assert_array_equal(pixels[i], before_pixels[key][i])
        for i, rel in zip(range(30, 33), added):
            direct = process_image((src / rel).read_bytes(), PresizeConfig.build(sizes=[16, "12x10"], format=fmt))
            if direct.ok:
                np.testing.assert_array_equal(pixels[i], direct.arrays[key])
            else:
                assert pixels[i] is None


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_new_label_folder_extends_the_label_names_and_the_old_ids_stay(src, tmp_path, fmt):
    dest = tmp_path / "out"
    presize(src, dest, fmt)
    old_ids = pd.read_parquet(dest / "manifest.parquet")["label_id"].tolist()
    add_inputs(src)
    presize(src, dest, fmt, append=True)
    ds = imgtools.open(str(dest))
    assert ds.label_names == ["class0", "class1", "class2", "aardvark"]  # not re-sorted: ids 0-2 keep their meaning
    assert ds.labels[:30].tolist() == old_ids and ds.labels[30:].tolist() == [3, 3, 1]
    if fmt == "npy":
        assert np.load(dest / "labels.npy").tolist() == ds.labels.tolist()
    elif fmt == "zarr":
        assert zarr.open_group(str(dest), mode="r")["labels"][:].tolist() == ds.labels.tolist()


@pytest.mark.parametrize("fmt", FORMATS)
def test_readers_see_every_row_after_an_append(src, tmp_path, fmt):
    dest = tmp_path / "out"
    presize(src, dest, fmt)
    add_inputs(src)
    presize(src, dest, fmt, append=True)
    ds = imgtools.open(str(dest))
    assert len(ds.manifest) == 33 and len(ds) == 32  # ok rows: the broken file is left out
    image, label = ds[len(ds) - 1]  # the last ok row is the appended class1 image
    assert label == 1 and image.shape == (16, 16, 3)
    np.testing.assert_array_equal(image, ds.image(32))
    assert ds.image(30, "12x10").shape == (10, 12, 3)
    if fmt == "zarr":
        root = xr.open_zarr(str(dest))  # the consolidated metadata was made anew
        assert root.sizes["image"] == 33 and int(root["ok"].sum()) == 32
        assert xr.open_zarr(str(dest), group="16x16")["images"].shape == (33, 16, 16, 3)


@pytest.mark.parametrize("fmt", ["zarr", "npy"])
def test_appending_inputs_that_sort_after_equals_a_fresh_presize_of_them_all(tmp_path, fmt):
    full = tmp_path / "full"
    make_labelled(full, per_class=7, classes=3)
    src = tmp_path / "src"
    shutil.copytree(full / "class0", src / "class0")
    shutil.copytree(full / "class1", src / "class1")
    dest = tmp_path / "appended"
    presize(src, dest, fmt)
    shutil.copytree(full / "class2", src / "class2")  # sorts after every row of DEST
    presize(src, dest, fmt, append=True)
    presize(src, tmp_path / "fresh", fmt)
    assert tree_bytes(dest) == tree_bytes(tmp_path / "fresh")


def test_append_to_a_dest_that_does_not_exist_is_a_normal_run(src, tmp_path):
    report = presize(src, tmp_path / "new", "zarr", append=True)
    assert (report.total, report.processed, report.appended) == (30, 30, None)
    presize(src, tmp_path / "plain", "zarr")
    assert tree_bytes(tmp_path / "new") == tree_bytes(tmp_path / "plain")


def test_nothing_new_is_a_no_op_that_says_so(src, tmp_path):
    dest = tmp_path / "out"
    presize(src, dest, "zarr")
    before = tree_bytes(dest, dirs=True)
    proc = cli("presize", src, dest, "--size", "16", "--size", "12x10", "--chunk", CHUNK, "--append", "--workers", "0",
               "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"nothing new to append: 30 images in {dest} already"
    assert tree_bytes(dest, dirs=True) == before


def test_a_changed_input_is_refused_in_one_line_and_kept_as_it_was_with_allow_changed(src, tmp_path):
    dest = tmp_path / "out"
    presize(src, dest, "zarr")
    before = tree_bytes(dest, dirs=True)
    (src / "class2" / "img001.png").write_bytes(png((1, 2, 3), (90, 70)))  # another length
    (src / "new.png").write_bytes(png((9, 9, 9)))
    args = ["presize", src, dest, "--size", "16", "--size", "12x10", "--chunk", CHUNK, "--append", "--workers", "0",
            "--quiet"]
    proc = cli(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgtools: error: --append: 1 inputs changed and 0 vanished")
    assert "class2/img001.png" in lines[0] and "bytes then" in lines[0] and "--allow-changed" in lines[0]
    assert tree_bytes(dest, dirs=True) == before  # nothing written

    old_row = pd.read_parquet(dest / "manifest.parquet").iloc[21]
    proc = cli(*args, "--allow-changed")
    assert proc.returncode == 0, proc.stderr
    assert "1 appended; 1 changed and 0 vanished inputs kept as they were" in proc.stdout
    warning = proc.stderr.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith("imgtools: warning: 1 inputs changed and 0 vanished")
    m = pd.read_parquet(dest / "manifest.parquet")
    pd.testing.assert_series_equal(m.iloc[21], old_row)  # the old row as it was: not decoded again
    assert m["relpath"].tolist()[-1] == "new.png" and len(m) == 31


def test_a_vanished_input_is_reported_and_its_row_stays(src, tmp_path):
    dest = tmp_path / "out"
    presize(src, dest, "npy")
    (src / "class0" / "img003.jpg").unlink()
    (src / "zz.png").write_bytes(png((9, 9, 9)))
    with pytest.raises(ConfigError, match=r"0 inputs changed and 1 vanished .*class0/img003.jpg', no longer listed"):
        presize(src, dest, "npy", append=True)
    report = presize(src, dest, "npy", append=True, allow_changed=True)
    assert report.vanished == ((src / "class0" / "img003.jpg").as_uri(),) and report.changed == ()
    assert report.appended == 1 and report.total == 31
    m = pd.read_parquet(dest / "manifest.parquet")
    assert m["relpath"].iloc[3] == "class0/img003.jpg" and m["status"].iloc[3] == "ok"


def test_a_manifest_source_whose_label_changed_is_refused(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(5):
        (folder / f"{i}.png").write_bytes(png((i * 40, 0, 0)))
    listing = tmp_path / "list.csv"
    pd.DataFrame({"path": [f"imgs/{i}.png" for i in range(4)], "label": ["a", "b", "a", "b"]}).to_csv(listing,
                                                                                                      index=False)
    dest = tmp_path / "out"
    imgtools.presize(str(listing), str(dest), sizes=[8], workers=0, progress=False)
    pd.DataFrame({"path": [f"imgs/{i}.png" for i in range(5)],
                  "label": ["a", "b", "a", "a", "c"]}).to_csv(listing, index=False)
    with pytest.raises(ConfigError, match=r"1 inputs changed .*imgs/3.png', label 'b' then, 'a' now"):
        imgtools.presize(str(listing), str(dest), sizes=[8], workers=0, progress=False, append=True)
    report = imgtools.presize(str(listing), str(dest), sizes=[8], workers=0, progress=False, append=True,
                              allow_changed=True)
    assert report.appended == 1
    ds = imgtools.open(str(dest))
    assert ds.label_names == ["a", "b", "c"] and ds.labels.tolist() == [0, 1, 0, 1, 2]


@pytest.mark.parametrize("args,field", [
    (["--size", "32"], "sizes"),
    (["--size", "16", "--size", "12x10", "--format", "npy"], "format"),
    (["--size", "16", "--size", "12x10", "--mode", "pad"], "mode"),
    (["--size", "16", "--size", "12x10", "--quality", "50"], "quality"),
])
def test_another_config_exits_2_naming_the_setting(src, tmp_path, args, field):
    dest = tmp_path / "out"
    presize(src, dest, "zarr")
    (src / "new.png").write_bytes(png((9, 9, 9)))
    before = tree_bytes(dest, dirs=True)
    proc = cli("presize", src, dest, "--chunk", CHUNK, *args, "--append", "--workers", "0", "--quiet")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"imgtools: error: --append: DEST {str(dest)!r} was written "
                                                   f"with {field} "), proc.stderr
    assert tree_bytes(dest, dirs=True) == before


@pytest.mark.parametrize("args,message", [
    (["--append", "--overwrite"], "--overwrite deletes them"),
    (["--allow-changed"], "--allow-changed goes with --append"),
    (["--append", "--dry-run"], "--dry-run does not plan an --append"),
])
def test_options_that_do_not_go_with_append_exit_2(src, tmp_path, args, message):
    proc = cli("presize", src, tmp_path / "out", *args, "--workers", "0", "--quiet")
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_webdataset_dest_is_refused_in_one_line(src, tmp_path):
    dest = tmp_path / "shards"
    args = ["--size", "16", "--format", "webdataset", "--chunk", CHUNK, "--workers", "0", "--quiet"]
    assert cli("presize", src, dest, *args).returncode == 0
    (src / "new.png").write_bytes(png((9, 9, 9)))
    before = tree_bytes(dest, dirs=True)
    proc = cli("presize", src, dest, *args, "--append")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "--append does not extend webdataset outputs yet" in proc.stderr
    assert tree_bytes(dest, dirs=True) == before


def test_derived_sizes_are_refused_naming_them(src, tmp_path):
    dest = tmp_path / "out"
    presize(src, dest, "zarr")
    derive(str(dest), "16x16", [8], workers=0)
    (src / "new.png").write_bytes(png((9, 9, 9)))
    with pytest.raises(ConfigError, match=r"sizes made by imgtools derive \(8x8\)"):
        presize(src, dest, "zarr", append=True)


def test_an_append_runs_on_a_dask_cluster(src, tmp_path, dask_client):
    dest = tmp_path / "out"
    cfg = PresizeConfig.build(sizes=[16], chunk=CHUNK)
    imgtools.presize(str(src), str(dest), config=cfg, workers=0, progress=False)
    add_inputs(src)
    for i in range(12):  # two more chunks, so that the cluster runs several tasks
        (src / "class2" / f"more{i:02d}.png").write_bytes(png((i * 20, 100, 50)))
    report = imgtools.presize(str(src), str(dest), config=cfg, client=dask_client, progress=False, append=True)
    assert (report.appended, report.total) == (15, 45)
    imgtools.presize(str(src), str(tmp_path / "local"), config=cfg, workers=0, progress=False)
    local = pd.read_parquet(tmp_path / "local" / "manifest.parquet").set_index("relpath")
    m = pd.read_parquet(dest / "manifest.parquet")
    ds = imgtools.open(str(dest))
    fresh = imgtools.open(str(tmp_path / "local"))
    for row, rel in enumerate(m["relpath"]):
        other = int(local.loc[rel, "index"])
        if ds.ok[row]:
            np.testing.assert_array_equal(ds.image(row), fresh.image(other))


@pytest.fixture(scope="module")
def slow_tree(tmp_path_factory):
    """54 photo-sized JPEGs in DEST's run, 96 more to append: enough work to kill an append part-way."""
    root = tmp_path_factory.mktemp("slow_append")
    rng = np.random.default_rng(0)
    for i in range(150):
        arr = gradient(640, 480, seed=i) // 2 + rng.integers(0, 120, (480, 640, 3), dtype=np.uint8)
        folder = root / ("base" if i < 54 else "more") / f"c{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img{i:03d}.jpg").write_bytes(encode(Image.fromarray(arr), "JPEG"))
    return root


@pytest.mark.parametrize("fmt,grown", [("zarr", False), ("npy", False), ("png", False), ("zarr", True)])
def test_an_append_killed_part_way_resumes_to_the_bytes_of_an_uninterrupted_one(slow_tree, tmp_path, fmt, grown):
    """``grown``: SOURCE gains more inputs between the kill and the rerun; the rerun appends them all, as one
    uninterrupted append of everything does."""
    src = tmp_path / "src"
    shutil.copytree(slow_tree / "base", src)  # 54 inputs: 6 full chunks and one of 6
    args = ["--size", "32", "--size", "48x40", "--format", fmt, "--chunk", CHUNK, "--workers", "0", "--quiet"]
    clean, dest = tmp_path / "clean", tmp_path / "killed"
    for out in (clean, dest):
        assert cli("presize", src, out, *args).returncode == 0
    for c in range(3):  # 96 more, sorting among and after DEST's rows
        for f in (slow_tree / "more" / f"c{c}").iterdir():
            shutil.copy(f, src / f"c{c}" / f.name)
    late = {src / "c0" / "img000b.png": png((1, 2, 3)), src / "zz" / "late.png": png((200, 100, 0))}
    if grown:
        for path, data in late.items():
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(data)
    appended = 96 + len(late) * grown
    proc = cli("presize", src, clean, *args, "--append")
    assert proc.returncode == 0 and f"{appended} appended" in proc.stdout, proc.stderr
    for path in late if grown else ():
        path.unlink()

    killed = subprocess.Popen(IMGTOOLS + [str(a) for a in ["presize", src, dest, *args, "--append"]],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    markers = dest / ".imgtools" / "chunks"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(markers.iterdir())) < 6 + 4:  # 6 kept + at least 4 new
        time.sleep(0.005)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert 6 + 4 <= len(list(markers.iterdir())) < 19, "the append should have been killed part-way"
    assert not (dest / "manifest.parquet").exists()
    if fmt != "png":  # arrays record the append's own job (image files are one job whatever their inputs)
        assert json.loads((dest / ".imgtools" / "job.json").read_text())["n"] == 150

    for path, data in late.items() if grown else ():
        path.write_bytes(data)
    rerun = cli("presize", src, dest, *args, "--append")
    assert rerun.returncode == 0, rerun.stderr
    assert "chunks resumed" in rerun.stdout and f"{appended} appended" in rerun.stdout
    processed = int(rerun.stdout.split(" processed")[0].rsplit(" ", 1)[1])
    if grown:  # another job: the new rows' chunks are all done again, DEST's are kept
        assert processed == appended
    else:  # the chunks done before the kill are not redone
        assert processed <= 96 - 2 - 3 * CHUNK
    assert tree_bytes(dest) == tree_bytes(clean)


@pytest.mark.parametrize("fmt", ["zarr", "npy"])
def test_an_append_to_a_bucket_writes_what_the_same_append_writes_on_local_disk(bucket, src, tmp_path, fmt):
    url, options, server = bucket
    dest = f"{url}/out-{fmt}"
    cfg = PresizeConfig.build(sizes=[16, "12x10"], format=fmt, chunk=CHUNK)
    imgtools.presize(str(src), dest, config=cfg, storage_options=options, workers=0, progress=False)
    presize(src, tmp_path / "local", fmt)
    add_inputs(src)
    report = imgtools.presize(str(src), dest, config=cfg, storage_options=options, workers=0, progress=False,
                              append=True)
    presize(src, tmp_path / "local", fmt, append=True)
    assert (report.appended, report.total) == (3, 33)
    assert tree_bytes(dest.split("://", 1)[1], server.filesystem()) == tree_bytes(tmp_path / "local")


@pytest.mark.parametrize("fmt", ["zarr", "npy"])
def test_masks_are_appended_with_their_images(tmp_path, fmt):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()

    def add(name, seed):
        w, h = 30 + seed * 3, 24 + seed
        (images / f"{name}.png").write_bytes(encode(Image.fromarray(gradient(w, h, seed=seed)), "PNG"))
        mask = (np.arange(w * h).reshape(h, w) * (seed + 1) % 5).astype(np.uint8)
        (masks / f"{name}.png").write_bytes(encode(Image.fromarray(mask), "PNG"))

    for i in range(10):
        add(f"b{i}", i)
    cfg = PresizeConfig.build(sizes=[16], format=fmt, chunk=4)
    run = dict(config=cfg, workers=0, progress=False, masks=str(masks))
    imgtools.presize(str(images), str(tmp_path / "out"), **run)
    before = zarr.open_group(str(tmp_path / "out"), mode="r")["16x16/masks"][:] if fmt == "zarr" else \
        np.concatenate([np.load(p) for p in sorted((tmp_path / "out" / "16x16").glob("masks-part-*.npy"))])
    for i in range(3):
        add(f"c{i}", 10 + i)
    imgtools.presize(str(images), str(tmp_path / "out"), append=True, **run)
    imgtools.presize(str(images), str(tmp_path / "fresh"), **run)  # new files sort after: the same rows
    assert tree_bytes(tmp_path / "out") == tree_bytes(tmp_path / "fresh")
    after = zarr.open_group(str(tmp_path / "out"), mode="r")["16x16/masks"][:] if fmt == "zarr" else \
        np.concatenate([np.load(p) for p in sorted((tmp_path / "out" / "16x16").glob("masks-part-*.npy"))])
    np.testing.assert_array_equal(after[:10], before)
    assert after.shape[0] == 13 and after[10:].any()


@pytest.mark.parametrize("cut", [[40], [3, 4, 20, 13], [7, 7, 26], [1] * 40, [0, 40, 0]])
def test_the_recorded_lengths_have_the_same_bytes_however_the_listing_was_cut(tmp_path, monkeypatch, cut):
    import io

    import imgtools.append as append
    from imgtools.sinks import make_sink

    monkeypatch.setattr(append, "_LENGTHS_GROUP", 7)
    lengths = np.random.default_rng(0).integers(-1, 1000, 40)
    sink = make_sink(str(tmp_path / "o.zarr"), PresizeConfig.build(sizes=[8]), None)
    append.record_lengths(sink, iter([lengths]))
    whole = sink.fs.cat_file(sink.ledger.path(append.LENGTHS_FILE))
    append.record_lengths(sink, iter(np.split(lengths, np.cumsum(cut)[:-1])))
    again = sink.fs.cat_file(sink.ledger.path(append.LENGTHS_FILE))
    assert again == whole and pd.read_parquet(io.BytesIO(again))["bytes"].tolist() == lengths.tolist()
