"""Where a job runs, decided in one place (imgtools.cluster.where_to_run) for presize, inspect and derive:
a given client, a named scheduler (or $DASK_SCHEDULER_ADDRESS), this process, the current client, or a
new local cluster. Real Dask throughout; cases that need a process without a current client run in a
fresh Python."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

import imgtools
from conftest import tree_bytes
from imgtools.cluster import EarlyCluster, Placement, where_to_run
from imgtools.config import PresizeConfig
from imgtools.derive import derive
from imgtools.errors import ConfigError

BAD_ADDRESSES = ["foo://nowhere", "tcp://127.0.0.1:notaport"]


def fresh_python(script: str, *args: str, env: dict[str, str]) -> object:
    """Run ``script`` in a new interpreter (no current Dask client there); it prints one JSON value."""
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


WHERE = """
import json, sys
from imgtools.cluster import where_to_run

kwargs, tasks = json.loads(sys.argv[1]), int(sys.argv[2])
with where_to_run(**kwargs) as where, where.client(tasks) as client:
    if client is None:
        print(json.dumps("in process"))
    elif client.cluster is not None:
        print(json.dumps(f"local cluster of {len(client.cluster.workers)}"))
    else:
        print(json.dumps(client.scheduler.address))
"""


@pytest.mark.parametrize("kwargs,tasks,expected", [
    ({}, 1, "in process"),                         # one task, no client: a cluster would take longer than the work
    ({"workers": 0}, 5, "in process"),
    ({"workers": 1}, 1, "local cluster of 1"),     # asked for workers: a cluster, even for one task
    ({"workers": 1}, 3, "local cluster of 1"),
])
def test_without_a_current_client_the_job_runs_here_or_on_a_new_local_cluster(kwargs, tasks, expected, cli_env):
    assert fresh_python(WHERE, json.dumps(kwargs), str(tasks), env=cli_env) == expected


@pytest.mark.parametrize("kwargs,tasks,on_env_scheduler", [
    ({}, 1, True),                  # honoured, also for one task
    ({}, 4, True),
    ({"workers": 0}, 4, False),     # only when workers is not given
    ({"workers": 1}, 4, False),
])
def test_dask_scheduler_address_is_honoured_only_without_workers(kwargs, tasks, on_env_scheduler, dask_client,
                                                                cli_env):
    address = dask_client.scheduler.address
    got = fresh_python(WHERE, json.dumps(kwargs), str(tasks), env=dict(cli_env, DASK_SCHEDULER_ADDRESS=address))
    assert (got == address) is on_env_scheduler, got


@pytest.mark.parametrize("workers", [None, 0, 3])
@pytest.mark.parametrize("tasks", [1, 5])
def test_a_given_client_is_used_for_every_job_whatever_workers_says(dask_client, workers, tasks):
    with where_to_run(client=dask_client, workers=workers) as where, where.client(tasks) as client:
        assert client is dask_client and not where.owned
    assert dask_client.status == "running"  # not ours to close


@pytest.mark.parametrize("tasks", [1, 5])
def test_the_current_client_is_honoured_when_workers_is_none(dask_client, tasks):
    with dask_client.as_current(), where_to_run() as where, where.client(tasks) as client:
        assert client is dask_client and not where.owned


def test_the_current_client_wins_over_dask_scheduler_address(dask_client, monkeypatch):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "foo://nowhere")  # would raise if it were tried
    with dask_client.as_current():
        assert where_to_run() == Placement(existing=dask_client)


def test_workers_0_runs_in_this_process_even_with_a_current_client(dask_client):
    with dask_client.as_current(), where_to_run(workers=0) as where, where.client(100) as client:
        assert client is None


def test_a_job_of_no_tasks_runs_nowhere(dask_client):
    with where_to_run(client=dask_client) as where, where.client(0) as client:
        assert client is None


def test_an_early_cluster_serves_the_jobs_that_need_one_and_closes_after():
    with EarlyCluster(1) as early:
        with where_to_run(client=early, workers=1) as where:
            with where.client(0) as client:  # no work: nothing waits for the cluster
                assert client is None
            with where.client(2) as client:
                assert client.submit(sum, [1, 2]).result() == 3
        assert client.status == "running"  # the caller's to close, not the job's
    assert client.status == "closed"


@pytest.mark.parametrize("dashboard", [True, False])
def test_an_early_cluster_has_a_dashboard_only_when_asked(dashboard):
    with EarlyCluster(1, dashboard=dashboard) as early:
        port = early.client().scheduler_info()["services"]["dashboard"]  # the HTTP server runs either way
        try:
            status = urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10).status
        except urllib.error.HTTPError as refused:
            status = refused.code
        assert status == (200 if dashboard else 404)
        assert early.client().submit(sum, [1, 2]).result() == 3


def test_an_early_cluster_of_no_workers_is_refused_naming_them():
    with pytest.raises(ConfigError, match="workers 0"):
        EarlyCluster(0)


def test_a_named_scheduler_is_connected_at_once_used_and_closed_at_the_end(dask_client):
    address = dask_client.scheduler.address
    with dask_client.as_current():  # a named scheduler comes before the current client
        where = where_to_run(scheduler=address)
    assert where.owned and where.existing is not dask_client and where.existing.status == "running"
    assert where.existing.scheduler.address == address
    with where, where.client(1) as client:
        assert client is where.existing
    assert where.existing.status == "closed" and dask_client.status == "running"


@pytest.mark.parametrize("address", BAD_ADDRESSES)
def test_a_bad_scheduler_address_is_a_config_error_naming_it(address):
    with pytest.raises(ConfigError, match=re.escape(address)):
        where_to_run(scheduler=address)


@pytest.mark.parametrize("workers", [0, 2])
def test_scheduler_and_workers_together_are_refused_naming_both(workers):
    with pytest.raises(ConfigError, match=rf"'tcp://127\.0\.0\.1:1'.*{workers}.*not both"):
        where_to_run(scheduler="tcp://127.0.0.1:1", workers=workers)


def test_negative_workers_are_refused():
    with pytest.raises(ConfigError, match="-1"):
        where_to_run(workers=-1)


@pytest.mark.parametrize("entry", ["presize", "inspect", "derive"])
def test_every_entry_point_refuses_a_bad_scheduler_before_touching_anything(entry, labelled_dir, tmp_path):
    dest = tmp_path / "o"
    if entry == "derive":
        imgtools.presize(str(labelled_dir), str(dest), sizes=[32], workers=0, progress=False)
    before = tree_bytes(tmp_path, dirs=True)
    calls = {"presize": lambda: imgtools.presize(str(labelled_dir), str(dest), scheduler="foo://nowhere"),
             "inspect": lambda: imgtools.inspect(str(tmp_path / "missing"), scheduler="foo://nowhere"),  # not listed
             "derive": lambda: derive(str(dest), "32x32", [16], scheduler="foo://nowhere")}
    with pytest.raises(ConfigError, match="foo://nowhere"):
        calls[entry]()
    assert tree_bytes(tmp_path, dirs=True) == before


@pytest.mark.parametrize("entry", ["inspect", "derive"])
def test_inspect_and_derive_also_refuse_scheduler_and_workers_together(entry, tmp_path):
    call = imgtools.inspect if entry == "inspect" else lambda s, **k: derive(s, "32x32", [16], **k)
    with pytest.raises(ConfigError, match="not both"):
        call(str(tmp_path / "missing"), scheduler="tcp://127.0.0.1:1", workers=0)


def test_inspect_runs_a_one_partition_job_on_a_current_or_given_client(labelled_dir, dask_client):
    from distributed import get_task_stream

    with dask_client.as_current(), get_task_stream(client=dask_client) as current:
        imgtools.inspect(str(labelled_dir))  # 80 files: one partition
    with get_task_stream(client=dask_client) as given:
        report = imgtools.inspect(str(labelled_dir), client=dask_client, workers=0)  # the client wins
    assert len(current.data) >= 1 and len(given.data) >= 1
    assert len(report.files) == 80 and report.failed.empty


def test_derive_runs_on_the_current_client(labelled_dir, tmp_path, dask_client):
    from distributed import get_task_stream

    dest = tmp_path / "o"
    imgtools.presize(str(labelled_dir), str(dest), config=PresizeConfig.build(sizes=[32], chunk=16), workers=0,
                     progress=False)
    with dask_client.as_current(), get_task_stream(client=dask_client) as stream:
        report = derive(str(dest), "32x32", [16])
    assert len(stream.data) >= 5 and report.sizes == ("16x16",)  # 5 chunks of 16 images, each a task or more


RAN_HERE = """
import importlib, json, os, sys
import imgtools

entry, source, dest = sys.argv[1:4]
module = importlib.import_module(f"imgtools.{entry}")
name = "inspect_files" if entry == "inspect" else "resample_block"
real, pids = getattr(module, name), []

def spy(*args, **kwargs):  # runs here, or pickled to a worker process (where its list is another)
    if len(args[0]):  # real work, not dask's call on an empty block to learn the output's type
        pids.append(os.getpid())
    return real(*args, **kwargs)

setattr(module, name, spy)
ran_here = []
for kwargs in json.loads(sys.argv[4]):
    pids.clear()
    if entry == "inspect":
        imgtools.inspect(source, **kwargs)
    else:
        imgtools.presize(source, dest, config=imgtools.PresizeConfig.build(sizes=[32], chunk=kwargs.pop("chunk")),
                         workers=0, progress=False, overwrite=True)
        module.derive(dest, "32x32", [16], **kwargs)
    ran_here.append(bool(pids) and set(pids) == {os.getpid()})
print(json.dumps(ran_here))
"""


@pytest.mark.parametrize("entry,one_task,many_tasks", [
    ("inspect", {}, {"partition": 20, "workers": 1}),
    ("derive", {"chunk": 128}, {"chunk": 16, "workers": 1}),
])
def test_inspect_and_derive_run_a_one_task_job_in_this_process(entry, one_task, many_tasks, labelled_dir, tmp_path,
                                                                cli_env):
    ran_here = fresh_python(RAN_HERE, entry, str(labelled_dir), str(tmp_path / "o"), json.dumps([one_task, many_tasks]),
                            env=cli_env)
    assert ran_here == [True, False]  # the one-task job ran in this process; the other, on a local cluster, did not
