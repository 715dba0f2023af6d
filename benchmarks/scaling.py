"""How the client's memory grows with the number of images (issue 14): real runs of tiny PNGs on a local
cluster, the client's own peak RSS (``VmHWM``, not its workers'), wall time and rate; and, with
``--compare TREE``, the same runs of another checkout in the same session, so the two are compared as
ratios of one run. Prints a table.

    python -m benchmarks.scaling --n 30000 300000 --workers 2 [--compare /tmp/before]

Tiny images are made once under ``--cache`` (default /tmp/imgtools-scaling). Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter with the tree under test first on sys.path; prints one JSON line.
_CLIENT = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import imgtools
t = time.perf_counter()
report = imgtools.presize(sys.argv[2], sys.argv[3], sizes=[8], workers=int(sys.argv[4]), progress=False)
seconds = time.perf_counter() - t
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "peak_mb": peak / 1024, "ok": report.ok, "total": report.total,
                  "module": imgtools.__file__}))
"""


def tiny_pngs(root: pathlib.Path, n: int, per_folder: int = 1000) -> pathlib.Path:
    """``n`` 16x12 PNGs in folders of ``per_folder`` (made once, reused)."""
    folder = root / f"tiny-{n}"
    done = folder / ".complete"
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = folder / f"c{i // per_folder:05d}"
        if i % per_folder == 0:
            sub.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(sub / f"{i:08d}.png")
    done.touch()
    return folder


def run(tree: pathlib.Path, source: pathlib.Path, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, "-c", _CLIENT, str(tree), str(source), f"{tmp}/out.zarr", str(workers)],
                             capture_output=True, text=True, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[30_000, 300_000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--compare", type=pathlib.Path, help="another checkout of imgtools to run beside this one")
    parser.add_argument("--cache", type=pathlib.Path, default=pathlib.Path(tempfile.gettempdir()) / "imgtools-scaling")
    args = parser.parse_args(argv)
    trees = {"this": ROOT} | ({"compare": args.compare.resolve()} if args.compare else {})
    rows = []
    for n in args.n:
        source = tiny_pngs(args.cache, n)
        for name, tree in trees.items():
            got = run(tree, source, args.workers)
            rows.append((name, n, got))
            print(f"{name:8s} {n:>9,d} images: client peak {got['peak_mb']:7.0f} MB, {got['seconds']:6.1f} s "
                  f"({n / got['seconds']:,.0f} img/s), {got['ok']} ok", flush=True)
    print("\n| tree | images | client peak RSS (MB) | growth per image (bytes) | wall (s) | img/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in trees:
        mine = [(n, got) for tree, n, got in rows if tree == name]
        base_n, base = mine[0]
        for n, got in mine:
            growth = (got["peak_mb"] - base["peak_mb"]) * 2**20 / (n - base_n) if n != base_n else float("nan")
            print(f"| {name} | {n:,} | {got['peak_mb']:.0f} | {growth:.0f} | {got['seconds']:.1f} | "
                  f"{n / got['seconds']:,.0f} |")


if __name__ == "__main__":
    main()
