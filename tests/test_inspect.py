"""inspect: counts by format and mode, failures with reasons, duplicates by content, JSON, histogram."""

from __future__ import annotations

import json
import subprocess
import sys

from PIL import Image

import imgtools
from conftest import encode, hostile_files


def test_inspect_counts_formats_modes_failures_and_duplicates_on_a_cluster(hostile_dir, dask_client):
    (hostile_dir / "ok" / "copy of plain.jpg").write_bytes((hostile_dir / "ok" / "plain.jpg").read_bytes())
    report = imgtools.inspect(str(hostile_dir), client=dask_client, partition=5)
    s = report.summary()
    broken = {n.rstrip("!") for n in hostile_files() if n.endswith("!") and not n.endswith(".eps!")}
    assert set(s["failures"]) == broken and all(s["failures"].values())
    assert s["files"] == len(report.files) == s["ok"] + s["failed"]
    assert s["formats"]["JPEG"] >= 5 and {"PNG", "GIF", "WEBP", "BMP", "TIFF"} <= set(s["formats"])
    assert {"CMYK", "RGB", "P", "1"} <= set(s["modes"])
    groups = [set(g) for g in s["duplicates"]]  # the corpus itself repeats its JPEG and PNG bytes
    assert {"ok/copy of plain.jpg", "ok/plain.jpg", "ok/with space.jpg", "ok/[brackets].jpg"} <= groups[1] | groups[0]
    assert {"ok/hash#1.png", "ok/what?.png"} in groups and len(groups) == 2
    assert s["width"]["max"] == 4000 and s["height"]["min"] == 1
    assert "groups of duplicates" in str(report)


def test_inspect_cli_json_and_histogram(labelled_dir, tmp_path):
    hist = tmp_path / "h.png"
    proc = subprocess.run([sys.executable, "-m", "imgtools.cli", "inspect", str(labelled_dir), "--json", "--hist",
                           str(hist), "--workers", "0"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert (data["files"], data["ok"], data["failed"]) == (80, 80, 0)
    assert set(data["formats"]) == {"JPEG", "PNG", "WEBP"} and data["modes"] == {"RGB": 80}
    with Image.open(hist) as img:
        assert img.format == "PNG" and img.size == (640, 320)


def test_empty_and_broken_files_are_failures_not_duplicates(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "empty1.png").write_bytes(b"")
    (tmp_path / "a" / "empty2.png").write_bytes(b"")
    (tmp_path / "a" / "ok.png").write_bytes(encode(Image.new("RGB", (300, 20)), "PNG"))
    report = imgtools.inspect(str(tmp_path), workers=0)
    assert report.duplicates == [] and len(report.failed) == 2
    assert report.histogram().size == (640, 320)
