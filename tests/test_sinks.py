"""The shared sink suite: every output form holds the same pictures, resumes to identical bytes after a
SIGKILL, never writes outside DEST, and refuses a second run while one holds DEST."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import imgtools
from conftest import encode, gradient, load_rgb, psnr, read_back, tree_bytes
from imgtools.config import OutputFormat, PresizeConfig
from imgtools.engine import process_image
from imgtools.errors import DestinationError
from imgtools.sinks.files import output_relpath

ALL = ["zarr", "npy", "jpeg", "png", "webp", "webdataset"]
LOSSLESS = {"zarr", "npy", "png"}


@pytest.mark.parametrize("fmt", ALL)
@pytest.mark.parametrize("mode", ["crop", "pad"])
def test_every_sink_holds_each_ok_image_at_every_size(labelled_dir, tmp_path, fmt, mode):
    (labelled_dir / "class0" / "broken.jpg").write_bytes(b"nope")
    cfg = PresizeConfig.build(sizes=[16, "24x20"], mode=mode, format=fmt, chunk=32)
    dest = tmp_path / "o"
    report = imgtools.presize(str(labelled_dir), str(dest), config=cfg, workers=0, progress=False)
    assert (report.total, report.failed) == (81, 1)
    m = pd.read_parquet(dest / "manifest.parquet")
    for key in cfg.size_keys:
        stored = read_back(dest, fmt, key)
        for i in (0, 17, 40, 80):
            direct = process_image((labelled_dir / m["relpath"][i]).read_bytes(), cfg)
            if not direct.ok:
                assert stored[i] is None
            elif fmt in LOSSLESS:
                np.testing.assert_array_equal(stored[i], direct.arrays[key])
            else:
                assert psnr(stored[i], direct.arrays[key]) > 25  # lossy, tiny, sharp-edged


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
@pytest.mark.parametrize("mode,side", [("shortest", 40), ("longest", 50)])
def test_image_file_sinks_take_variable_sizes(labelled_dir, tmp_path, fmt, mode, side):
    dest = tmp_path / "o"
    imgtools.presize(str(labelled_dir), str(dest), sizes=[side], mode=mode, format=fmt, workers=0, progress=False)
    key = f"{'short' if mode == 'shortest' else 'long'}{side}"
    m = pd.read_parquet(dest / "manifest.parquet")
    for rel, w, h in zip(m["relpath"], m["width"], m["height"]):
        out_h, out_w = load_rgb(dest / key / output_relpath(rel, OutputFormat(fmt))).shape[:2]
        assert (min if mode == "shortest" else max)(out_w, out_h) == side
        assert abs(out_w / out_h - w / h) < 0.05 * max(w / h, 1)


def test_image_needing_no_resize_in_the_target_format_is_copied_not_reencoded(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    small = encode(Image.fromarray(gradient(60, 40)), "JPEG", quality=77)
    (src / "small.jpg").write_bytes(small)
    (src / "big.jpg").write_bytes(encode(Image.fromarray(gradient(400, 300)), "JPEG"))
    (src / "small.png").write_bytes(encode(Image.fromarray(gradient(60, 40)), "PNG"))
    cfg = PresizeConfig.build(sizes=[100], mode="longest", format="jpeg", only_if_bigger=True)
    imgtools.presize(str(src), str(tmp_path / "o"), config=cfg, workers=0, progress=False)
    assert (tmp_path / "o/long100/small.jpg").read_bytes() == small
    assert load_rgb(tmp_path / "o/long100/big.jpg").shape == (75, 100, 3)
    # small.png becomes small.png.jpg beside the copied small.jpg, never over it
    assert sorted(p.name for p in (tmp_path / "o/long100").iterdir()) == ["big.jpg", "small.jpg", "small.png.jpg"]


def test_file_cache_processes_only_new_images_when_source_grows(labelled_dir, tmp_path):
    dest = tmp_path / "o"
    imgtools.presize(str(labelled_dir), str(dest), sizes=[16], format="png", workers=0, progress=False)
    first = tree_bytes(dest / "16x16")
    (labelled_dir / "class2" / "zzz-new.png").write_bytes(encode(Image.fromarray(gradient(50, 50)), "PNG"))
    report = imgtools.presize(str(labelled_dir), str(dest), sizes=[16], format="png", workers=0, progress=False)
    assert report.total == 81 and report.processed == 1
    after = tree_bytes(dest / "16x16")
    assert set(after) - set(first) == {"class2/zzz-new.png"} and all(after[k] == first[k] for k in first)


def test_file_cache_keeps_labels_right_when_a_new_label_folder_sorts_first(labelled_dir, tmp_path):
    dest = tmp_path / "o"
    imgtools.presize(str(labelled_dir), str(dest), sizes=[16], format="png", workers=0, progress=False)
    (labelled_dir / "aaa").mkdir()
    (labelled_dir / "aaa" / "x.png").write_bytes(encode(Image.fromarray(gradient(50, 50)), "PNG"))
    report = imgtools.presize(str(labelled_dir), str(dest), sizes=[16], format="png", workers=0, progress=False)
    assert report.processed == 1
    m = pd.read_parquet(dest / "manifest.parquet")
    names = ["aaa", "class0", "class1", "class2", "class3"]
    assert [names[i] for i in m["label_id"]] == list(m["label"])


def test_file_cache_retries_failed_images(labelled_dir, tmp_path):
    dest = tmp_path / "o"
    (labelled_dir / "class0" / "late.png").write_bytes(b"not yet")
    first = imgtools.presize(str(labelled_dir), str(dest), sizes=[16], format="png", workers=0, progress=False)
    assert first.failed == 1
    (labelled_dir / "class0" / "late.png").write_bytes(encode(Image.fromarray(gradient(40, 40)), "PNG"))
    again = imgtools.presize(str(labelled_dir), str(dest), sizes=[16], format="png", workers=0, progress=False)
    assert (again.failed, again.processed) == (0, 1)


@pytest.mark.parametrize("side,reason", [(256, "encode failed"), (9000, "output 9000x1350000")])
def test_image_too_big_for_its_output_fails_alone(tmp_path, side, reason):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "thin.png").write_bytes(encode(Image.new("RGB", (2, 300)), "PNG"))
    (tmp_path / "src" / "fine.png").write_bytes(encode(Image.new("RGB", (30, 30)), "PNG"))
    report = imgtools.presize(str(tmp_path / "src"), str(tmp_path / "o"), sizes=[side], mode="shortest",
                              format="webp", workers=0, progress=False)
    assert (report.total, report.failed) == (2, 1)
    assert reason in report.failures["error"].iloc[0]


@pytest.mark.parametrize("fmt", ["zarr", "npy"])
def test_array_sinks_refuse_a_changed_input_list(labelled_dir, tmp_path, fmt):
    dest = tmp_path / "o"
    imgtools.presize(str(labelled_dir), str(dest), sizes=[8], format=fmt, workers=0, progress=False)
    (labelled_dir / "class0" / "new.png").write_bytes(encode(Image.new("RGB", (9, 9)), "PNG"))
    with pytest.raises(DestinationError, match="inputs: 80 listed there, 81 now"):
        imgtools.presize(str(labelled_dir), str(dest), sizes=[8], format=fmt, workers=0, progress=False)


@pytest.mark.parametrize("fmt", ["png", "zarr"])
def test_no_input_path_writes_outside_dest(tmp_path, fmt):
    outside = tmp_path / "victim"
    (tmp_path / "a" / "b").mkdir(parents=True)
    img = encode(Image.fromarray(gradient(30, 30)), "PNG")
    (tmp_path / "a" / "x.png").write_bytes(img)
    (tmp_path / "elsewhere.png").write_bytes(img)
    (tmp_path / "a" / "b" / "link.png").symlink_to(tmp_path / "elsewhere.png")
    (tmp_path / "a" / "b" / "dirlink").symlink_to(tmp_path, target_is_directory=True)
    paths = ["b/../../../victim/x.png", "../x.png", str(tmp_path / "a" / "x.png"), "b/link.png", "x.png",
             "./b/../x.png", "b/dirlink/victim/../a/x.png"]
    pd.DataFrame({"path": paths}).to_csv(tmp_path / "a" / "list.csv", index=False)
    dest = tmp_path / "a" / "b" / "out"
    imgtools.presize(str(tmp_path / "a" / "list.csv"), str(dest), sizes=[8], format=fmt, workers=0, progress=False)
    assert not outside.exists()
    before = {p for p in tmp_path.rglob("*") if not str(p).startswith(str(dest))}
    assert all(p.is_relative_to(dest) or p in before for p in tmp_path.rglob("*"))
    m = pd.read_parquet(dest / "manifest.parquet")
    assert not any(r.startswith(("/", "..")) or "/../" in r for r in m["relpath"])
    if fmt == "png":
        written = [p for p in (dest / "8x8").rglob("*") if p.is_file()]
        assert len(written) == m[m["status"] == "ok"]["relpath"].nunique()  # the same path listed twice: one file
        assert all(p.resolve().is_relative_to(dest) for p in written)


def _run_cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "imgtools.cli", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, **kw)


@pytest.mark.parametrize("fmt,workers", [("zarr", "0"), ("npy", "0"), ("jpeg", "0"), ("webdataset", "0"),
                                        ("zarr", "2")])
def test_sigkill_part_way_then_rerun_gives_identical_output(slow_source, tmp_path, fmt, workers):
    args = ["presize", slow_source, None, "--size", "32", "--size", "48x40", "--format", fmt, "--chunk", "8",
            "--workers", workers, "--quiet"]
    clean = tmp_path / "clean"
    assert subprocess.run([sys.executable, "-m", "imgtools.cli", *[str(a if a is not None else clean) for a in args]],
                          capture_output=True).returncode == 0
    dest = tmp_path / "killed"
    proc = _run_cli([a if a is not None else dest for a in args])
    markers = dest / ".imgtools" / "chunks"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not markers.is_dir() or len(list(markers.iterdir())) < 3):
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_at_kill = len(list(markers.iterdir()))
    assert 3 <= done_at_kill < 25, "the run should have been killed part-way"
    assert not (dest / "manifest.parquet").exists()
    rerun = subprocess.run([sys.executable, "-m", "imgtools.cli", *[str(a if a is not None else dest) for a in args]],
                           capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "chunks resumed" in rerun.stdout
    processed = int(rerun.stdout.split(" processed")[0].rsplit(" ", 1)[1])
    assert processed <= 200 - 8 * 3 + 8  # finished chunks were not redone
    assert tree_bytes(dest) == tree_bytes(clean)


def test_second_run_on_a_locked_dest_is_refused_until_the_holder_is_gone(labelled_dir, tmp_path):
    dest = tmp_path / "o"
    imgtools.presize(str(labelled_dir), str(dest), sizes=[8], workers=0, progress=False)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        lock = {"run": "other", "host": socket.gethostname(), "pid": holder.pid, "heartbeat": time.time()}
        (dest / ".imgtools" / "lock.json").write_text(json.dumps(lock))
        with pytest.raises(DestinationError, match=f"being written by another run \\(pid {holder.pid}"):
            imgtools.presize(str(labelled_dir), str(dest), sizes=[8], workers=0, progress=False)
    finally:
        holder.kill()
        holder.wait()
    report = imgtools.presize(str(labelled_dir), str(dest), sizes=[8], workers=0, progress=False)  # stale: taken over
    assert report.chunks_resumed == 1 and not (dest / ".imgtools" / "lock.json").exists()


def test_lock_of_another_host_expires_after_its_heartbeat_stops(labelled_dir, tmp_path):
    dest = tmp_path / "o"
    imgtools.presize(str(labelled_dir), str(dest), sizes=[8], workers=0, progress=False)
    lock = dest / ".imgtools" / "lock.json"
    lock.write_text(json.dumps({"run": "x", "host": "elsewhere", "pid": 1, "heartbeat": time.time()}))
    with pytest.raises(DestinationError, match="on elsewhere"):
        imgtools.presize(str(labelled_dir), str(dest), sizes=[8], workers=0, progress=False)
    lock.write_text(json.dumps({"run": "x", "host": "elsewhere", "pid": 1, "heartbeat": time.time() - 3600}))
    imgtools.presize(str(labelled_dir), str(dest), sizes=[8], workers=0, progress=False)


def test_a_second_real_run_on_the_same_dest_is_refused_while_the_first_runs(slow_source, tmp_path):
    dest = tmp_path / "o"
    first = _run_cli(["presize", slow_source, dest, "--size", "32", "--size", "224", "--chunk", "8", "--workers", "0",
                      "--quiet"])
    markers = dest / ".imgtools" / "chunks"
    deadline = time.monotonic() + 60
    while (not markers.is_dir() or not any(markers.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert first.poll() is None, "the first run should still be going"
    cfg = PresizeConfig.build(sizes=[32, 224], chunk=8)
    with pytest.raises(DestinationError, match=f"being written by another run \\(pid {first.pid} "):
        imgtools.presize(str(slow_source), str(dest), config=cfg, workers=0, progress=False)
    assert first.wait(timeout=300) == 0
    assert not (dest / ".imgtools" / "lock.json").exists()
    assert imgtools.presize(str(slow_source), str(dest), config=cfg, workers=0, progress=False).processed == 0


def test_png_with_a_transparent_colour_is_reencoded_not_copied(tmp_path):
    (tmp_path / "src").mkdir()
    rgb = np.zeros((20, 30, 3), np.uint8)
    (tmp_path / "src" / "t.png").write_bytes(encode(Image.fromarray(rgb), "PNG", transparency=(0, 0, 0)))
    cfg = PresizeConfig.build(sizes=[100], mode="longest", format="png", only_if_bigger=True)
    imgtools.presize(str(tmp_path / "src"), str(tmp_path / "o"), config=cfg, workers=0, progress=False)
    assert load_rgb(tmp_path / "o" / "long100" / "t.png")[0, 0].tolist() == [255, 255, 255]  # over the background


def test_a_zarr_chunk_write_cut_short_by_a_kill_leaves_no_temporary_file_after_the_rerun(labelled_dir, tmp_path):
    """zarr's local store writes ``<chunk>.<uuid>.partial`` then renames it; SIGKILL in between leaves it."""
    from imgtools import presize

    dest = tmp_path / "o.zarr"
    presize(str(labelled_dir), str(dest), sizes=[16], workers=0, progress=False)
    leftover = dest / "16x16" / "images" / "c" / "0" / "0" / "0" / "0.1f2e3d.partial"
    leftover.write_bytes(b"half a chunk")
    (dest / ".imgtools" / "chunks" / "0000000.parquet").unlink()
    (dest / "manifest.parquet").unlink()
    clean = tmp_path / "clean.zarr"
    presize(str(labelled_dir), str(clean), sizes=[16], workers=0, progress=False)
    presize(str(labelled_dir), str(dest), sizes=[16], workers=0, progress=False)
    assert not leftover.exists()
    assert tree_bytes(dest) == tree_bytes(clean)


def test_zarr_writes_a_chunk_of_only_failed_images_as_a_chunk_object(tmp_path):
    """Every chunk object is written, even all zeros: ``write_empty_chunks`` is a runtime setting zarr does
    not keep, so the sink must give it to the arrays it opens (else zarr scans every chunk for fill values,
    which doubles a chunk write)."""
    from imgtools import presize

    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"bad{i}.jpg").write_bytes(b"not a jpeg")
    dest = tmp_path / "o.zarr"
    report = presize(str(src), str(dest), sizes=[16], workers=0, progress=False)
    assert report.failed == 4
    assert (dest / "16x16" / "images" / "c" / "0" / "0" / "0" / "0").is_file()
    assert (dest / "ok" / "c" / "0").is_file()


def test_zarr_rerun_over_a_dest_this_process_wrote_writes_its_own_arrays(labelled_dir, tmp_path):
    """The zarr sink keeps a run's opened arrays for its next chunks in the same process; a later run into
    the same DEST (overwritten: other sizes, chunks and mode) must write through arrays of its own."""
    dest = tmp_path / "o.zarr"
    first = PresizeConfig.build(sizes=[16], mode="crop", chunk=32)
    imgtools.presize(str(labelled_dir), str(dest), config=first, workers=0, progress=False)
    again = PresizeConfig.build(sizes=[16, 24], mode="pad", chunk=16)
    report = imgtools.presize(str(labelled_dir), str(dest), config=again, workers=0, progress=False, overwrite=True)
    assert report.failed == 0
    m = pd.read_parquet(dest / "manifest.parquet")
    for key in again.size_keys:
        stored = read_back(dest, "zarr", key)
        for i in (0, 15, 16, 79):
            np.testing.assert_array_equal(stored[i], process_image((labelled_dir / m["relpath"][i]).read_bytes(),
                                                                   again).arrays[key])
