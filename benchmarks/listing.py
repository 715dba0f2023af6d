"""Listing SOURCE into DEST's parts in the client's process (its threads) against on a cluster's workers
(issue 14): a folder of tiny PNGs in sub-folders of 1000 and a Parquet manifest (row groups of 65,536),
the same sources as ``benchmarks.scaling`` (made once under ``--cache``). Each listing runs in a fresh
interpreter; the cluster (a LocalCluster of ``--workers`` processes) is started before the clock starts,
as a run's cluster is up while it lists. Both listings are checked to be the same rows (their digests).
Prints a table; ratios of one run. Not a test: nothing is asserted.

    python -m benchmarks.listing --folder 300000 --manifest 1000000 --workers 2 [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

from benchmarks.scaling import manifest_of, tiny_pngs

ROOT = pathlib.Path(__file__).resolve().parents[1]

_LIST = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from imgtools.listparts import write_listing
from imgtools.location import Location
workers = int(sys.argv[4])
mapper = None
if workers:
    from distributed import Client, LocalCluster
    from imgtools.cluster import Placement
    client = Client(LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=":0"))
    import importlib
    client.run(importlib.import_module, "imgtools.listparts")  # what a run's workers have loaded by then
    mapper = Placement(existing=client).mapper("imgtools-listing")
t = time.perf_counter()
parts = write_listing(sys.argv[2], Location.resolve(sys.argv[3]), mapper=mapper)
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "rows": len(parts), "parts": len(parts.counts), "digest": parts.digest}))
"""


def listing(source: pathlib.Path, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, "-c", _LIST, str(ROOT), str(source), f"{tmp}/out.zarr", str(workers)],
                             capture_output=True, text=True, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=int, default=300_000, help="tiny PNGs in the folder (0: none)")
    parser.add_argument("--manifest", type=int, default=1_000_000, help="rows of the Parquet manifest (0: none)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache", type=pathlib.Path, default=pathlib.Path(tempfile.gettempdir()) / "imgtools-scaling")
    args = parser.parse_args(argv)
    sources = ([("folder", tiny_pngs(args.cache, args.folder))] if args.folder else []) + \
              ([("Parquet manifest", manifest_of(args.cache, args.manifest))] if args.manifest else [])
    print(f"| source | rows | parts | client, threads (s) | {args.workers} workers (s) | speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, source in sources:
        here, there = [], []
        for _ in range(args.rounds):  # in turns, so that both see the machine alike
            here.append(listing(source, 0))
            there.append(listing(source, args.workers))
        assert {r["digest"] for r in here + there} == {here[0]["digest"]}, "the two listings differ"
        a, b = statistics.median(r["seconds"] for r in here), statistics.median(r["seconds"] for r in there)
        print(f"| {name} | {here[0]['rows']:,} | {here[0]['parts']} / {there[0]['parts']} | {a:.2f} "
              f"[{min(r['seconds'] for r in here):.2f}-{max(r['seconds'] for r in here):.2f}] | {b:.2f} "
              f"[{min(r['seconds'] for r in there):.2f}-{max(r['seconds'] for r in there):.2f}] | {a / b:.2f}x |",
              flush=True)


if __name__ == "__main__":
    main()
