"""Presize throughput against the baselines, in one run, on the same files.

    python -m benchmarks.presize --data ../shared/datasets/imagenet-sample [--workers 2] [--png out.png]

For each geometry (64x64 squash to zarr, 224x224 crop to zarr, shortest side 160 to JPEG files) it times
1. the naive single-process PIL loop (the common recipe: open, convert RGB, resize),
2. the same loop on a multiprocessing.Pool of --workers processes,
3. decoding alone at the DCT scale that keeps twice the target, on the same Pool (the limit),
4. imgtools presize end to end (manifest included) on a LocalCluster of --workers processes.
Each is run on N and 4N images (the file list repeated), from a warm page cache; steady-state
images/s = 3N / (t4N - tN), so start-up (imports, cluster, Numba) is reported apart. The candidates take
turns for --rounds rounds and the median of each is reported. imgtools' PSNR against a full-resolution LANCZOS
reference (after EXIF transpose) is given beside its timing. Prints a table; writes a PNG plot.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

GEOMETRIES = [("64x64 squash -> zarr", "squash", 64, "zarr"), ("224x224 crop -> zarr", "crop", 224, "zarr"),
              ("shortest 160 -> jpeg", "shortest", 160, "jpeg")]


def _target(img: Image.Image, mode: str, side: int) -> tuple[int, int]:
    w, h = img.size
    if mode == "shortest":
        s = side / min(w, h)
        return max(1, round(w * s)), max(1, round(h * s))
    return side, side


def naive(path: str, mode: str, side: int) -> np.ndarray:
    """The common recipe."""
    img = Image.open(path).convert("RGB")
    if mode == "crop":
        return np.asarray(ImageOps.fit(img, (side, side)))
    return np.asarray(img.resize(_target(img, mode, side)))


def decode_limit(path: str, mode: str, side: int) -> tuple[int, int]:
    """Decode only, at the DCT scale that keeps at least twice the target: nothing else."""
    img = Image.open(path)
    w, h = img.size
    if mode == "squash":
        need = (2 * side, 2 * side)
    else:  # the shortest side decides for crop and shortest
        s = 2 * side / min(w, h)
        need = (round(w * s), round(h * s))
    img.draft("RGB", need)
    img.load()
    return img.size


def _loop(func, files, mode, side):
    for f in files:
        func(f, mode, side)


def _pool_run(pool, func, files, mode, side):
    pool.starmap(func, [(f, mode, side) for f in files], chunksize=16)


def _warm(files: list[str]) -> None:
    """Read every file once: the page cache is reclaimed between runs here (a cold read costs about
    1 ms a file), and every candidate should start from the same warm cache."""
    for f in files:
        with open(f, "rb") as fh:
            fh.read()


def _steady(run, files: list[str]) -> tuple[float, float]:
    """(start-up seconds, steady images/s) from runs on N and 4N files, from a warm page cache."""
    _warm(files)
    t0 = time.perf_counter()
    run(files)
    once = time.perf_counter() - t0
    _warm(files)
    t1 = time.perf_counter()
    run(files * 4)
    four = time.perf_counter() - t1
    rate = 3 * len(files) / max(four - once, 1e-9)
    return max(0.0, once - len(files) / rate), rate


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 100.0 if mse < 1e-10 else float(10 * np.log10(255.0**2 / mse))


def quality(dest: pathlib.Path, files: list[str], side: int) -> tuple[float, float, float]:
    import zarr

    arr = zarr.open_group(str(dest), mode="r")[f"{side}x{side}/images"]
    scores = []
    for i, f in enumerate(files):
        ref = ImageOps.exif_transpose(Image.open(f)).convert("RGB").resize((side, side), Image.Resampling.LANCZOS)
        scores.append(_psnr(arr[i], np.asarray(ref)))
    s = np.array(scores)
    return float(np.median(s)), float(np.percentile(s, 1)), float(s.min())


def main() -> None:
    parser = argparse.ArgumentParser(description="presize throughput against baselines")
    parser.add_argument("--data", default="../shared/datasets/imagenet-sample")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--n", type=int, default=0, help="images per run (default: all)")
    parser.add_argument("--png", default="benchmarks/presize.png")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every candidate; medians are reported")
    parser.add_argument("--only", default="", help="run only the geometries whose name holds this text")
    args = parser.parse_args()

    import imgtools
    from imgtools.cluster import get_client
    from imgtools.config import PresizeConfig

    files = sorted(str(p.resolve()) for p in pathlib.Path(args.data).iterdir())
    files = files[: args.n] if args.n else files
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="imgtools-bench-"))
    t = time.perf_counter()
    client = get_client(workers=args.workers)
    client.wait_for_workers(args.workers)
    cluster_start = time.perf_counter() - t
    rows = []
    runs = itertools.count()
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        pool.starmap(decode_limit, [(files[0], "squash", 64)] * args.workers)  # warm the pool
        for name, mode, side, fmt in [g for g in GEOMETRIES if args.only in g[0]]:
            result = {"geometry": name}
            cfg = PresizeConfig.build(sizes=[side], mode=mode, format=fmt)
            first = next(runs)
            runs_here = itertools.chain([first], runs)

            def run_imgtools(fs, cfg=cfg, runs_here=runs_here, first=first):
                run = next(runs_here)
                manifest = tmp / f"list-{run}.csv"
                pd.DataFrame({"path": fs}).to_csv(manifest, index=False)
                report = imgtools.presize(str(manifest), str(tmp / manifest.stem), config=cfg, client=client,
                                          progress=False)
                assert report.failed == 0, report.failures.head()
                if run != first:  # gone before the disk writes it back: a backlog of earlier runs' output
                    shutil.rmtree(tmp / manifest.stem)  # would slow the runs after it (this disk is slow)

            candidates = {
                "naive 1 proc": lambda fs, mode=mode, side=side: _loop(naive, fs, mode, side),
                f"naive Pool({args.workers})": lambda fs, mode=mode, side=side: _pool_run(pool, naive, fs, mode, side),
                "decode limit": lambda fs, mode=mode, side=side: _pool_run(pool, decode_limit, fs, mode, side),
                "imgtools": run_imgtools,
            }
            rates: dict[str, list[float]] = {k: [] for k in candidates}
            startups = []
            for _ in range(args.rounds):  # round-robin, so that drift in the machine's speed hits all alike
                for key, run in candidates.items():
                    startup, rate = _steady(run, files)
                    rates[key].append(rate)
                    if key == "imgtools":
                        startups.append(startup)
            result.update({key: float(np.median(values)) for key, values in rates.items()})
            result["imgtools start-up s"] = float(np.median(startups))
            result["x naive"] = result["imgtools"] / result["naive 1 proc"]
            result["x limit"] = result["imgtools"] / result["decode limit"]
            if mode == "squash":
                result["median dB"], result["p1 dB"], result["min dB"] = quality(tmp / f"list-{first}", files, side)
            rows.append(result)
    payoff = _payoff(files, tmp, client)
    client.close()
    small = tmp / "small"
    small.mkdir()
    for f in files[:10]:
        os.symlink(f, small / pathlib.Path(f).name)
    starts = []
    for i in range(3):  # from the shell, a fresh process each time; the median of three
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "imgtools.cli", "presize", str(small),
                                str(tmp / f"small-{i}.zarr"), "--quiet"], capture_output=True, text=True)
        starts.append(time.perf_counter() - t)
    cli_start = float(np.median(starts))
    table = pd.DataFrame(rows).set_index("geometry")
    pd.set_option("display.width", 200)
    print(f"{len(files)} images from {args.data}; {args.workers} workers; images/s in steady state (runs of N and 4N), "
          f"median of {args.rounds} rounds")
    print(table.round(2).to_string())
    print(f"\nstart-up: local cluster {cluster_start:.1f} s; `imgtools presize` on 10 images {cli_start:.1f} s "
          f"(median of 3) (exit {proc.returncode}: {proc.stdout.strip()})")
    print("\npayoff, 100 random 160x160 training images (median of 5 draws):")
    for name, seconds in payoff.items():
        print(f"  {name:44s} {seconds * 1000:8.1f} ms  ({payoff['decode + resize the originals'] / seconds:6.1f}x)")
    _plot(table, args.png)
    print(f"plot: {args.png}")


def _payoff(files: list[str], tmp: pathlib.Path, client) -> dict[str, float]:
    """The presizing recipe's measurement: random training images from a store vs from the originals."""
    import zarr

    import imgtools
    from imgtools.config import PresizeConfig

    manifest = tmp / "payoff.csv"
    pd.DataFrame({"path": files}).to_csv(manifest, index=False)
    for fmt in ("zarr", "npy"):
        imgtools.presize(str(manifest), str(tmp / f"payoff-{fmt}"), config=PresizeConfig.build(sizes=[160], format=fmt),
                         client=client, progress=False)
    arr = zarr.open_group(str(tmp / "payoff-zarr"), mode="r")["160x160/images"]
    parts = [np.load(p, mmap_mode="r") for p in sorted((tmp / "payoff-npy" / "160x160").glob("part-*.npy"))]
    mm = np.concatenate(parts) if len(parts) == 1 else None
    starts = np.cumsum([0] + [len(p) for p in parts])
    rng = np.random.default_rng(0)

    def originals(idx):
        return np.stack([np.asarray(ImageOps.fit(Image.open(files[i]).convert("RGB"), (160, 160))) for i in idx])

    def from_zarr(idx):
        return arr.get_orthogonal_selection((np.sort(idx),))

    def from_npy(idx):
        if mm is not None:
            return mm[np.sort(idx)]
        return np.stack([parts[k][i - starts[k]]
                         for i in np.sort(idx) for k in [np.searchsorted(starts, i, "right") - 1]])

    out = {}
    for name, load in (("decode + resize the originals", originals),
                       ("zarr store, zarr.get_orthogonal_selection", from_zarr),
                       ("npy parts, memory-mapped", from_npy)):
        times = []
        for _ in range(5):
            idx = rng.choice(len(files), 100, replace=False)
            t = time.perf_counter()
            assert load(idx).shape == (100, 160, 160, 3)
            times.append(time.perf_counter() - t)
        out[name] = float(np.median(times))
    return out


def _plot(table: pd.DataFrame, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [c for c in table.columns if c.startswith(("naive", "decode", "imgtools")) and not c.endswith(" s")]
    ax = table[cols].plot.bar(figsize=(9, 4.5), rot=0)
    ax.set_ylabel("images / s (steady state)")
    ax.set_title("presize throughput, same files, same run")
    plt.tight_layout()
    plt.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
