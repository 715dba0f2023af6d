"""On a real `dask scheduler` with `dask worker` processes: losing a worker mid-run loses nothing, the
dashboard answers while a run goes, and the CLI takes --scheduler / DASK_SCHEDULER_ADDRESS."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

import imgtools
from conftest import tree_bytes
from imgtools.config import PresizeConfig

CFG = PresizeConfig.build(sizes=[32, "48x40"], mode="crop", chunk=8)


def test_killing_a_worker_mid_run_gives_output_identical_to_a_local_run(slow_source, tmp_path, dask_processes):
    from distributed import Client

    address, dash, workers = dask_processes
    local = tmp_path / "local"
    imgtools.presize(str(slow_source), str(local), config=CFG, workers=0, progress=False)
    dest = tmp_path / "remote"
    with Client(address, timeout="30s", set_as_default=False) as client:
        client.wait_for_workers(2, timeout=60)
        outcome: dict = {}
        run = threading.Thread(target=lambda: outcome.update(report=imgtools.presize(
            str(slow_source), str(dest), config=CFG, client=client, progress=False)))
        run.start()
        markers = dest / ".imgtools" / "chunks"
        deadline = time.monotonic() + 120
        while (not markers.is_dir() or len(list(markers.iterdir())) < 3) and time.monotonic() < deadline:
            time.sleep(0.01)
        status = urllib.request.urlopen(f"http://127.0.0.1:{dash}/status", timeout=10)  # the dashboard, mid-run
        assert status.status == 200 and b"Dask" in status.read()
        os.killpg(workers[0].pid, signal.SIGKILL)  # the worker and its nanny, mid-run
        run.join(timeout=300)
        assert not run.is_alive() and outcome["report"].failed == 0
    assert tree_bytes(dest) == tree_bytes(local)


def test_cli_runs_on_a_scheduler_named_by_flag_or_environment(labelled_dir, tmp_path, dask_processes, cli_env):
    address, _, _ = dask_processes
    cmd = [sys.executable, "-m", "imgtools.cli", "presize", str(labelled_dir)]
    by_flag = subprocess.run(cmd + [str(tmp_path / "a"), "--size", "16", "--chunk", "16", "--scheduler", address],
                             capture_output=True, text=True, env=cli_env, timeout=300)
    assert by_flag.returncode == 0 and "80 images: 80 ok" in by_flag.stdout, by_flag.stderr
    assert "dashboard: http" in by_flag.stderr
    env = dict(cli_env, DASK_SCHEDULER_ADDRESS=address)
    by_env = subprocess.run(cmd + [str(tmp_path / "b"), "--size", "16", "--chunk", "16"], capture_output=True,
                            text=True, env=env, timeout=300)
    assert by_env.returncode == 0 and "dashboard: http" in by_env.stderr, by_env.stderr
    assert tree_bytes(tmp_path / "a" / "16x16") == tree_bytes(tmp_path / "b" / "16x16")


def test_unreachable_scheduler_exits_2_naming_it(labelled_dir, tmp_path, cli_env):
    from conftest import free_port

    address = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.run([sys.executable, "-m", "imgtools.cli", "presize", str(labelled_dir), str(tmp_path / "o"),
                           "--scheduler", address], capture_output=True, text=True, env=cli_env, timeout=120)
    assert proc.returncode == 2 and address in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_dashboard_link_goes_through_the_jupyterhub_proxy(dask_client, monkeypatch, capsys):
    from imgtools.cluster import dashboard_link

    port = dask_client.scheduler_info()["services"]["dashboard"]
    assert dashboard_link(dask_client).endswith(f":{port}/status")
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/ada/")
    assert dashboard_link(dask_client) == f"/user/ada/proxy/{port}/status"


def test_get_client_prints_the_dashboard_link(dask_processes, capsys):
    from imgtools.cluster import get_client

    address, dash, _ = dask_processes
    client = get_client(address, show=True)
    try:
        assert f"dashboard: http://127.0.0.1:{dash}/status" in capsys.readouterr().out
    finally:
        client.close()


@pytest.mark.parametrize("args,message", [(["--scheduler", "foo://nowhere"], "foo://nowhere"),
                                          (["--scheduler", "tcp://127.0.0.1:notaport"], "notaport")])
def test_malformed_scheduler_address_exits_2_naming_it(labelled_dir, tmp_path, cli_env, args, message):
    proc = subprocess.run([sys.executable, "-m", "imgtools.cli", "presize", str(labelled_dir), str(tmp_path / "o"),
                           *args], capture_output=True, text=True, env=cli_env, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_scheduler_and_workers_together_are_refused(labelled_dir, tmp_path):
    from imgtools.errors import ConfigError

    with pytest.raises(ConfigError, match="not both"):
        imgtools.presize(str(labelled_dir), str(tmp_path / "o"), scheduler="tcp://127.0.0.1:1", workers=0)
    assert not (tmp_path / "o").exists()


def test_local_clusters_keep_malloc_adaptive_and_other_workers_are_tuned_on_their_first_task(dask_processes,
                                                                                             monkeypatch):
    """Dask's nanny sets MALLOC_TRIM_THRESHOLD_, which freezes glibc's mmap threshold (40-60% per image)."""
    from distributed import Client

    from imgtools.cluster import get_client
    from imgtools.memory import tune_allocator

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)  # as in a fresh shell
    client = get_client(workers=1)
    try:
        assert list(client.run(os.getenv, "MALLOC_TRIM_THRESHOLD_").values()) == [None]
        assert os.getenv("MALLOC_TRIM_THRESHOLD_") is None  # the nanny left this process's environment alone too
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
    address, _, _ = dask_processes
    with Client(address, timeout="20s") as remote:  # `dask worker`: started with Dask's default variable
        remote.wait_for_workers(2)
        assert set(remote.run(os.getenv, "MALLOC_TRIM_THRESHOLD_").values()) == {"65536"}
        first = remote.run(tune_allocator)
        assert all(first.values()) and not any(remote.run(tune_allocator).values())  # once per process
