"""Untrusted files: fuzzed files of every format never end a run; a file that crashes the decoder's
process costs only retries and becomes a failed row."""

from __future__ import annotations

import io
import os
import signal
import sys
import time

import cloudpickle
import numpy as np
import pandas as pd
import pytest
from distributed import WorkerPlugin
from PIL import Image

import imgtools
from conftest import gradient
from imgtools.config import PresizeConfig

CRASH_MAGIC = b"CRASHME!"


class _CrashPlugin(WorkerPlugin):
    """A worker plugin that teaches Pillow a format whose decoder kills the process (like a segfault)."""

    name = "imgtools-test-crash-format"

    def setup(self, worker=None):
        from PIL import Image, ImageFile

        class CrashImageFile(ImageFile.ImageFile):
            format = "CRASHME"
            format_description = "kills the process that opens it"

            def _open(self):
                os.kill(os.getpid(), signal.SIGKILL)

        Image.register_open("CRASHME", CrashImageFile, lambda prefix: prefix[:8] == CRASH_MAGIC)


@pytest.fixture
def crash_client():
    from distributed import Client, LocalCluster

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    client = Client(cluster)
    client.register_plugin(_CrashPlugin())
    yield client
    client.close()
    cluster.close()


def test_file_that_kills_workers_is_a_failed_row_and_the_run_completes(labelled_dir, tmp_path, crash_client):
    (labelled_dir / "class1" / "deadly.png").write_bytes(CRASH_MAGIC + b"\0" * 64)
    cfg = PresizeConfig.build(sizes=[16], chunk=16, formats=["JPEG", "PNG", "WEBP", "CRASHME"])
    dest = tmp_path / "o"
    report = imgtools.presize(str(labelled_dir), str(dest), config=cfg, client=crash_client, progress=False)
    assert (report.total, report.failed) == (81, 1)
    m = pd.read_parquet(dest / "manifest.parquet")
    bad = m[m["status"] == "failed"]
    assert list(bad["relpath"]) == ["class1/deadly.png"] and "crashed its worker" in bad["error"].iloc[0]
    clean = tmp_path / "clean"
    (labelled_dir / "class1" / "deadly.png").unlink()
    (labelled_dir / "class1" / "deadly.png").write_bytes(b"nope")  # same listing, harmless content
    imgtools.presize(str(labelled_dir), str(clean), config=cfg, workers=0, progress=False)
    import zarr

    a, b = zarr.open_group(str(dest), mode="r"), zarr.open_group(str(clean), mode="r")
    np.testing.assert_array_equal(a["16x16/images"][:], b["16x16/images"][:])
    np.testing.assert_array_equal(a["ok"][:], b["ok"][:])


def _writable_formats() -> dict[str, bytes]:
    """One small file in every format this Pillow can write (EPS and PDF need outside programs to read)."""
    Image.init()
    rgb = Image.fromarray(gradient(48, 32))
    out = {}
    for fmt in sorted(set(Image.SAVE) - {"EPS", "PDF", "PALM", "XBM"}):
        for candidate in (rgb, rgb.convert("L"), rgb.convert("RGBA"), rgb.convert("P"), rgb.convert("1")):
            buf = io.BytesIO()
            try:
                candidate.save(buf, fmt)
            except Exception:
                continue
            out[fmt] = buf.getvalue()
            break
    return out


def _fuzz(files: dict[str, bytes], per_file: int, seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    blobs = list(files.values())
    out = {}
    for fmt, data in files.items():
        for k in range(per_file):
            kind = k % 4
            if kind == 0:  # truncated
                fuzzed = data[: int(rng.integers(0, len(data)))]
            elif kind in (1, 2):  # a few bit flips (kind 2: many, after the header)
                arr = bytearray(data)
                flips = int(rng.integers(1, 4)) if kind == 1 else int(rng.integers(10, 200))
                lo = 0 if kind == 1 else min(32, len(arr) - 1)
                for pos in rng.integers(lo, len(arr), flips):
                    arr[pos] ^= 1 << int(rng.integers(0, 8))
                fuzzed = bytes(arr)
            else:  # spliced: this file's head, another file's tail
                other = blobs[int(rng.integers(0, len(blobs)))]
                cut = int(rng.integers(1, len(data)))
                fuzzed = data[:cut] + other[int(rng.integers(0, len(other))) :]
            out[f"{fmt.lower()}/{k:04d}.{fmt.lower()}"] = fuzzed
    return out


@pytest.mark.parametrize("formats", ["default", "every"])
def test_thousands_of_fuzzed_files_each_become_a_row_without_crash_or_hang(tmp_path, dask_client, formats):
    base = _writable_formats()
    assert {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"} <= set(base)
    fuzzed = _fuzz(base, per_file=max(40, 2400 // len(base)))
    root = tmp_path / "fuzz"
    for name, data in fuzzed.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    rows = pd.DataFrame({"path": sorted(fuzzed)})
    rows.to_csv(root / "list.csv", index=False)
    cfg = PresizeConfig.build(sizes=[16, 40], chunk=64, formats=None if formats == "default" else sorted(base))
    started = time.monotonic()
    report = imgtools.presize(str(root / "list.csv"), str(tmp_path / "o"), config=cfg, client=dask_client,
                              progress=False)
    assert time.monotonic() - started < 240
    assert report.total == len(fuzzed) >= 2000
    m = pd.read_parquet(tmp_path / "o" / "manifest.parquet")
    assert list(m["relpath"]) == sorted(fuzzed)
    failed = m[m["status"] == "failed"]
    assert failed["error"].notna().all() and (failed["error"].str.len() > 3).all()
    assert m[m["status"] == "ok"]["error"].isna().all()
    assert 0 < report.ok < report.total  # some survive a flipped bit, most truncations do not
    survivors = m[m["status"] == "ok"]["relpath"].str.split("/").str[0].nunique()
    assert survivors >= (5 if formats == "every" else 3)  # a wide range of decoders really ran
