"""``imgtools.sync``: what a sync between two local trees copies, skips and reports, and how it meets a
refused file, a transient fault and an outage (local folders and the ``flaky://`` filesystem; the
bucket-to-bucket runs are in test_storage.py)."""

from __future__ import annotations

import hashlib
import os

import pytest

from conftest import flip_last_byte, tree_bytes
from imgtools.errors import ConfigError, SourceError, StorageError
from imgtools.sync import STREAM_ABOVE, SyncReport, sync


@pytest.mark.parametrize("parallel", [1, 3])
@pytest.mark.parametrize("batch", [1, 5, 64])
def test_sync_into_an_empty_folder_copies_every_file_byte_for_byte(labelled_dir, tmp_path, batch, parallel):
    dst = tmp_path / "dst"
    report = sync(str(labelled_dir), str(dst), batch=batch, parallel=parallel, progress=False)
    assert isinstance(report, SyncReport)
    assert (report.total, report.copied, report.skipped, report.failed) == (80, 80, 0, 0)
    assert report.bytes_copied == sum(len(data) for data in tree_bytes(labelled_dir).values())
    assert report.failures.empty and list(report.failures.columns) == ["path", "error"]
    assert tree_bytes(dst) == tree_bytes(labelled_dir)
    assert "80 files: 80 copied, 0 already there, 0 failed; " in str(report) and str(dst) in str(report)


@pytest.mark.parametrize("change", ["grown", "same size, other bytes"])
def test_a_second_sync_copies_only_the_new_and_changed_files(labelled_dir, tmp_path, change):
    dst = tmp_path / "dst"
    sync(str(labelled_dir), str(dst), progress=False)
    changed = labelled_dir / "class1" / "img004.png"
    if change == "grown":
        changed.write_bytes(changed.read_bytes() + b"tail")
    else:
        flip_last_byte(changed)
    (labelled_dir / "class2" / "new.txt").write_bytes(b"a new file")
    again = sync(str(labelled_dir), str(dst), progress=False)
    assert (again.total, again.copied, again.skipped, again.failed) == (81, 2, 79, 0)
    assert again.bytes_copied == changed.stat().st_size + len(b"a new file")
    assert tree_bytes(dst) == tree_bytes(labelled_dir)


def test_files_already_there_with_the_same_size_and_md5_are_skipped_not_written_again(labelled_dir, tmp_path):
    dst = tmp_path / "dst"
    sync(str(labelled_dir), str(dst), progress=False)
    before = {p: p.stat().st_mtime_ns for p in dst.rglob("*") if p.is_file()}
    for path in before:
        os.utime(path, ns=(1, 1))  # an old time, so that a rewrite would show
    again = sync(str(labelled_dir), str(dst), progress=False)
    assert (again.copied, again.skipped, again.bytes_copied) == (0, 80, 0)
    assert {p.stat().st_mtime_ns for p in before} == {1}


def test_a_file_as_src_is_copied_into_dst_under_its_name(labelled_dir, tmp_path):
    one = labelled_dir / "class0" / "img001.png"
    report = sync(str(one), str(tmp_path / "dst"), progress=False)
    assert (report.total, report.copied) == (1, 1)
    assert tree_bytes(tmp_path / "dst") == {"img001.png": one.read_bytes()}


@pytest.mark.parametrize("batch", [1, 6, 64])
def test_a_refused_file_is_a_failure_row_the_rest_are_copied_and_a_rerun_finishes(labelled_dir, tmp_path, batch):
    dst = tmp_path / "dst"
    (dst / "class1" / "img003.jpg").mkdir(parents=True)  # a folder where a file must go: refused for good
    report = sync(str(labelled_dir), str(dst), batch=batch, progress=False)
    assert (report.total, report.copied, report.failed) == (80, 79, 1)
    assert report.failures["path"].tolist() == ["class1/img003.jpg"]
    assert report.failures["error"][0].startswith("write failed: ")
    copied = {rel: data for rel, data in tree_bytes(labelled_dir).items() if rel != "class1/img003.jpg"}
    assert report.bytes_copied == sum(len(data) for data in copied.values())
    (dst / "class1" / "img003.jpg").rmdir()
    again = sync(str(labelled_dir), str(dst), progress=False)
    assert (again.copied, again.skipped, again.failed) == (1, 79, 0)
    assert tree_bytes(dst) == tree_bytes(labelled_dir)


def test_a_file_that_cannot_be_read_is_a_failure_row_the_rest_are_copied(labelled_dir, tmp_path):
    (labelled_dir / "class0" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")  # listed, but its target is gone
    report = sync(str(labelled_dir), str(tmp_path / "dst"), progress=False)
    assert (report.total, report.copied, report.failed) == (81, 80, 1)
    assert report.failures["path"].tolist() == ["class0/gone.jpg"]
    assert report.failures["error"][0].startswith("read failed: FileNotFoundError")
    assert not (tmp_path / "dst" / "class0" / "gone.jpg").exists()


def test_refused_files_are_listed_in_path_order_whatever_batch_finishes_first(labelled_dir, tmp_path):
    dst = tmp_path / "dst"
    refused = ["class3/img019.png", "class2/img007.png", "class0/img000.jpg", "class1/img005.webp"]
    for rel in refused:
        (dst / rel).mkdir(parents=True)
    report = sync(str(labelled_dir), str(dst), batch=2, parallel=4, progress=False)
    assert report.failures["path"].tolist() == sorted(refused) and report.failed == 4


@pytest.mark.parametrize("blocked", [False, True])
def test_a_file_above_the_stream_threshold_is_streamed_across(labelled_dir, tmp_path, blocked):
    big = labelled_dir / "big.bin"
    block = hashlib.sha256(b"imgtools").digest() * (1 << 15)  # 1 MiB
    with open(big, "wb") as f:
        f.writelines(block for _ in range(STREAM_ABOVE // len(block) + 1))
    dst = tmp_path / "dst"
    if blocked:
        (dst / "big.bin").mkdir(parents=True)
    report = sync(str(labelled_dir), str(dst), batch=4, progress=False)
    if blocked:
        assert (report.copied, report.failed) == (80, 1)
        assert report.failures["path"].tolist() == ["big.bin"]
        assert report.failures["error"][0].startswith("copy failed: ")
    else:
        assert (report.copied, report.failed) == (81, 0) and report.bytes_copied > STREAM_ABOVE
        assert tree_bytes(dst) == tree_bytes(labelled_dir)


@pytest.mark.parametrize("side,fault", [("src", "cat_ranges"), ("src", "open"), ("dst", "open"), ("dst", "pipe_file")])
def test_transient_faults_are_retried_and_nothing_is_lost(labelled_dir, tmp_path, flaky_fs, side, fault):
    src, dst = str(labelled_dir), str(tmp_path / "dst")
    if side == "dst":
        sync(src, dst, progress=False)  # there already, same sizes: the next run hashes both sides (open)
        for rel in ("class0/img001.png", "class2/img006.jpg"):
            flip_last_byte(labelled_dir / rel)  # and writes these again (pipe_file)
        dst = f"flaky://{dst}"
    else:
        src = f"flaky://{src}"
    flaky_fs.faults[fault] = 2
    report = sync(src, dst, batch=16, progress=False)
    assert flaky_fs.faults[fault] == 0  # the faults were met
    assert report.failed == 0 and report.copied == (2 if side == "dst" else 80)
    assert tree_bytes(tmp_path / "dst") == tree_bytes(labelled_dir)


def test_an_outage_stops_the_sync_and_a_rerun_copies_only_what_is_left(labelled_dir, tmp_path, flaky_fs):
    dst = tmp_path / "dst"
    sync(str(labelled_dir), str(dst), progress=False)
    changed = ["class0/img002.webp", "class2/img004.png"]
    for rel in changed:
        (labelled_dir / rel).write_bytes((labelled_dir / rel).read_bytes() + b"more")
    flaky_fs.faults["pipe_file"] = 10_000  # every write dropped: retried, then the run stops
    with pytest.raises(StorageError, match="still failing"):
        sync(str(labelled_dir), f"flaky://{dst}", progress=False)
    flaky_fs.faults["pipe_file"] = 0
    report = sync(str(labelled_dir), f"flaky://{dst}", progress=False)
    assert (report.copied, report.skipped, report.failed) == (2, 78, 0)
    assert tree_bytes(dst) == tree_bytes(labelled_dir)


@pytest.mark.parametrize("batch,parallel", [(0, 4), (64, 0), (-1, -1)])
def test_a_batch_or_parallel_below_1_is_a_config_error_naming_both(labelled_dir, tmp_path, batch, parallel):
    with pytest.raises(ConfigError, match=f"batch {batch} and parallel {parallel} must be at least 1"):
        sync(str(labelled_dir), str(tmp_path / "dst"), batch=batch, parallel=parallel, progress=False)
    assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_a_src_with_no_files_is_a_source_error_naming_it(tmp_path, kind):
    src = tmp_path / "src"
    if kind == "empty":
        (src / "only" / "folders").mkdir(parents=True)
    with pytest.raises(SourceError, match="does not exist or holds no files") as info:
        sync(str(src), str(tmp_path / "dst"), progress=False)
    assert str(src) in str(info.value) and not (tmp_path / "dst").exists()
