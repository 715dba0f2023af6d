"""Reading presized output back for training, against decoding the originals, in one run (ratios).

    python -m benchmarks.reading --data ../shared/datasets/imagenet-sample [--repeat 3] [--png reading.png]

The sample's JPEGs, listed ``--repeat`` times (3000 images), are presized once per geometry (64x64 squash,
224x224 crop) to zarr. Then, each the median of ``--rounds`` epochs:
1. ``DataLoader(PlainJpegs, batch_size=64, shuffle=True, num_workers=2)``: a dataset that decodes and
   resizes the original JPEG for every item (the baseline: what people do without presizing);
2. the same DataLoader over ``imgtools.open(DEST).view(size)`` (map-style, one image per item);
3. ``ds.batches(size, 64)`` (whole chunks, one process);
4. ``ds.stream(size, 64).loader()`` (the chunk-ordered PyTorch path: a DataLoader over the stream, in the
   main process), and the same with 2 persistent workers (started before timing).
From a bucket: the demo-shaped store (64 + 224 crop, chunks of 64) uploaded to moto's S3 server, read
through ``imgtools.testing.Proxy`` adding 20-50 ms to every request: ``ds.batches`` epoch 1 (empty disk
cache) and 2, the stream's epochs 1 and 2, and ``ds[i]`` at random after an epoch; and epoch 1 without
the cache, one chunk at a time (the path before prefetching). Prints two tables.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import tempfile
import time

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

import imgtools
from imgtools.chunkcache import DiskCache

BATCH = 64
GEOMETRIES = [("64x64 squash", "squash", 64), ("224x224 crop", "crop", 224)]


class PlainJpegs:
    """The baseline map-style dataset: decode and resize the original file for every item."""

    def __init__(self, paths: list[str], mode: str, side: int):
        self.paths, self.mode, self.side = paths, mode, side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img = Image.open(self.paths[i]).convert("RGB")
        if self.mode == "crop":
            img = ImageOps.fit(img, (self.side, self.side))
        else:
            img = img.resize((self.side, self.side))
        return np.asarray(img).copy(), 0


def _rate(epoch, rounds: int) -> float:
    """Median images/s of ``rounds`` calls of ``epoch()`` (which returns the images it read)."""
    rates = []
    for _ in range(rounds):
        t = time.perf_counter()
        n = epoch()
        rates.append(n / (time.perf_counter() - t))
    return statistics.median(rates)


def _count(batches) -> int:
    return sum(len(b[0]) for b in batches)


def local_table(paths: list[str], work: pathlib.Path, rounds: int) -> pd.DataFrame:
    from torch.utils.data import DataLoader

    manifest = work / "inputs.csv"
    pd.DataFrame({"path": paths}).to_csv(manifest, index=False)
    rows = []
    for name, mode, side in GEOMETRIES:
        dest = work / f"{mode}{side}.zarr"
        cfg = imgtools.PresizeConfig.build(sizes=[side], mode=mode, labels="none")
        imgtools.presize(str(manifest), str(dest), config=cfg, workers=2, progress=False)
        ds = imgtools.open(str(dest))
        size = ds.sizes[0]
        plain = _rate(lambda mode=mode, side=side: _count(DataLoader(PlainJpegs(paths, mode, side), batch_size=BATCH,
                                                                     shuffle=True, num_workers=2)), rounds)
        mapped = _rate(lambda ds=ds, size=size: _count(DataLoader(ds.view(size), batch_size=BATCH, shuffle=True,
                                                                  num_workers=2)), rounds)
        batches = _rate(lambda ds=ds, size=size: _count(ds.batches(size, BATCH)), rounds)
        stream = ds.stream(size, BATCH)
        streamed = _rate(lambda stream=stream: _count(stream.loader()), rounds)
        persistent = stream.loader(num_workers=2, persistent_workers=True)
        _count(persistent)  # the workers start once
        workers = _rate(lambda persistent=persistent: _count(persistent), rounds)
        rows.append({"geometry": f"{name} (chunk {ds.config.chunk})", "DataLoader, originals": plain,
                     "DataLoader, imgtools map-style": mapped, "x originals": mapped / plain,
                     "ds.batches": batches, "stream": streamed, "stream / batches": streamed / batches,
                     "stream, 2 persistent workers": workers, "workers / batches": workers / batches})
    return pd.DataFrame(rows)


def bucket_table(paths: list[str], work: pathlib.Path, latency: tuple[float, float], rounds: int) -> pd.DataFrame:
    from imgtools.testing import Proxy, s3_server

    manifest = work / "inputs.csv"
    pd.DataFrame({"path": paths}).to_csv(manifest, index=False)
    dest = work / "demo.zarr"
    cfg = imgtools.PresizeConfig.build(sizes=[64, 224], mode="crop", labels="none")
    imgtools.presize(str(manifest), str(dest), config=cfg, workers=2, progress=False)
    rows = []
    with s3_server() as server:
        server.make_bucket("bench")
        server.filesystem().put(str(dest), "bench/demo.zarr", recursive=True)
        with Proxy(server.endpoint, latency=latency) as proxy:
            options = server.options(proxy.endpoint)
            url = "s3://bench/demo.zarr"
            for size in ("64x64", "224x224"):
                cache = DiskCache(work / f"cache-{size}")
                ds = imgtools.open(url, storage_options=options, cache=cache)
                n = len(ds)
                row = {"size": size, "images": n}
                row["batches, epoch 1"] = _rate(lambda ds=ds, size=size: _count(ds.batches(size, BATCH)), 1)
                row["batches, epoch 2"] = _rate(lambda ds=ds, size=size: _count(ds.batches(size, BATCH)), rounds)
                picks = np.random.default_rng(0).integers(0, n, 2000)
                view = ds.view(size)
                row["ds[i] at random, after"] = _rate(
                    lambda picks=picks, view=view: sum(1 for i in picks if view[int(i)] is not None), rounds)
                fresh = imgtools.open(url, storage_options=options, cache=DiskCache(work / f"cache-stream-{size}"))
                stream = fresh.stream(size, BATCH)
                row["stream, epoch 1"] = _rate(lambda stream=stream: _count(stream.loader()), 1)
                row["stream, epoch 2"] = _rate(lambda stream=stream: _count(stream.loader()), rounds)
                bare = imgtools.open(url, storage_options=options, cache=False)
                row["batches, no cache, no prefetch"] = _rate(
                    lambda bare=bare, size=size: _count(_batches_without_prefetch(bare, size)), 1)
                rows.append(row)
    return pd.DataFrame(rows)


def _batches_without_prefetch(ds, size: str):
    """Whole chunks one after another, nothing ahead (what ``ds.batches`` did before prefetching)."""
    for _, x in ds.chunks(size, prefetch=0):
        yield x, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/datasets/imagenet-sample", help="folder of JPEGs")
    parser.add_argument("--repeat", type=int, default=3, help="times the file list is repeated")
    parser.add_argument("--rounds", type=int, default=3, help="epochs per candidate (median)")
    parser.add_argument("--latency", type=float, nargs=2, default=(0.02, 0.05), metavar=("MIN", "MAX"))
    parser.add_argument("--skip-bucket", action="store_true")
    parser.add_argument("--png", help="write a bar chart here")
    args = parser.parse_args()
    files = sorted(str(p.resolve()) for p in pathlib.Path(args.data).rglob("*")
                   if p.suffix.lower() in (".jpg", ".jpeg"))
    paths = files * args.repeat
    with tempfile.TemporaryDirectory(prefix="imgtools-reading-") as tmp:
        work = pathlib.Path(tmp)
        local = local_table(paths, work, args.rounds)
        pd.set_option("display.width", 200)
        print(f"{len(paths)} images ({len(files)} JPEGs x {args.repeat}), batch {BATCH}, "
              f"images/s (median of {args.rounds})")
        print(local.round(2).to_string(index=False))
        bucket = None
        if not args.skip_bucket:
            bucket = bucket_table(paths, work, tuple(args.latency), args.rounds)
            print(f"\nmoto S3 behind a proxy adding {args.latency[0] * 1000:.0f}-{args.latency[1] * 1000:.0f} ms per "
                  f"request; demo-shaped store (64 + 224 crop, chunks of 64); images/s")
            print(bucket.round(0).to_string(index=False))
    if args.png:
        plot(local, bucket, args.png)


def plot(local: pd.DataFrame, bucket: pd.DataFrame | None, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ["DataLoader, originals", "DataLoader, imgtools map-style", "ds.batches", "stream",
            "stream, 2 persistent workers"]
    fig, axes = plt.subplots(1, 2 if bucket is not None else 1, figsize=(12, 4), squeeze=False)
    local.set_index("geometry")[cols].plot.bar(ax=axes[0][0], logy=True, rot=0)
    axes[0][0].set_ylabel("images/s (log)")
    axes[0][0].set_title("reading for training, local disk")
    if bucket is not None:
        bcols = ["batches, no cache, no prefetch", "batches, epoch 1", "batches, epoch 2", "stream, epoch 1",
                 "stream, epoch 2", "ds[i] at random, after"]
        bucket.set_index("size")[bcols].plot.bar(ax=axes[0][1], logy=True, rot=0)
        axes[0][1].set_title("from a bucket 20-50 ms away")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


if __name__ == "__main__":
    main()
