"""The size guard: a file whose listed length is over ``max_bytes`` is a failed row naming its size, never
read; its neighbours are unaffected, in folders and every archive kind; a bad ``--max-bytes`` exits 2."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from PIL import Image

import imgtools
from conftest import ARCHIVE_WRITERS, encode, gradient, make_archive
from imgtools.config import DEFAULT_MAX_BYTES, PresizeConfig
from imgtools.sources import list_source

SMALL = encode(Image.fromarray(gradient(40, 30)), "JPEG")


def _rows(dest) -> pd.DataFrame:
    return pd.read_parquet(f"{dest}/manifest.parquet").set_index("relpath")


def test_listing_records_each_files_length(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(SMALL)
    (tmp_path / "y.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    items = list_source(str(tmp_path)).items.set_index("relpath")
    assert items.loc["a/x.jpg", "bytes"] == len(SMALL) and items.loc["y.png", "bytes"] == 108


def test_a_sparse_file_of_gigabytes_fails_unread_at_the_default_limit(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.jpg").write_bytes(SMALL)
    with open(src / "huge.jpg", "wb") as f:  # a real JPEG followed by 2 GiB of nothing (sparse: costs no disk)
        f.write(SMALL)
        f.truncate(2 << 30)
    report = imgtools.presize(str(src), str(tmp_path / "out.zarr"), sizes=[16], workers=0, progress=False)
    rows = _rows(tmp_path / "out.zarr")
    assert report.ok == 1 and rows.loc["ok.jpg", "status"] == "ok"
    assert rows.loc["huge.jpg", "error"] == f"file is {2 << 30} bytes, above max_bytes {DEFAULT_MAX_BYTES}"


@pytest.mark.parametrize("kind", sorted(ARCHIVE_WRITERS))
def test_an_archive_member_over_the_limit_fails_and_its_neighbours_are_read(tmp_path, kind):
    big = SMALL + b"\0" * 300_000  # compresses to almost nothing: the header's length is what counts
    archive = make_archive(kind, [("a/first.jpg", SMALL), ("a/big.jpg", big), ("a/last.jpg", SMALL)], tmp_path)
    config = PresizeConfig.build(sizes=[16], max_bytes=100_000)
    report = imgtools.presize(str(archive), str(tmp_path / "out.zarr"), config=config, workers=0, progress=False)
    rows = _rows(tmp_path / "out.zarr")
    assert report.ok == 2 and list(rows["status"]) == ["ok", "failed", "ok"]
    assert rows.loc["a/big.jpg", "error"] == f"file is {len(big)} bytes, above max_bytes 100000"


def test_files_a_manifest_names_have_no_listed_length_and_are_read(tmp_path):
    (tmp_path / "x.jpg").write_bytes(SMALL)
    pd.DataFrame({"path": ["x.jpg"]}).to_csv(tmp_path / "list.csv", index=False)
    assert list(list_source(str(tmp_path / "list.csv")).items["bytes"]) == [-1]
    config = PresizeConfig.build(sizes=[16], max_bytes=10)
    report = imgtools.presize(str(tmp_path / "list.csv"), str(tmp_path / "out.zarr"), config=config, workers=0,
                              progress=False)
    assert report.ok == 1


def test_an_output_written_before_max_bytes_existed_still_resumes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "x.jpg").write_bytes(SMALL)
    dest = tmp_path / "out.zarr"
    imgtools.presize(str(src), str(dest), sizes=[16], workers=0, progress=False)
    job_file = dest / ".imgtools" / "job.json"
    job = job_file.read_text()
    assert '"max_bytes"' in job
    job_file.write_text(job.replace(f'"max_bytes": {DEFAULT_MAX_BYTES},', ""))  # as an older imgtools wrote it
    report = imgtools.presize(str(src), str(dest), sizes=[16], workers=0, progress=False)
    assert report.ok == 1 and report.chunks_resumed == 1


@pytest.mark.parametrize("value", ["0", "-5", "lots"])
def test_a_bad_max_bytes_exits_2_naming_it(tmp_path, cli_env, value):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "x.jpg").write_bytes(SMALL)
    proc = subprocess.run([sys.executable, "-m", "imgtools.cli", "presize", str(tmp_path / "src"),
                           str(tmp_path / "o"), "--max-bytes", value, "--workers", "0"],
                          capture_output=True, text=True, env=cli_env, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and value in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()
