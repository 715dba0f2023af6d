"""SOURCE listed on a cluster's workers (imgtools.cluster.map_on_workers handed to imgtools.listparts): a
folder's units and a Parquet manifest's runs of row groups, one task each, give the listing of this
process row for row; a bad row group is refused naming it, from the worker that read it; a worker killed
while it lists loses nothing (real `dask scheduler` / `dask worker` processes)."""

from __future__ import annotations

import os
import pathlib
import signal
import sys

import cloudpickle
import pandas as pd
import pytest
from distributed import Client, WorkerPlugin, get_task_stream
from test_listparts import JPEG, _garbled_row_group, _tree

import imgtools
from conftest import tree_bytes
from imgtools import folders, listparts
from imgtools.cluster import Placement
from imgtools.listing import list_source
from imgtools.location import Location

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the plugin below reaches the workers by value


def _manifest(root: pathlib.Path, rows: int = 9) -> str:
    """A Parquet manifest of ``rows`` images in row groups of 2 (labels with gaps)."""
    for i in range(rows):
        (root / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        (root / f"c{i % 3}" / f"{i}.jpg").write_bytes(JPEG)
    frame = pd.DataFrame({"path": [f"c{i % 3}/{i}.jpg" for i in range(rows)],
                          "label": [None if i % 4 == 1 else f"c{i % 3}" for i in range(rows)]})
    frame.to_parquet(root / "list.parquet", index=False, row_group_size=2)
    return str(root / "list.parquet")


@pytest.mark.parametrize(("kind", "tasks"), [("folder", 512), ("folder", 3), ("parquet manifest", 512)])
def test_a_source_listed_on_the_workers_equals_the_listing_of_this_process(dask_client, tmp_path, monkeypatch, kind,
                                                                            tasks):
    monkeypatch.setattr(listparts, "PART_ROWS", 3)  # runs of two row groups of 2: five parts of the manifest
    monkeypatch.setattr(listparts, "LISTING_TASKS", tasks)  # a folder's units grouped into at most this many tasks
    monkeypatch.setattr(folders, "UNIT_FILES", 2)
    source = str(_tree(tmp_path / "src")) if kind == "folder" else _manifest(tmp_path / "src")
    location = Location.resolve(str(tmp_path / "dest"))
    with get_task_stream(dask_client) as stream:
        parts = listparts.write_listing(source, location, mapper=Placement(existing=dask_client).mapper("list-test"))
    expected = list_source(source).items
    listed_there = [t for t in stream.data if str(t["key"]).startswith("list-test-")]
    assert len(listed_there) == min(tasks, len(parts.counts)) and len(parts.counts) > 2  # a task a unit or run
    pd.testing.assert_frame_equal(listparts.load_listing(location, parts).items, expected)
    assert parts.digest == f"{listparts.rows_digest(expected):016x}"
    assert parts.label_names == tuple(sorted(set(expected["label"].dropna())))


def test_a_garbled_row_group_read_on_a_worker_is_refused_naming_it_and_leaves_no_dest(dask_client, tmp_path,
                                                                                       monkeypatch):
    monkeypatch.setattr(listparts, "PART_ROWS", 100)  # each row group of 100 read by its own task
    path = tmp_path / "m.parquet"
    _garbled_row_group(path)
    with pytest.raises(imgtools.SourceError) as err:
        imgtools.presize(str(path), str(tmp_path / "out.zarr"), sizes=[8], client=dask_client, progress=False)
    assert "cannot be read in row group 1 (rows 100 to 199)" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out.zarr").exists()


class _DieWhenListing(WorkerPlugin):
    """Kills its worker (and the worker's nanny) as the first listing task of the cluster starts on it."""

    def __init__(self, flag: str) -> None:
        self.flag = flag

    def transition(self, key, start, finish, **kwargs) -> None:
        if finish != "executing" or not str(key).startswith("imgtools-listing-"):
            return
        try:
            os.close(os.open(self.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))  # one worker only, ever
        except FileExistsError:
            return
        os.killpg(os.getpgid(0), signal.SIGKILL)


def test_a_worker_killed_while_it_lists_source_loses_nothing(tmp_path, dask_processes):
    source = tmp_path / "src"
    for i in range(48):  # 12 sub-folders: 12 listing tasks on 2 workers
        (source / f"k{i % 12:02d}").mkdir(parents=True, exist_ok=True)
        (source / f"k{i % 12:02d}" / f"{i}.jpg").write_bytes(JPEG)
    config = imgtools.PresizeConfig.build(sizes=[8], chunk=8)
    local = tmp_path / "local.zarr"
    imgtools.presize(str(source), str(local), config=config, workers=0, progress=False)
    address, _, workers = dask_processes
    flag = tmp_path / "killed"
    dest = tmp_path / "remote.zarr"
    with Client(address, timeout="30s", set_as_default=False) as client:
        client.wait_for_workers(2, timeout=60)
        client.register_plugin(_DieWhenListing(str(flag)))
        report = imgtools.presize(str(source), str(dest), config=config, client=client, progress=False)
    assert flag.exists() and sum(w.poll() is not None for w in workers) == 1  # one worker died listing
    assert report.ok == 48 and report.failed == 0
    assert tree_bytes(dest) == tree_bytes(local)


def test_a_source_on_this_disk_is_listed_here_when_the_scheduler_is_on_another_host(dask_client):
    from types import SimpleNamespace

    remote = SimpleNamespace(scheduler=SimpleNamespace(address="tcp://10.255.0.7:8786"))
    assert Placement(existing=remote).mapper(this_disk=True) is None  # its workers may not see this disk
    assert Placement(existing=remote).mapper(this_disk=False) is not None  # a bucket: they see it as we do
    assert Placement(existing=dask_client).mapper(this_disk=True) is not None  # a local cluster sees it
