"""Reading outputs back for training: one image at one image's cost in every array layout (checked against
zarr and NumPy's own readers), PyTorch's DataLoader over the map-style dataset and over the chunk stream,
two real torch.distributed ranks, mid-epoch resume, and stores in buckets through the latency/fault proxy
with the local disk cache."""

from __future__ import annotations

import hashlib
import os
import pathlib
import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import zarr
from PIL import Image
from torch.utils.data import DataLoader

import imgtools
from imgtools.chunkcache import CacheWarning, DiskCache
from imgtools.errors import ConfigError, SourceError
from imgtools.order import EpochPlan
from imgtools.testing import Proxy

LAYOUTS = ["zarr", "zarr-lz4", "zarr-zstd", "npy"]
SIZES = ["16x16", "24x12"]


def reference(dest: str, size: str) -> np.ndarray:
    """Every row of one size, read by zarr itself or by np.load."""
    if pathlib.Path(dest, "zarr.json").exists():
        return zarr.open_group(dest, mode="r")[f"{size}/images"][:]
    parts = sorted(pathlib.Path(dest, size).glob("part-*.npy"))
    return np.concatenate([np.load(p) for p in parts])


def digest(img) -> str:
    return hashlib.sha1(np.ascontiguousarray(np.asarray(img)).tobytes()).hexdigest()


def rows_of(ds, xs) -> list[int]:
    """Manifest rows of the images in ``xs`` (the test images are all different)."""
    index = {digest(ds.image(int(r), ds.size)): int(r) for r in ds.rows}
    assert len(index) == len(ds.rows)
    return [index[digest(x)] for x in xs]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_random_images_and_gathers_equal_the_reference_reader_and_are_writable(stores, layout, size):
    ds = imgtools.open(stores[layout])
    ref = reference(stores[layout], size)
    picks = np.random.default_rng(0).integers(0, len(ds.manifest), 60)
    for row in picks:
        img = ds.image(int(row), size)
        np.testing.assert_array_equal(img, ref[row])
        assert img.flags.writeable
        img[:] = 7  # a copy of its own, not a view of a cache
        np.testing.assert_array_equal(ds.image(int(row), size), ref[row])
    np.testing.assert_array_equal(ds.reader.gather(size, picks), ref[picks])
    for k in range(-(-len(ref) // 16)):
        np.testing.assert_array_equal(ds.reader.chunk_images(size, k), ref[16 * k : 16 * (k + 1)])


@pytest.mark.parametrize("layout", ["zarr", "npy"])
def test_uncompressed_layouts_read_one_image_without_reading_its_chunk(stores, layout):
    ds = imgtools.open(stores[layout])
    part = ds.reader.part("24x12", 2)
    assert part.raw and part.slots == 16
    ds.image(40, "24x12")
    assert ds.reader.proc.memory.get(("24x12", 2)) is None  # nothing decoded whole
    assert not imgtools.open(stores["zarr-lz4"]).reader.part("24x12", 2).raw


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


def test_a_store_that_is_not_complete_is_refused(stores, tmp_path):
    import shutil

    broken = tmp_path / "copy"
    shutil.copytree(stores["zarr"], broken)
    (broken / "manifest.parquet").unlink()
    with pytest.raises(SourceError, match="not a complete imgtools output"):
        imgtools.open(str(broken))


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("n", [80, 77, 5])
def test_epoch_plan_gives_ranks_equal_shares_that_cover_every_row(n, world):
    rows = np.sort(np.random.default_rng(n).choice(200, n, replace=False))
    shares = [EpochPlan(rows, chunk=16, batch_size=6, rank=r, world_size=world, seed=4).batches(3) for r in range(world)]
    assert len({len(s) for s in shares}) == 1  # the same number of batches on every rank
    assert len({sum(map(len, s)) for s in shares}) == 1
    seen = np.concatenate([np.concatenate(s) for s in shares])
    assert set(seen.tolist()) == set(rows.tolist())
    assert len(seen) == world * -(-n // world)  # padded by repeats only up to the next multiple
    if n % world == 0:
        assert sorted(seen.tolist()) == rows.tolist()
    dropped = [b for r in range(world) for b in EpochPlan(rows, 16, 6, rank=r, world_size=world, drop_last=True).batches(0)]
    kept = np.concatenate(dropped) if dropped else np.empty(0, np.int64)
    assert len(np.unique(kept)) == len(kept) and all(len(b) == 6 for b in dropped)  # no repeats, full batches


def test_epoch_plan_is_deterministic_reads_chunks_together_and_changes_with_the_epoch():
    plan = EpochPlan(np.arange(320), chunk=32, batch_size=16, window_chunks=1, streams=1)
    a, b = plan.batches(0), plan.batches(0)
    assert all((x == y).all() for x, y in zip(a, b)) and len(a) == 20
    assert not all((x == y).all() for x, y in zip(a, plan.batches(1)))
    assert all(len(plan.chunks_of(batch)) == 1 for batch in a)  # one-chunk windows: a batch reads one chunk
    with pytest.raises(ConfigError, match="rank 2 is not in 0..1"):
        EpochPlan(np.arange(4), 2, 2, rank=2, world_size=2)


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


def test_two_distributed_ranks_see_disjoint_equal_shares_that_are_every_ok_image_once(stores, tmp_path):
    from imgtools.testing import free_port

    mp.spawn(_rank_main, args=(2, stores["zarr"], free_port(), str(tmp_path)), nprocs=2, join=True)
    a, b = np.load(tmp_path / "rank0.npy"), np.load(tmp_path / "rank1.npy")
    ds = imgtools.open(stores["zarr"])
    assert len(a) == len(b) == 40 and not set(a) & set(b)
    assert sorted(np.concatenate([a, b]).tolist()) == ds.rows.tolist()


# ---- stores in a bucket -----------------------------------------------------------------------------------
@pytest.fixture
def remote_store(stores, bucket):
    """The zarr and npy stores uploaded to a real GCS emulator / moto bucket."""
    url, options, server = bucket
    fs = server.filesystem()
    for layout in ("zarr", "npy"):
        fs.put(stores[layout], f"{url.split('://')[1]}/{layout}", recursive=True)
    return url, options, server


@pytest.mark.parametrize("layout", ["zarr", "npy"])
def test_bucket_reads_through_faults_equal_local_reads_and_fill_the_disk_cache(remote_store, stores, layout, tmp_path):
    url, options, server = remote_store
    local = imgtools.open(stores[layout])
    cache = DiskCache(tmp_path / "cache", max_bytes=1 << 30)
    with Proxy(server.endpoint, latency=(0.001, 0.005), error_rate=0.05, drop_rate=0.03, seed=3) as proxy:
        ds = imgtools.open(f"{url}/{layout}", storage_options=server.options(proxy.endpoint), cache=cache)
        for row in (0, 17, 79, 40):  # ranged reads before anything is cached
            np.testing.assert_array_equal(ds.image(row, "24x12"), local.image(row, "24x12"))
        assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))
        first = [(x, y) for x, y in ds.batches("24x12", 10, seed=1)]
        cached = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
        assert len(cached) == 6  # every chunk of the size read, on local disk
        requests = sum(proxy.counts.values())
        second = [(x, y) for x, y in ds.batches("24x12", 10, seed=1)]
        for row in np.random.default_rng(1).integers(0, 81, 30):
            np.testing.assert_array_equal(ds.image(int(row), "24x12"), local.image(int(row), "24x12"))
        assert sum(proxy.counts.values()) == requests  # the second epoch and random reads came from the cache
    expected = list(local.batches("24x12", 10, seed=1))
    for got in (first, second):
        assert all((x == ex).all() and (y == ey).all() for (x, y), (ex, ey) in zip(got, expected))


def test_a_rewritten_store_never_serves_stale_chunks(bucket, labelled_dir, tmp_path):
    url, options, server = bucket
    dest = f"{url}/out.zarr"
    cfg = imgtools.PresizeConfig.build(sizes=[16], mode="crop", chunk=16)
    imgtools.presize(str(labelled_dir), dest, config=cfg, storage_options=options, workers=0, progress=False)
    cache = DiskCache(tmp_path / "cache")
    before = imgtools.open(dest, storage_options=options, cache=cache)
    old = np.concatenate([x for _, x in before.chunks()])
    for path in sorted(labelled_dir.rglob("*.png")):  # new pixels under the same names
        Image.new("RGB", (50, 40), (9, 99, 199)).save(path)
    imgtools.presize(str(labelled_dir), dest, config=cfg, storage_options=options, workers=0, progress=False,
                     overwrite=True)
    after = imgtools.open(dest, storage_options=options, cache=cache)
    new = np.concatenate([x for _, x in after.chunks()])
    fresh = np.concatenate([x for _, x in imgtools.open(dest, storage_options=options, cache=False).chunks()])
    np.testing.assert_array_equal(new, fresh)
    assert not np.array_equal(new, old)


def test_an_unwritable_cache_warns_once_and_reads_go_to_the_store(remote_store, stores, tmp_path):
    url, options, _ = remote_store
    blocker = tmp_path / "file-not-folder"
    blocker.write_bytes(b"")
    ds = imgtools.open(f"{url}/zarr", storage_options=options, cache=DiskCache(blocker / "cache"))
    with pytest.warns(CacheWarning, match="cannot be written") as caught:
        got = np.concatenate([x for _, x in ds.chunks("16x16")])
    assert [type(w.message) for w in caught] == [CacheWarning]
    np.testing.assert_array_equal(got, reference(stores["zarr"], "16x16"))
    tiny = imgtools.open(f"{url}/npy", storage_options=options, cache=DiskCache(tmp_path / "tiny", max_bytes=10_000))
    np.testing.assert_array_equal(np.concatenate([x for _, x in tiny.chunks("16x16")]), reference(stores["npy"], "16x16"))
    assert sum(p.stat().st_size for p in (tmp_path / "tiny").rglob("*") if p.is_file()) <= 10_000


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


def test_importing_imgtools_does_not_import_torch():
    import subprocess
    import sys

    code = "import imgtools, sys; ds = imgtools.Dataset; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_a_dataset_pickled_into_spawned_workers_reopens_its_files_there(stores):
    ds = imgtools.open(stores["zarr"]).view("24x12")
    ds[0]  # handles opened here are not what the workers use
    loader = DataLoader(ds, batch_size=16, num_workers=1, multiprocessing_context="spawn")
    xs = torch.cat([x for x, _ in loader]).numpy()
    assert sorted(rows_of(ds, xs)) == ds.rows.tolist()
