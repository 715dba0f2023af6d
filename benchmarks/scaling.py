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
import pickle
import dask.bag
import imgtools
graph = {"tasks": 0, "graph_bytes": 0}
_from_sequence = dask.bag.from_sequence
def _counted(seq, *args, **kwargs):  # the tasks presize sends: their number and pickled size
    graph["tasks"] += len(seq)
    graph["graph_bytes"] += len(pickle.dumps(seq))
    return _from_sequence(seq, *args, **kwargs)
dask.bag.from_sequence = _counted
t = time.perf_counter()
report = imgtools.presize(sys.argv[2], sys.argv[3], sizes=[8], workers=int(sys.argv[4]), progress=False)
seconds = time.perf_counter() - t
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "peak_mb": peak / 1024, "ok": report.ok, "total": report.total,
                  "module": imgtools.__file__, **graph}))
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


def manifest_of(root: pathlib.Path, n: int, files: int = 300_000) -> pathlib.Path:
    """A Parquet manifest of ``n`` rows naming the ``files`` tiny PNGs of :func:`tiny_pngs` in turn (each
    several times when ``n`` is larger): runs of a million inputs without a million files (made once). Row
    groups of 65,536 rows: a manifest is read a row group at a time, and one row group of 1M rows costs the
    listing some 40 MB more."""
    import pandas as pd

    path = root / f"manifest-{n}.parquet"
    if not path.exists():
        folder = tiny_pngs(root, files)
        names = [f"{folder.name}/c{i // 1000:05d}/{i:08d}.png" for i in range(files)]
        pd.DataFrame({"path": [names[i % files] for i in range(n)],
                      "label": [f"c{i % 1000}" for i in range(n)]}).to_parquet(path, index=False,
                                                                                row_group_size=65536)
    return path


# --dry-run of a manifest, in a fresh interpreter: wall time, the plan's figures, the process's peak RSS.
_DRY = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import imgtools
t = time.perf_counter()
plan = imgtools.dry_run(sys.argv[2], sys.argv[3], sizes=[64])
seconds = time.perf_counter() - t
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "peak_mb": peak / 1024, "inputs": plan.inputs, "tasks": plan.tasks,
                  "labels": len(plan.label_names)}))
"""


def dry_run(tree: pathlib.Path, manifest: pathlib.Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, "-c", _DRY, str(tree), str(manifest), f"{tmp}/out.zarr"],
                             capture_output=True, text=True, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(tree: pathlib.Path, source: pathlib.Path, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, "-c", _CLIENT, str(tree), str(source), f"{tmp}/out.zarr", str(workers)],
                             capture_output=True, text=True, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def size_bombs(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """The two files of the issue, each beside a real neighbour: a 2 MB ``.tar.gz`` whose member claims
    2 GiB (zeros), and a sparse 6 GiB ``.jpg`` (a real JPEG followed by nothing); made once."""
    import io
    import tarfile

    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(jpeg, "JPEG")
    out = {"tar.gz member of 2 GiB": root / "bomb.tar.gz", "sparse 6 GiB .jpg": root / "sparse"}
    if not out["tar.gz member of 2 GiB"].exists():
        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(out["tar.gz member of 2 GiB"], "w:gz") as tar:
            for name, size, data in [("a/before.jpg", len(jpeg.getvalue()), io.BytesIO(jpeg.getvalue())),
                                     ("a/bomb.jpg", 2 << 30, _Zeros(2 << 30)),
                                     ("a/after.jpg", len(jpeg.getvalue()), io.BytesIO(jpeg.getvalue()))]:
                info = tarfile.TarInfo(name)
                info.size = size
                tar.addfile(info, data)
    if not out["sparse 6 GiB .jpg"].exists():
        out["sparse 6 GiB .jpg"].mkdir(parents=True)
        (out["sparse 6 GiB .jpg"] / "ok.jpg").write_bytes(jpeg.getvalue())
        with open(out["sparse 6 GiB .jpg"] / "huge.jpg", "wb") as f:
            f.write(jpeg.getvalue())
            f.truncate(6 << 30)
    return out


class _Zeros:
    """A file of ``n`` zero bytes, read without holding them."""

    def __init__(self, n: int) -> None:
        self.left = n

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        self.left -= size
        return bytes(size)


_BOMB = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import imgtools
t = time.perf_counter()
report = imgtools.presize(sys.argv[2], sys.argv[3], sizes=[16], workers=0, progress=False)
seconds = time.perf_counter() - t
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "peak_mb": peak / 1024, "ok": report.ok,
                  "failures": [f"{o}: {e}" for o, e in zip(report.failures["origin"], report.failures["error"])]}))
"""


def run_bombs(tree: pathlib.Path, cache: pathlib.Path) -> None:
    """Each size bomb presized in one process: wall time, peak RSS, what became of the bomb and its neighbours."""
    for name, source in size_bombs(cache / "bombs").items():
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run([sys.executable, "-c", _BOMB, str(tree), str(source), f"{tmp}/out.zarr"],
                                 capture_output=True, text=True, timeout=1200,
                                 env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if out.returncode:
            print(f"{name}: failed: {out.stderr.strip().splitlines()[-1]}")
            continue
        got = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name}: {got['seconds']:.1f} s, peak RSS {got['peak_mb']:.0f} MB, {got['ok']} ok; "
              f"failed: {'; '.join(got['failures']) or 'none'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[30_000, 300_000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--compare", type=pathlib.Path, help="another checkout of imgtools to run beside this one")
    parser.add_argument("--cache", type=pathlib.Path, default=pathlib.Path(tempfile.gettempdir()) / "imgtools-scaling")
    parser.add_argument("--manifest", action="store_true",
                        help="N rows of a Parquet manifest over 300,000 tiny PNGs instead of N files in folders")
    parser.add_argument("--dry-run", type=int, metavar="ROWS",
                        help="only `--dry-run` of a Parquet manifest of ROWS rows (made once)")
    parser.add_argument("--bombs", action="store_true", help="only the size bombs (a .tar.gz member, a sparse file)")
    args = parser.parse_args(argv)
    if args.bombs:
        for tree in [ROOT] + ([args.compare.resolve()] if args.compare else []):
            print(f"size bombs, {tree}:")
            run_bombs(tree, args.cache)
        return
    trees = {"this": ROOT} | ({"compare": args.compare.resolve()} if args.compare else {})
    if args.dry_run:
        manifest = manifest_of(args.cache, args.dry_run)
        for name, tree in trees.items():
            got = dry_run(tree, manifest)
            print(f"{name}: --dry-run of {got['inputs']:,} rows ({got['labels']} labels): {got['seconds']:.1f} s, "
                  f"peak RSS {got['peak_mb']:.0f} MB, {got['tasks']:,} tasks planned")
        return
    rows = []
    for n in args.n:
        source = manifest_of(args.cache, n) if args.manifest else tiny_pngs(args.cache, n)
        for name, tree in trees.items():
            got = run(tree, source, args.workers)
            rows.append((name, n, got))
            print(f"{name:8s} {n:>9,d} images: client peak {got['peak_mb']:7.0f} MB, {got['seconds']:6.1f} s "
                  f"({n / got['seconds']:,.0f} img/s), {got['ok']} ok, {got.get('tasks', 0)} tasks "
                  f"({got.get('graph_bytes', 0):,} bytes)", flush=True)
    print("\n| tree | images | client peak RSS (MB) | growth per image (bytes) | wall (s) | img/s | tasks "
          "| task bytes |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in trees:
        mine = [(n, got) for tree, n, got in rows if tree == name]
        base_n, base = mine[0]
        for n, got in mine:
            growth = (got["peak_mb"] - base["peak_mb"]) * 2**20 / (n - base_n) if n != base_n else float("nan")
            print(f"| {name} | {n:,} | {got['peak_mb']:.0f} | {growth:.0f} | {got['seconds']:.1f} | "
                  f"{n / got['seconds']:,.0f} | {got.get('tasks', 0):,} | {got.get('graph_bytes', 0):,} |")


if __name__ == "__main__":
    main()
