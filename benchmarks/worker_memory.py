"""Time and per-worker peak memory as the dataset grows: 1k, 4k and 16k images (the ImageNet sample
repeated), with one 12,000 x 12,000 JPEG in the middle of each run.

    python -m benchmarks.worker_memory --data ../shared/datasets/imagenet-sample [--workers 2] [--size 64]

Each N runs on a fresh LocalCluster, so a worker's peak RSS (getrusage) is that run's. Prints a table.
"""

from __future__ import annotations

import argparse
import multiprocessing
import pathlib
import resource
import tempfile
import time

import numpy as np
import pandas as pd
from PIL import Image


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike getrusage, not inherited across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _huge_jpeg(path: pathlib.Path, side: int = 12000) -> None:
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    img = np.empty((side, side, 3), np.uint8)
    img[..., 0] = ramp[None, :]
    img[..., 1] = ramp[:, None]
    img[..., 2] = 128
    Image.fromarray(img).save(path, "JPEG", quality=80)


def main() -> None:
    parser = argparse.ArgumentParser(description="presize time and worker memory as N grows")
    parser.add_argument("--data", default="../shared/datasets/imagenet-sample")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--counts", default="1000,4000,16000")
    args = parser.parse_args()

    import imgtools
    from imgtools.cluster import get_client
    from imgtools.config import PresizeConfig

    files = sorted(str(p.resolve()) for p in pathlib.Path(args.data).iterdir())
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="imgtools-scaling-"))
    huge = tmp / "huge-12000x12000.jpg"
    maker = multiprocessing.get_context("spawn").Process(target=_huge_jpeg, args=(huge,))  # keeps the client small
    maker.start()
    maker.join()
    rows = []
    for n in (int(c) for c in args.counts.split(",")):
        paths = (files * (n // len(files) + 1))[:n]
        paths[n // 2] = str(huge)
        manifest = tmp / f"list-{n}.csv"
        pd.DataFrame({"path": paths}).to_csv(manifest, index=False)
        client = get_client(workers=args.workers)
        client.wait_for_workers(args.workers)
        base = max(client.run(_peak_rss_mb).values())
        t = time.perf_counter()
        report = imgtools.presize(str(manifest), str(tmp / f"out-{n}"), config=PresizeConfig.build(
            sizes=[args.size], mode="squash"), client=client, progress=False)
        seconds = time.perf_counter() - t
        peaks = client.run(_peak_rss_mb)
        client.close()
        client.cluster.close() if client.cluster is not None else None
        rows.append({"images": n, "ok": report.ok, "seconds": round(seconds, 1), "images/s": round(n / seconds),
                     "s per 1k": round(1000 * seconds / n, 2), "worker peak RSS MB (max)": round(max(peaks.values())),
                     "worker RSS at start MB": round(base), "client peak RSS MB": round(_peak_rss_mb())})
    print(f"{args.workers} workers, {args.size}x{args.size} squash to zarr; one 12000x12000 JPEG in each run")
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
