"""A long run's manifest is a folder of Parquet parts (``manifest.parquet/part-NNNNN.parquet``, then
``_SUCCESS``) written by tasks, here or on the cluster's workers: pandas, pyarrow and Dask read it as the one
table the single file holds, row for row; ``imgtools.open``, resume, append and derive take either form, and
a folder a run stopped writing is no manifest. ``MANIFEST_PART_ROWS`` is made small (16 rows: 2 chunks of 8)
so that small datasets take the folder form; the client decides, so the cluster's workers need not know.
Spark is not installed here: it reads a folder of Parquet parts as one table, and skips ``_SUCCESS`` (its own
writer's marker), as the others do."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import zarr
from distributed import get_task_stream

import imgtools
from conftest import make_labelled, tree_bytes
from imgtools.config import PresizeConfig
from imgtools.errors import SourceError
from imgtools.location import Location
from imgtools.sinks import ledger, manifest
from imgtools.sinks.manifest import ManifestForm, manifest_form, manifest_token, read_manifest

CHUNK = 8
PART_ROWS = 16  # two chunks a part
FORMATS = ["zarr", "npy", "png"]


@pytest.fixture
def parts(monkeypatch):
    """Runs of more than PART_ROWS rows write the folder form."""
    monkeypatch.setattr(ledger, "MANIFEST_PART_ROWS", PART_ROWS)


@pytest.fixture
def src(labelled_dir):
    """81 inputs (11 chunks of 8, the last of 1: 6 parts, the last of one row), one of them broken."""
    (labelled_dir / "class1" / "broken.jpg").write_bytes(b"not a jpeg")
    return labelled_dir


def config(fmt: str = "zarr") -> PresizeConfig:
    return PresizeConfig.build(sizes=[16], format=fmt, chunk=CHUNK)


def presize(src, dest, fmt: str = "zarr", **kw):
    kw.setdefault("workers", 0)
    return imgtools.presize(str(src), str(dest), config=config(fmt), progress=False, **kw)


def single(src, tmp_path, fmt: str = "zarr"):
    """The same run with its manifest in one file (the default for runs this small)."""
    dest = tmp_path / f"single-{fmt}"
    with pytest.MonkeyPatch.context() as m:
        m.setattr(ledger, "MANIFEST_PART_ROWS", 1 << 20)
        report = presize(src, dest, fmt)
    assert (dest / "manifest.parquet").is_file()
    return dest, report


def assert_parts(dest, rows: int) -> None:
    """A complete folder manifest of ``rows`` rows: parts of two whole chunks, in order, then _SUCCESS."""
    folder = dest / "manifest.parquet"
    n = -(-rows // PART_ROWS)
    assert sorted(p.name for p in folder.iterdir()) == ["_SUCCESS"] + [f"part-{p:05d}.parquet" for p in range(n)]
    assert json.loads((folder / "_SUCCESS").read_text())["parts"] == n
    for p in range(n):
        index = pd.read_parquet(folder / f"part-{p:05d}.parquet")["index"].tolist()
        assert index == list(range(p * PART_ROWS, min(rows, (p + 1) * PART_ROWS)))


@pytest.mark.parametrize("fmt", FORMATS)
def test_folder_manifest_written_here_reads_as_the_single_file_row_for_row(src, tmp_path, parts, fmt):
    one, expected = single(src, tmp_path, fmt)
    dest = tmp_path / "parts"
    report = presize(src, dest, fmt)
    assert_parts(dest, 81)
    assert (report.total, report.ok, report.failed) == (expected.total, expected.ok, expected.failed) == (81, 80, 1)
    pd.testing.assert_frame_equal(report.failures, expected.failures)
    whole = pd.read_parquet(one / "manifest.parquet").drop(columns="origin")  # origin names the source: the same
    folder = dest / "manifest.parquet"
    pd.testing.assert_frame_equal(pd.read_parquet(folder).drop(columns="origin"), whole)
    pd.testing.assert_frame_equal(read_manifest(Location.resolve(str(dest))).drop(columns="origin"), whole)
    pd.testing.assert_frame_equal(read_manifest(str(dest), columns=["index", "status"]), whole[["index", "status"]])
    table = pq.read_table(one / "manifest.parquet")
    assert pq.read_table(folder).equals(table) and pads.dataset(str(folder)).to_table().equals(table)
    assert pq.read_table(folder).schema.equals(table.schema, check_metadata=True)
    a, b = tree_bytes(dest), tree_bytes(one)
    for tree in (a, b):  # besides the manifest, the same bytes (the attributes and job name no paths)
        for key in [k for k in tree if k.startswith("manifest.parquet") or k.startswith(".imgtools")]:
            del tree[key]
    assert a == b


@pytest.mark.filterwarnings("ignore:The inplace keyword:DeprecationWarning")  # Dask's own use of pandas 3
def test_dask_reads_the_folder_manifest_as_one_table_in_index_order(src, tmp_path, parts):
    import dask.dataframe as dd

    one, _ = single(src, tmp_path)
    presize(src, tmp_path / "parts")
    frame = dd.read_parquet(str(tmp_path / "parts" / "manifest.parquet"))
    assert frame.npartitions == 6
    got = frame.compute().reset_index(drop=True)
    pd.testing.assert_frame_equal(got, pd.read_parquet(one / "manifest.parquet"), check_dtype=False)


@pytest.mark.parametrize("fmt", ["zarr", "png"])
def test_folder_manifest_written_on_the_cluster_equals_the_one_written_here(src, tmp_path, parts, dask_client, fmt):
    presize(src, tmp_path / "here", fmt)
    with get_task_stream(dask_client) as stream:
        report = presize(src, tmp_path / "cluster", fmt, client=dask_client, workers=None)
    merged = [t for t in stream.data if str(t["key"]).startswith("imgtools-manifest")]
    assert len(merged) == 6  # one task a part, on the workers
    assert_parts(tmp_path / "cluster", 81)
    assert report.failed == 1 and report.failures["origin"].str.endswith("broken.jpg").all()
    for p in range(6):
        name = f"manifest.parquet/part-{p:05d}.parquet"
        a, b = (pd.read_parquet(tmp_path / d / name).drop(columns="origin") for d in ("here", "cluster"))
        pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("fmt", FORMATS)
def test_open_reads_labels_and_images_of_a_folder_manifest_as_of_a_single_file(src, tmp_path, parts, fmt):
    one, _ = single(src, tmp_path, fmt)
    presize(src, tmp_path / "parts", fmt)
    a, b = imgtools.open(str(tmp_path / "parts")), imgtools.open(str(one))
    pd.testing.assert_frame_equal(a.manifest.drop(columns="origin"), b.manifest.drop(columns="origin"))
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.ok, b.ok)
    assert len(a) == len(b) == 80
    for j in (0, 17, 40, 79):
        image, label = a[j]
        other, other_label = b[j]
        np.testing.assert_array_equal(image, other)
        assert label == other_label


def test_a_single_file_manifest_from_before_still_opens_and_a_rerun_makes_it_a_folder(src, tmp_path, monkeypatch):
    dest, _ = single(src, tmp_path)  # as every output was written before the folder form
    location = Location.resolve(str(dest))
    assert manifest_form(location) is ManifestForm.FILE
    before = imgtools.open(str(dest)).manifest
    monkeypatch.setattr(ledger, "MANIFEST_PART_ROWS", PART_ROWS)
    report = presize(src, dest)  # the same job again: every chunk resumed, the manifest written anew
    assert report.chunks_resumed == 11 and manifest_form(location) is ManifestForm.FOLDER
    assert_parts(dest, 81)
    pd.testing.assert_frame_equal(imgtools.open(str(dest)).manifest, before)
    monkeypatch.setattr(ledger, "MANIFEST_PART_ROWS", 1 << 20)
    presize(src, dest)  # and back: the folder is removed, one file written
    assert manifest_form(location) is ManifestForm.FILE and (dest / "manifest.parquet").is_file()
    pd.testing.assert_frame_equal(imgtools.open(str(dest)).manifest, before)


def _stop_at_part(monkeypatch, number: int) -> None:
    """Make the run stop while it writes part ``number`` of its manifest (the earlier parts are written)."""
    write = manifest.PartWriter.__call__

    def stopping(self, part):
        if part.number == number:
            raise KeyboardInterrupt("stopped while writing the manifest")
        return write(self, part)

    monkeypatch.setattr(manifest.PartWriter, "__call__", stopping)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_run_stopped_while_writing_parts_is_incomplete_and_the_rerun_writes_them(src, tmp_path, parts,
                                                                                  monkeypatch, fmt):
    one, _ = single(src, tmp_path, fmt)
    dest = tmp_path / "parts"
    with monkeypatch.context() as m:
        _stop_at_part(m, 3)
        with pytest.raises(KeyboardInterrupt):
            presize(src, dest, fmt)
    location = Location.resolve(str(dest))
    assert (dest / "manifest.parquet" / "part-00002.parquet").exists() and manifest_form(location) is None
    with pytest.raises(SourceError, match="not a complete imgtools output"):
        imgtools.open(str(dest))
    report = presize(src, dest, fmt)
    retried = fmt == "png"  # image-file outputs try failed images again: the broken one's chunk
    assert (report.chunks_resumed, report.processed) == (11 - retried, int(retried))  # else only the manifest
    assert_parts(dest, 81)
    pd.testing.assert_frame_equal(pd.read_parquet(dest / "manifest.parquet").drop(columns="origin"),
                                  pd.read_parquet(one / "manifest.parquet").drop(columns="origin"))


def test_a_rerun_stopped_while_writing_parts_leaves_no_complete_output_behind(src, tmp_path, parts, monkeypatch):
    """The attributes of the finished output are still there, but its manifest is not: not complete."""
    dest = tmp_path / "parts"
    presize(src, dest)
    token = manifest_token(Location.resolve(str(dest)))
    with monkeypatch.context() as m:
        _stop_at_part(m, 1)
        with pytest.raises(KeyboardInterrupt):
            presize(src, dest)
    with pytest.raises(SourceError, match="not a complete imgtools output"):
        imgtools.open(str(dest))
    presize(src, dest)
    assert_parts(dest, 81)
    assert manifest_token(Location.resolve(str(dest))) != token  # a reader's cache sees a new manifest
    assert len(imgtools.open(str(dest)).manifest) == 81


def test_a_run_over_an_interrupted_chunk_finishes_it_and_writes_the_folder(src, tmp_path, parts):
    dest = tmp_path / "parts"
    presize(src, dest)
    before = tree_bytes(dest)
    (dest / ".imgtools/chunks/0000004.parquet").unlink()  # as if the run died while writing chunk 4
    report = presize(src, dest)
    assert (report.chunks_done, report.chunks_resumed) == (1, 10)
    after = tree_bytes(dest)
    for tree in (before, after):
        del tree["manifest.parquet/_SUCCESS"]  # names the run
    assert after == before


@pytest.mark.parametrize("fmt", FORMATS)
def test_append_onto_a_folder_manifest_equals_a_fresh_run_of_everything(tmp_path, parts, fmt):
    full = tmp_path / "full"
    make_labelled(full, per_class=12, classes=3)
    src = tmp_path / "src"
    src.mkdir()
    for name in ("class0", "class1"):
        (full / name).rename(src / name)
    dest = tmp_path / "appended"
    presize(src, dest, fmt)
    assert manifest_form(Location.resolve(str(dest))) is ManifestForm.FOLDER
    (full / "class2").rename(src / "class2")  # sorts after every row of DEST
    report = presize(src, dest, fmt, append=True)
    assert (report.appended, report.total) == (12, 36)
    assert not (dest / ".imgtools" / "append-base.parquet").exists()
    presize(src, tmp_path / "fresh", fmt)
    assert_parts(dest, 36)
    a, b = tree_bytes(dest), tree_bytes(tmp_path / "fresh")
    for tree in (a, b):
        del tree["manifest.parquet/_SUCCESS"]  # names the run
        if fmt == "png":  # image files' job is their config: the record of the run that made DEST stays
            del tree[".imgtools/job.json"]
    assert a == b


def test_derive_cli_on_a_folder_manifest_output(src, tmp_path, parts, cli_env):
    dest = tmp_path / "parts"
    presize(src, dest)
    proc = subprocess.run([sys.executable, "-m", "imgtools.cli", "derive", str(dest), "--from", "16x16", "--size", "8",
                           "--workers", "0"], capture_output=True, text=True, env=cli_env)
    assert proc.returncode == 0 and "derived 8x8 from 16x16 for 81 images" in proc.stdout, proc.stderr
    assert zarr.open_group(str(dest), mode="r").attrs["imgtools"]["sizes"] == ["16x16", "8x8"]
    ds = imgtools.open(str(dest))
    assert ds.sizes == ["16x16", "8x8"] and ds.image(0, "8x8").shape == (8, 8, 3)


@pytest.mark.slow
def test_folder_manifest_in_a_bucket_opens_and_a_rerun_replaces_it(src, tmp_path, parts, bucket):
    url, options, _ = bucket
    dest = f"{url}/out.zarr"
    presize(src, dest, storage_options=options)
    location = Location.resolve(dest, options)
    assert manifest_form(location) is ManifestForm.FOLDER
    whole = pd.read_parquet(single(src, tmp_path)[0] / "manifest.parquet").drop(columns="origin")
    folder = pd.read_parquet(f"{dest}/manifest.parquet", storage_options=options)  # pandas reads the URL
    pd.testing.assert_frame_equal(folder.drop(columns="origin"), whole)
    pd.testing.assert_frame_equal(imgtools.open(dest, storage_options=options).manifest.drop(columns="origin"), whole)
    token = manifest_token(location)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(ledger, "MANIFEST_PART_ROWS", 1 << 20)
        presize(src, dest, storage_options=options)  # the parts removed, one file written
    location.fs.invalidate_cache()
    assert manifest_form(location) is ManifestForm.FILE and manifest_token(location) != token
    assert location.fs.find(location.path("manifest.parquet")) == [location.path("manifest.parquet")]
    pd.testing.assert_frame_equal(imgtools.open(dest, storage_options=options).manifest.drop(columns="origin"), whole)


@pytest.mark.parametrize("per_row", [True, False])
def test_a_tally_without_rows_counts_the_same_and_keeps_no_row(per_row):
    from imgtools.schema import ManifestTally

    rows = pd.DataFrame({"index": [0, 1, 2], "origin": ["a", "b", "c"], "status": ["ok", "failed", "skipped"],
                         "error": [None, "bad", "small"], "label_id": [0, 1, 1]})
    tally = ManifestTally(per_row=per_row)
    _ = list(tally.count([rows.iloc[:2], rows.iloc[2:]]))
    assert (tally.rows, tally.skipped, tally.failed["origin"].tolist()) == (3, 1, ["b"])
    if per_row:
        assert tally.ok.tolist() == [True, False, False] and tally.labels.tolist() == [0, 1, 1]
    else:
        assert tally._ok == [] and tally._labels == []
        with pytest.raises(RuntimeError, match="keeps no row"):
            _ = tally.ok


def test_a_rerun_stopped_while_writing_the_single_file_leaves_no_complete_output_behind(src, tmp_path, monkeypatch):
    """A local single-file manifest is written under a temporary name and renamed: cut short, nothing
    named manifest.parquet is left beside the finished output's attributes, and the next run completes it."""
    dest, _ = single(src, tmp_path)
    before = (dest / "manifest.parquet").read_bytes()

    def cut_short(f, parts, *args, **kwargs):
        f.write(b"PAR1 half a manifest")
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(ledger, "write_rows", cut_short)
        with pytest.raises(KeyboardInterrupt):
            presize(src, dest)
    assert not (dest / "manifest.parquet").exists()
    with pytest.raises(SourceError, match="not a complete imgtools output"):
        imgtools.open(str(dest))
    presize(src, dest)
    assert (dest / "manifest.parquet").read_bytes() == before
    assert not list(dest.glob("manifest.parquet.*"))  # the cut-short file was cleared


def test_a_removal_cut_short_leaves_no_folder_that_looks_complete(src, tmp_path, parts, monkeypatch):
    dest = tmp_path / "parts"
    presize(src, dest)
    location = Location.resolve(str(dest))
    assert manifest_form(location) is ManifestForm.FOLDER

    def killed(self, path, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(location.fs), "rm", killed)  # killed once _SUCCESS is gone, before the parts go
    with pytest.raises(KeyboardInterrupt):
        manifest.remove_manifest(location)
    assert manifest_form(location) is None and (dest / "manifest.parquet" / "part-00000.parquet").exists()
