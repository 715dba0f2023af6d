"""Derived sizes vs direct presizes: speed and PSNR, in one run.

    python -m benchmarks.derive --data ../shared/datasets/imagenet-sample [--workers 2]

Presizes the photos to 224x224 (crop), derives 112x112 and 64x64 from it, presizes 112 and 64 directly,
and prints images/s of each and the PSNR of derived against direct (median, 1st percentile, worst).
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

import numpy as np
import zarr

import imgtools
from imgtools.cluster import get_client
from imgtools.config import PresizeConfig
from imgtools.derive import derive


def _psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(axis=1)
    return np.where(mse == 0, 100.0, 10 * np.log10(255.0**2 / np.maximum(mse, 1e-12)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/datasets/imagenet-sample")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    client = get_client(workers=args.workers)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = pathlib.Path(tmp)
        t = time.perf_counter()
        r = imgtools.presize(args.data, str(base / "s"), config=PresizeConfig.build(sizes=[224], chunk=64),
                             client=client, progress=False)
        rows.append(("presize 224x224 from files", r.total / (time.perf_counter() - t), "", "", ""))
        t = time.perf_counter()
        d = derive(str(base / "s"), "224x224", [112, 64], client=client)
        rows.append(("derive 112x112 + 64x64 from 224x224", 2 * d.images / (time.perf_counter() - t), "", "", ""))
        g = zarr.open_group(str(base / "s"), mode="r")
        for side in (112, 64):
            t = time.perf_counter()
            imgtools.presize(args.data, str(base / f"d{side}"), config=PresizeConfig.build(sizes=[side], chunk=64),
                             client=client, progress=False)
            speed = r.total / (time.perf_counter() - t)
            direct = zarr.open_group(str(base / f"d{side}"), mode="r")[f"{side}x{side}/images"][:]
            scores = _psnr(g[f"{side}x{side}/images"][:], direct)
            rows.append((f"presize {side}x{side} from files (PSNR: derived vs this)", speed,
                         f"{np.median(scores):.1f}", f"{np.percentile(scores, 1):.1f}", f"{scores.min():.1f}"))
    client.close()
    print(f"{'step':58s} {'images/s':>9s} {'median dB':>10s} {'p1 dB':>7s} {'min dB':>7s}")
    for name, speed, med, p1, worst in rows:
        print(f"{name:58s} {speed:9.0f} {med:>10s} {p1:>7s} {worst:>7s}")


if __name__ == "__main__":
    main()
