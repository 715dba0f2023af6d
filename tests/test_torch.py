"""PyTorch reading imgtools outputs: DataLoader over the map-style dataset (in this process, in forked and
spawned workers), the chunk stream's order whatever the number of workers, mid-epoch resume, persistent
workers, and two real torch.distributed ranks (gloo). Marked `torch`: the Python 3.12 run leaves it out."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

import imgtools
from conftest import rows_of
from imgtools.errors import ConfigError

pytestmark = pytest.mark.torch

@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_over_the_dataset_yields_every_ok_image_once_with_its_label(stores, workers):
    ds = imgtools.open(stores["zarr"]).view("24x12")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns about arrays that are not writable
        batches = list(DataLoader(ds, batch_size=7, shuffle=True, num_workers=workers))
    xs = torch.cat([x for x, _ in batches]).numpy()
    ys = torch.cat([y for _, y in batches]).numpy()
    assert xs.shape == (80, 12, 24, 3) and xs.dtype == np.uint8
    rows = rows_of(ds, xs)
    assert sorted(rows) == sorted(ds.rows.tolist())
    assert (ys == ds.labels[rows]).all()


def _stream_rows(ds, workers: int, **options) -> list[list[int]]:
    stream = ds.stream("16x16", batch_size=8, seed=5, **options)
    return [rows_of(ds, x.numpy()) for x, _ in stream.loader(num_workers=workers)]


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes:UserWarning")  # 2-core CI
def test_stream_order_is_the_same_whatever_the_number_of_workers_and_covers_every_ok_image(stores):
    ds = imgtools.open(stores["zarr"])
    orders = {w: _stream_rows(ds, w) for w in (0, 1, 2, 3)}
    assert orders[0] == orders[1] == orders[2] == orders[3]
    flat = [r for batch in orders[0] for r in batch]
    assert sorted(flat) == ds.rows.tolist()
    plan = ds.stream("16x16", batch_size=8, seed=5).plan
    assert [b.tolist() for b in plan.batches(0)] == orders[0]


def test_two_workers_each_read_their_own_chunks(stores):
    ds = imgtools.open(stores["npy"])
    plan = ds.stream("16x16", batch_size=8, seed=1, streams=2, window_chunks=1).plan
    batches = plan.batches(0)
    chunks = [set(np.concatenate([plan.chunks_of(b) for b in batches[w::2]]).tolist()) for w in (0, 1)]
    assert len(chunks[0] & chunks[1]) <= 1  # at most the chunk at the boundary of the two segments


def test_stream_resumes_mid_epoch_with_exactly_the_rest(stores):
    ds = imgtools.open(stores["npy"])
    stream = ds.stream("16x16", batch_size=8, seed=2, normalize=((0.5,) * 3, (0.25,) * 3), layout="NCHW")
    stream.set_epoch(3)
    loader = stream.loader(num_workers=2)
    full = [(x.clone(), y.clone()) for x, y in loader]
    assert full[0][0].dtype == torch.float32 and full[0][0].shape == (8, 3, 16, 16)
    state = None
    for step, _ in enumerate(loader):
        if step == 2:
            state = loader.state_dict()
            break
    assert state["epoch"] == 3 and state["batches"] == 3
    fresh = ds.stream("16x16", batch_size=8, seed=2, normalize=((0.5,) * 3, (0.25,) * 3), layout="NCHW")
    resumed_loader = fresh.loader(num_workers=2)  # an odd resume point: worker 0 makes batch 3
    resumed_loader.load_state_dict(state)
    rest = list(resumed_loader)
    assert len(rest) == len(full) - 3
    for (x, y), (fx, fy) in zip(rest, full[3:]):
        assert torch.equal(x, fx) and torch.equal(y, fy)
    mid = resumed_loader.state_dict()
    assert mid["batches"] == len(full)
    with pytest.raises(ConfigError, match="seed"):
        ds.stream("16x16", batch_size=8, seed=9).load_state_dict(state)


def _rank_main(rank: int, world: int, dest: str, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ds = imgtools.open(dest)
        stream = ds.stream("16x16", batch_size=8, seed=11)  # rank and world size from torch.distributed
        stream.set_epoch(1)
        rows = [rows_of(ds, x.numpy()) for x, _ in stream.loader(num_workers=2)]
        counts = [torch.tensor([len(rows)]) for _ in range(world)]
        dist.all_gather(counts, torch.tensor([len(rows)]))  # would hang if one rank had fewer batches
        np.save(os.path.join(out, f"rank{rank}.npy"), np.array([r for batch in rows for r in batch]))
    finally:
        dist.destroy_process_group()


def test_two_distributed_ranks_see_disjoint_equal_shares_that_are_every_ok_image_once(stores, tmp_path, monkeypatch):
    from imgtools.testing import free_port

    # the spawned ranks import this module afresh with this sys.path: its `conftest` must be tests/conftest.py, not
    # the repository's (collecting imgtools/ doctests puts the repository root first)
    monkeypatch.syspath_prepend(os.path.dirname(os.path.abspath(__file__)))
    mp.spawn(_rank_main, args=(2, stores["zarr"], free_port(), str(tmp_path)), nprocs=2, join=True)
    a, b = np.load(tmp_path / "rank0.npy"), np.load(tmp_path / "rank1.npy")
    ds = imgtools.open(stores["zarr"])
    assert len(a) == len(b) == 40 and not set(a) & set(b)
    assert sorted(np.concatenate([a, b]).tolist()) == ds.rows.tolist()


def test_persistent_workers_follow_set_epoch_and_resume_points(stores):
    ds = imgtools.open(stores["npy"])
    stream = ds.stream("16x16", batch_size=8, seed=6)
    loader = stream.loader(num_workers=2, persistent_workers=True)
    expected = {e: [b.tolist() for b in stream.plan.batches(e)] for e in (0, 1)}
    for epoch in (0, 1):
        stream.set_epoch(epoch)
        assert [rows_of(ds, x.numpy()) for x, _ in loader] == expected[epoch]
    stream.load_state_dict({**stream.state_dict(0), "epoch": 0, "batches": 5})
    assert [rows_of(ds, x.numpy()) for x, _ in loader] == expected[0][5:]


def test_a_dataset_pickled_into_spawned_workers_reopens_its_files_there(stores):
    ds = imgtools.open(stores["zarr"]).view("24x12")
    ds[0]  # handles opened here are not what the workers use
    loader = DataLoader(ds, batch_size=16, num_workers=1, multiprocessing_context="spawn")
    xs = torch.cat([x for x, _ in loader]).numpy()
    assert sorted(rows_of(ds, xs)) == ds.rows.tolist()
