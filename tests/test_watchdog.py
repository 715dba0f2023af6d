"""The per-image time limit (imgtools.watchdog, --image-timeout): an image whose decoder never returns (a
real Pillow plugin, imgtools.testing.hang_plugin) becomes a failed row "timed out after N s", in this process
and on a local cluster; the other images come out as they would without it; a resumed run never decodes it
again."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pandas as pd
import pytest
import zarr

import imgtools
from conftest import make_labelled, tree_bytes
from imgtools.config import DEFAULT_FORMATS, PresizeConfig
from imgtools.errors import ConfigError
from imgtools.watchdog import Watch, run_watched

STUCK = "class0/img001x.png"  # sorted between img001.png and img002.webp: third of chunk 0's four images
FORMATS = [*DEFAULT_FORMATS, "HANG"]


@pytest.fixture(scope="module")
def hang():
    """The HANG format registered in this process; its stuck decoders let go at the module's end."""
    from imgtools.testing import hang_plugin

    yield hang_plugin
    hang_plugin.release()


@pytest.fixture
def sources(tmp_path, hang):
    """Two listings alike but for one file: in ``stuck`` it never decodes, in ``clean`` it is not an image."""
    out = {}
    for name, data in [("stuck", hang.hang_file()), ("clean", b"nope")]:
        root = tmp_path / name
        make_labelled(root, per_class=4, classes=2)
        (root / STUCK).write_bytes(data)
        out[name] = root
    return out


def _config(fmt: str = "zarr", timeout: float = 1.0) -> PresizeConfig:
    return PresizeConfig.build(sizes=[16], chunk=4, format=fmt, formats=FORMATS, image_timeout=timeout)


def _failed(dest) -> list[tuple[str, str]]:
    m = pd.read_parquet(dest / "manifest.parquet")
    bad = m[m["status"] == "failed"]
    return list(zip(bad["relpath"], bad["error"]))


def _assert_same_but_the_stuck_one(dest, clean) -> None:
    """Pixels, ok flags and manifest rows as the clean run's, but the stuck file's reason."""
    a, b = zarr.open_group(str(dest), mode="r"), zarr.open_group(str(clean), mode="r")
    np.testing.assert_array_equal(a["16x16/images"][:], b["16x16/images"][:])
    np.testing.assert_array_equal(a["ok"][:], b["ok"][:])
    ma, mb = (pd.read_parquet(d / "manifest.parquet").drop(columns=["origin", "error"]) for d in (dest, clean))
    pd.testing.assert_frame_equal(ma, mb)


# ---- the watchdog alone ------------------------------------------------------------------------------
def test_work_that_raises_raises_in_the_caller_and_nothing_is_given_up():
    def work(watch: Watch) -> None:
        watch.begin("a")
        try:
            raise ValueError("broken")
        finally:
            watch.end()

    stuck = []
    with pytest.raises(ValueError, match="broken"):
        run_watched(work, 5.0, stuck.append)
    assert stuck == []


def test_a_stuck_thread_that_comes_back_stops_at_its_next_image_and_its_result_is_not_used():
    let_go, ran, given_up = threading.Event(), [], set()

    def work(watch: Watch) -> list[str]:
        done = []
        for key in ["a", "stuck", "b"]:
            if key in given_up:
                continue
            watch.begin(key)
            try:
                if key == "stuck":
                    let_go.wait()
            finally:
                watch.end()
            done.append(key)
        ran.append(done)
        return done

    def on_stuck(stuck) -> None:
        given_up.add(stuck.key)

    assert run_watched(work, 0.2, on_stuck) == ["a", "b"]
    let_go.set()  # the abandoned thread comes back from "stuck": Abandoned at its end(), nothing after
    assert ran == [["a", "b"]] and given_up == {"stuck"}


def test_image_timeout_must_be_a_positive_number_of_seconds():
    assert PresizeConfig().image_timeout == 120
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ConfigError, match="image_timeout"):
            PresizeConfig.build(image_timeout=bad)


def test_cli_image_timeout_0_exits_2_with_one_line(sources, tmp_path, cli_env):
    proc = subprocess.run([sys.executable, "-m", "imgtools.cli", "presize", str(sources["clean"]), str(tmp_path / "o"),
                           "--image-timeout", "0"], capture_output=True, text=True, env=cli_env, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "image_timeout 0" in lines[0], proc.stderr
    assert not (tmp_path / "o").exists()


# ---- in this process ------------------------------------------------------------------------------------
def test_in_this_process_a_stuck_image_fails_the_others_come_out_as_without_it_and_a_resume_skips_it(
        sources, tmp_path, hang):
    dest, clean = tmp_path / "out.zarr", tmp_path / "clean.zarr"
    before = hang.decodes()
    report = imgtools.presize(str(sources["stuck"]), str(dest), config=_config(), workers=0, progress=False)
    assert (report.total, report.ok, report.failed) == (9, 8, 1)
    assert _failed(dest) == [(STUCK, "timed out after 1 s")] and hang.decodes() == before + 1
    assert json.loads((dest / ".imgtools" / "timeouts" / "0000000.json").read_bytes()) == {
        STUCK: "timed out after 1 s"}
    imgtools.presize(str(sources["clean"]), str(clean), config=_config(), workers=0, progress=False)
    _assert_same_but_the_stuck_one(dest, clean)

    # a run killed after the record, before chunk 0's marker: the resumed run takes the record, decodes nothing stuck
    (dest / ".imgtools" / "chunks" / "0000000.parquet").unlink()
    (dest / "manifest.parquet").unlink()
    report = imgtools.presize(str(sources["stuck"]), str(dest), config=_config(), workers=0, progress=False)
    assert (report.chunks_done, report.failed) == (1, 1) and hang.decodes() == before + 1
    assert _failed(dest) == [(STUCK, "timed out after 1 s")]
    _assert_same_but_the_stuck_one(dest, clean)


def test_in_this_process_a_header_that_never_parses_fails_alone_and_later_images_still_open(tmp_path, hang):
    root = tmp_path / "src"
    make_labelled(root, per_class=4, classes=2)
    (root / STUCK).write_bytes(hang.header_hang_file())  # chunk 0; chunk 1's images open after it
    config = PresizeConfig.build(sizes=[16], chunk=4, formats=[*FORMATS, "HANGHEAD"], image_timeout=1)
    report = imgtools.presize(str(root), str(tmp_path / "out.zarr"), config=config, workers=0, progress=False)
    assert (report.total, report.ok, report.failed) == (9, 8, 1)
    assert _failed(tmp_path / "out.zarr") == [(STUCK, "timed out after 1 s")]


@pytest.mark.parametrize("fmt", ["zarr", "png"])
def test_a_run_resumed_with_another_time_limit_is_the_same_job(sources, tmp_path, fmt):
    dest = tmp_path / "out"
    imgtools.presize(str(sources["clean"]), str(dest), config=_config(fmt, timeout=30), workers=0, progress=False)
    (dest / ".imgtools" / "chunks" / "0000001.parquet").unlink()  # as if killed before chunk 1's marker
    (dest / "manifest.parquet").unlink()
    report = imgtools.presize(str(sources["clean"]), str(dest), config=_config(fmt, timeout=300), workers=0,
                              progress=False)
    assert report.chunks_resumed >= 1 and report.total == 9


def test_image_files_run_again_retry_failures_but_not_one_past_the_limit(sources, tmp_path, hang):
    dest = tmp_path / "out"
    before = hang.decodes()
    imgtools.presize(str(sources["stuck"]), str(dest), config=_config("png"), workers=0, progress=False)
    first = tree_bytes(dest / "16x16")
    report = imgtools.presize(str(sources["stuck"]), str(dest), config=_config("png"), workers=0, progress=False)
    assert report.chunks_done == 1  # the chunk with a failure is done again, as image-file outputs do
    assert hang.decodes() == before + 1 and _failed(dest) == [(STUCK, "timed out after 1 s")]
    assert tree_bytes(dest / "16x16") == first and len(first) == 8


# ---- on a local cluster ------------------------------------------------------------------------------------
@pytest.fixture
def hang_client(hang):
    """Two single-threaded worker processes with nannies that load the HANG format (again when restarted)."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                           preload=["imgtools.localcluster", "imgtools.testing.hang_plugin"])
    client = Client(cluster)
    yield client
    client.close()
    cluster.close()


def test_on_a_cluster_a_stuck_image_ends_its_worker_and_the_retried_task_fails_it(sources, tmp_path, hang_client):
    dest, clean = tmp_path / "out.zarr", tmp_path / "clean.zarr"
    pids = set(hang_client.run(lambda: __import__("os").getpid()).values())
    report = imgtools.presize(str(sources["stuck"]), str(dest), config=_config(timeout=1.5), client=hang_client,
                              progress=False)
    assert (report.total, report.ok, report.failed) == (9, 8, 1)
    assert _failed(dest) == [(STUCK, "timed out after 1.5 s")]
    imgtools.presize(str(sources["clean"]), str(clean), config=_config(), workers=0, progress=False)
    _assert_same_but_the_stuck_one(dest, clean)
    hang_client.wait_for_workers(2, timeout=60)  # the nanny started the worker it ended again
    assert len(set(hang_client.run(lambda: __import__("os").getpid()).values()) - pids) == 1
