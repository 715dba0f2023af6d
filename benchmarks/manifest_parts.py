"""Writing the manifest at the end of a run (issue 14): one file written by the client from every done marker,
against the folder of parts (``manifest.parquet/part-NNNNN.parquet``) written by one task a part, in the
client's process or on a local cluster's workers. Synthetic done markers of the real schema (a tiny real run's
marker, its rows repeated with their own index, origin and relpath, one row in 50 failed) are written once;
each form is then written in a fresh interpreter, which reports its wall time and its own peak RSS above
what it had before (``VmHWM``). Prints a table. Not a test: nothing is asserted.

    python -m benchmarks.manifest_parts --rows 2000000 --chunk 4096 [--workers 2] [--part-rows N]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
import pandas as pd

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter with this tree first on sys.path; prints one JSON line.
_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
dest, n, chunk, form, workers, part_rows = sys.argv[2], *map(int, sys.argv[3:5]), sys.argv[5], *map(int, sys.argv[6:8])
from imgtools.location import Location
from imgtools.sinks import ledger
from imgtools.sinks.manifest import ManifestRows, remove_manifest
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
mapper = None
if form == "cluster":
    from distributed import Client, LocalCluster
    client = Client(LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=":0"))
    mapper = lambda work, items: client.gather(client.map(work, list(items), pure=False))
ledger.MANIFEST_PART_ROWS = 1 << 40 if form == "file" else part_rows
run = ledger.RunLedger(Location.resolve(dest), positional=True)
remove_manifest(run.location)
base = hwm()
started = time.perf_counter()
tally = run.write_manifest(ManifestRows(n, chunk), mapper)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "rss": hwm() - base, "rows": tally.rows, "failed": len(tally.failed)}))
"""


def _template() -> pd.DataFrame:
    """One done marker of a real run (so the synthetic ones have the real columns and types)."""
    from PIL import Image

    import imgtools
    from imgtools.config import PresizeConfig
    from imgtools.location import Location
    from imgtools.sinks.ledger import RunLedger

    with tempfile.TemporaryDirectory() as tmp:
        src = pathlib.Path(tmp, "src", "cat")
        src.mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (16, 12), (i * 40, 90, 20)).save(src / f"{i}.png")
        (src / "broken.jpg").write_bytes(b"not a jpeg")
        dest = pathlib.Path(tmp, "out")
        imgtools.presize(str(src.parent), str(dest), config=PresizeConfig.build(sizes=[8], chunk=8), workers=0,
                         progress=False)
        return RunLedger(Location.resolve(str(dest)), positional=True).read_marker(0)


def make_markers(dest: pathlib.Path, n: int, chunk: int) -> None:
    """Done markers of ``n`` rows in chunks of ``chunk`` under ``dest`` (one row in 50 failed)."""
    from imgtools.location import Location
    from imgtools.sinks.ledger import RunLedger

    template = _template()
    ok, bad = (int(np.flatnonzero(template["status"] == status)[0]) for status in ("ok", "failed"))
    run = RunLedger(Location.resolve(str(dest)), positional=True)
    for k, start in enumerate(range(0, n, chunk)):
        index = np.arange(start, min(n, start + chunk))
        rows = template.iloc[np.where(index % 50 == 49, bad, ok)].reset_index(drop=True)
        names = [f"class{i % 1000:03d}/image{i:09d}.jpg" for i in index]
        rows = rows.assign(index=index, relpath=names, origin=[f"gs://bucket/train/{p}" for p in names],
                           label=[p[:8] for p in names], label_id=(index % 1000).astype(np.int32))
        run.mark_done(k, rows)


def measure(dest: pathlib.Path, n: int, chunk: int, form: str, workers: int, part_rows: int) -> dict:
    argv = [str(ROOT), str(dest), str(n), str(chunk), form, str(workers), str(part_rows)]
    out = subprocess.run([sys.executable, "-c", _CHILD, *argv], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--chunk", type=int, default=4096)
    parser.add_argument("--workers", type=int, default=2, help="of the local cluster (0: no cluster row)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--part-rows", type=int, default=None, help="rows a part (default: MANIFEST_PART_ROWS)")
    args = parser.parse_args()
    from imgtools.sinks.ledger import MANIFEST_PART_ROWS

    part_rows = args.part_rows or MANIFEST_PART_ROWS
    forms = ["file", "here"] + (["cluster"] if args.workers else [])
    with tempfile.TemporaryDirectory() as tmp:
        dest = pathlib.Path(tmp, "out")
        make_markers(dest, args.rows, args.chunk)
        parts = -(-args.rows // (max(1, part_rows // args.chunk) * args.chunk))
        print(f"{args.rows:,} rows in {-(-args.rows // args.chunk)} markers of {args.chunk}; folder: {parts} parts")
        print("| form | wall (s), each round | client peak RSS above its start | rows | failed |")
        print("|---|---:|---:|---:|---:|")
        for form in forms:
            runs = [measure(dest, args.rows, args.chunk, form, args.workers, part_rows) for _ in range(args.rounds)]
            walls = " / ".join(f"{r['seconds']:.1f}" for r in runs)
            rss = max(r["rss"] for r in runs) / 2**20
            print(f"| {form} | {walls} | {rss:.0f} MB | {runs[0]['rows']:,} | {runs[0]['failed']:,} |", flush=True)


if __name__ == "__main__":
    main()
