"""Reading outputs back: one image at one image's cost in every array layout (checked against zarr's and
NumPy's own readers), the epoch plan's shares and order, and stores in buckets through the latency/fault
proxy with the local disk cache. No PyTorch here (see test_torch.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import imgtools
from conftest import reference
from imgtools.chunkcache import CacheWarning, DiskCache
from imgtools.errors import ConfigError, SourceError
from imgtools.order import EpochPlan
from imgtools.testing import Proxy

LAYOUTS = ["zarr", "zarr-lz4", "zarr-zstd", "npy"]
SIZES = ["16x16", "24x12"]


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
    shares = [EpochPlan(rows, chunk=16, batch_size=6, rank=r, world_size=world, seed=4).batches(3)
              for r in range(world)]
    assert len({len(s) for s in shares}) == 1  # the same number of batches on every rank
    assert len({sum(map(len, s)) for s in shares}) == 1
    seen = np.concatenate([np.concatenate(s) for s in shares])
    assert set(seen.tolist()) == set(rows.tolist())
    assert len(seen) == world * -(-n // world)  # padded by repeats only up to the next multiple
    if n % world == 0:
        assert sorted(seen.tolist()) == rows.tolist()
    dropped = [b for r in range(world)
               for b in EpochPlan(rows, 16, 6, rank=r, world_size=world, drop_last=True).batches(0)]
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
    np.testing.assert_array_equal(np.concatenate([x for _, x in tiny.chunks("16x16")]),
                                  reference(stores["npy"], "16x16"))
    assert sum(p.stat().st_size for p in (tmp_path / "tiny").rglob("*") if p.is_file()) <= 10_000


def test_importing_imgtools_does_not_import_torch():
    import subprocess
    import sys

    code = "import imgtools, sys; ds = imgtools.Dataset; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
