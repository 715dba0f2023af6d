"""Soak (issue 19, item 3): one long presize with faults arriving all the time, against a clean run of the
same inputs; the two outputs must be the same byte for byte.

    python -m benchmarks.soak [--n 100000] [--workers 2] [--kill-every 30] [--fault-rate 0.1]
        [--data ../shared/datasets/imagenet-sample] [--work /tmp/imgtools-soak]

The inputs, on local disk (made once under ``--work``): ``--n`` images, tiny generated PNGs (16x12) with the
real JPEGs of the ImageNet sample mixed in at even steps (one JPEG every ``n / 1000`` images, at most one
in five), in folders of 1000 (the folder is the label). They are presized (64x64 crop, zarr) by a local
Dask cluster of ``--workers`` single-threaded processes into moto's S3 server, reached through
``imgtools.testing.Proxy``:

- soak: the proxy answers ``--fault-rate`` of the requests with a fault instead (half HTTP 503, half a
  connection closed without an answer), and a worker process is SIGKILLed every ``--kill-every`` seconds
  (its nanny starts it again). A run that stops (storage kept failing past the retries) is started again,
  as a user would, and resumes; the attempts are counted.
- clean: the same inputs into another prefix through a proxy without faults, no worker killed.

Then every file of the two outputs but ``.imgtools/`` (the zarr arrays, ``manifest.parquet``, the
attributes) is compared byte for byte, and a table printed. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import random
import shutil
import signal
import threading
import time

import numpy as np
import pandas as pd
from PIL import Image

import imgtools
from imgtools.errors import ImgtoolsError
from imgtools.testing import Proxy, s3_server

PER_FOLDER = 1000
SIZE = 64


def make_inputs(work: pathlib.Path, n: int, data: pathlib.Path) -> tuple[pathlib.Path, int]:
    """``n`` images under ``work/inputs-<n>`` (made once): tiny PNGs with the sample's JPEGs mixed in at even
    steps; returns the folder and the number of real JPEGs."""
    jpegs = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    real = min(len(jpegs), n // 5)
    step = n // real if real else n + 1
    folder = work / f"inputs-{n}"
    done = folder / ".complete"
    if done.exists():
        return folder, real
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = folder / f"c{i // PER_FOLDER:04d}"
        if i % PER_FOLDER == 0:
            sub.mkdir(parents=True)
        if i % step == 0 and i // step < real:
            shutil.copyfile(jpegs[i // step], sub / f"{i:08d}.jpg")
        else:
            Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(sub / f"{i:08d}.png")
    done.touch()
    return folder, real


def start_cluster(workers: int):
    """A local cluster as imgtools starts one (single-threaded workers with nannies, imgtools' preload)."""
    import dask
    from distributed import Client, LocalCluster

    from imgtools.memory import WORKER_ENV_OVERRIDES

    with dask.config.set(WORKER_ENV_OVERRIDES):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                               preload=["imgtools.localcluster"])
    return Client(cluster), cluster


class Killer:
    """SIGKILLs one worker process of ``client`` every ``every`` seconds while running (a thread)."""

    def __init__(self, client, every: float, seed: int = 0) -> None:
        self.client, self.every = client, every
        self.kills = 0
        self._stop = threading.Event()
        self._random = random.Random(seed)
        self._thread = threading.Thread(target=self._run, name="soak-killer", daemon=True)

    def __enter__(self) -> Killer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                pids = sorted(self.client.run(os.getpid, wait=True).values())
            except Exception:  # a worker is restarting: next time
                continue
            if pids:
                os.kill(self._random.choice(pids), signal.SIGKILL)
                self.kills += 1


def presize_until_done(source: pathlib.Path, dest: str, client, options: dict, attempts: int) -> tuple[float, int]:
    """presize, started again after a run that stopped (as a user would: it resumes); (seconds, runs)."""
    started = time.perf_counter()
    for attempt in range(1, attempts + 1):
        try:
            imgtools.presize(str(source), dest, sizes=[SIZE], client=client, storage_options=options, progress=False)
            return time.perf_counter() - started, attempt
        except ImgtoolsError as exc:
            print(f"  run {attempt} stopped: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
            if "being written by another run" in str(exc):  # our own lock, left by a run whose release failed
                time.sleep(30)
    raise RuntimeError(f"{dest}: not complete after {attempts} runs")


def _wait_for_workers(client, n: int, timeout: float = 120.0) -> None:
    """Until the scheduler has ``n`` workers again (the nannies start the killed ones), at most ``timeout``."""
    deadline = time.monotonic() + timeout
    while len(client.scheduler_info(n_workers=-1)["workers"]) < n and time.monotonic() < deadline:
        time.sleep(0.5)


def compare(fs, a: str, b: str) -> tuple[bool, int, list[str]]:
    """Every file under ``a`` and ``b`` but ``.imgtools/``: (all equal, files compared, those that differ)."""
    fs.invalidate_cache()

    def files(root: str) -> dict[str, str]:
        return {p[len(root) + 1 :]: p for p in fs.find(root) if "/.imgtools/" not in p[len(root) :] + "/"}

    fa, fb = files(a), files(b)
    differ = sorted(set(fa) ^ set(fb))
    for rel in sorted(set(fa) & set(fb)):
        if fs.cat_file(fa[rel]) != fs.cat_file(fb[rel]):
            differ.append(rel)
    return not differ, len(set(fa) | set(fb)), differ


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="images (default 100,000)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kill-every", type=float, default=30.0, metavar="SECONDS")
    parser.add_argument("--fault-rate", type=float, default=0.1,
                        help="share of requests faulted (half 503, half dropped)")
    parser.add_argument("--attempts", type=int, default=10, help="runs before the soak gives up")
    parser.add_argument("--data", default="../shared/datasets/imagenet-sample", help="folder of real JPEGs")
    parser.add_argument("--work", default="/tmp/imgtools-soak", help="where the inputs are made (kept)")
    args = parser.parse_args(argv)

    t = time.perf_counter()
    source, real = make_inputs(pathlib.Path(args.work), args.n, pathlib.Path(args.data))
    print(f"inputs: {args.n} images ({real} real JPEGs) in {source} ({time.perf_counter() - t:.0f} s to make)",
          flush=True)
    client, cluster = start_cluster(args.workers)
    try:
        with s3_server() as server:
            server.make_bucket("soak")
            fs = server.filesystem()
            half = args.fault_rate / 2
            with Proxy(server.endpoint, error_rate=half, drop_rate=half, seed=1) as faulty, Killer(
                    client, args.kill_every) as killer:
                soak_s, runs = presize_until_done(source, "s3://soak/soak.zarr", client,
                                                  server.options(faulty.endpoint), args.attempts)
            print(f"soak: {soak_s:.1f} s, {runs} run(s), {killer.kills} workers killed, proxy {faulty.counts}",
                  flush=True)
            _wait_for_workers(client, args.workers)
            with Proxy(server.endpoint) as plain:
                clean_s, _ = presize_until_done(source, "s3://soak/clean.zarr", client, server.options(plain.endpoint),
                                                1)
            print(f"clean: {clean_s:.1f} s, proxy {plain.counts}", flush=True)
            same, compared, differ = compare(fs, "soak/soak.zarr", "soak/clean.zarr")
            manifests = [pd.read_parquet(fs.open(f"soak/{d}.zarr/manifest.parquet")) for d in ("soak", "clean")]
            rows_same = manifests[0].equals(manifests[1])
    finally:
        client.close()
        cluster.close()
    faults = faulty.counts["503"] + faulty.counts["dropped"]
    requests = sum(faulty.counts.values())
    table = pd.DataFrame([{
        "images": args.n, "clean s": round(clean_s, 1), "soak s": round(soak_s, 1),
        "ratio": round(soak_s / clean_s, 2), "runs": runs, "kills": killer.kills,
        "faults injected": f"{faults} of {requests} requests ({faulty.counts['503']} 503, "
                           f"{faulty.counts['dropped']} dropped)",
        "identical": "yes" if same and rows_same else "no",
    }])
    print(f"\n{args.n} images ({real} real JPEGs), {SIZE}x{SIZE} crop to zarr on moto S3, {args.workers} workers; "
          f"soak: {args.fault_rate:.0%} of requests faulted, a worker killed every {args.kill_every:g} s")
    print(table.to_string(index=False))
    print(f"compared {compared} files and the manifest rows ({len(manifests[0])})"
          + ("" if same else f"; differ: {differ[:10]}"))


if __name__ == "__main__":
    main()
