"""The listing as parts in DEST (imgtools.listparts, imgtools.folders): the same rows in the same order as
list_source however the tree is cut, chunks read back from the parts, a digest independent of the cut,
a resumed run taking the listing it finds (unless relist), and a client that holds no rows."""

from __future__ import annotations

import pathlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import imgtools
from conftest import encode, gradient, make_archive
from imgtools import folders, listparts
from imgtools.listing import list_source
from imgtools.location import Location

JPEG = encode(Image.fromarray(gradient(12, 10)), "JPEG")


def _tree(root: pathlib.Path) -> pathlib.Path:
    """Files whose relpaths interleave with folders of the same stem (``a.jpg``, ``a/…``, ``a0.jpg``),
    hidden names, an image without an extension, a non-image, and folders two levels deep."""
    names = ["a.jpg", "a/x.jpg", "a/x/deep.jpg", "a/x-1.jpg", "a0.jpg", "b/1.png", "b/c/2.jpg", "b.jpg",
             ".hidden/1.jpg", "a/.h.jpg", "noext", "notes.txt", "z/y/x/w.jpg", "é/ü.jpg"]
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"plain text" if name.endswith(".txt") else JPEG)
    return root


@pytest.mark.parametrize("split", [1, 2, 32])
@pytest.mark.parametrize("unit_files", [1, 3, 50_000])
def test_a_folder_listed_in_parts_equals_list_source_row_for_row(tmp_path, monkeypatch, split, unit_files):
    root = _tree(tmp_path / "src")
    monkeypatch.setattr(folders, "LISTING_SPLIT", split)
    monkeypatch.setattr(folders, "UNIT_FILES", unit_files)
    location = Location.resolve(str(tmp_path / "dest"))
    parts = listparts.write_listing(str(root), location)
    expected = list_source(str(root)).items
    assert [r for r in expected["relpath"]] == sorted(expected["relpath"])
    assert "noext" in set(expected["relpath"]) and "notes.txt" not in set(expected["relpath"])
    pd.testing.assert_frame_equal(listparts.load_listing(location, parts).items, expected)
    assert parts.digest == f"{listparts.rows_digest(expected):016x}"
    assert parts.label_names == ("a", "b", "z", "é")


def test_units_cut_a_bucket_at_its_first_levels_and_equal_one_listing(bucket, monkeypatch):
    url, options, _ = bucket
    fs = Location.resolve(url, options).fs
    for name in ["a.jpg", "a/x.jpg", "a/x/deep.jpg", "a0.jpg", "b/1.jpg", "b/c/2.jpg", "c/d/e/3.jpg"]:
        fs.pipe_file(f"{Location.resolve(url, options).root}/src/{name}", JPEG)
    monkeypatch.setattr(folders, "LISTING_SPLIT", 4)
    monkeypatch.setattr(folders, "UNIT_FILES", 1)
    location = Location.resolve(f"{url}/dest", options)
    parts = listparts.write_listing(f"{url}/src", location, storage_options=options)
    expected = list_source(f"{url}/src", storage_options=options).items
    assert list(expected["relpath"]) == ["a.jpg", "a/x.jpg", "a/x/deep.jpg", "a0.jpg", "b/1.jpg", "b/c/2.jpg",
                                         "c/d/e/3.jpg"]
    assert len(parts.counts) > 3  # really cut
    pd.testing.assert_frame_equal(listparts.load_listing(location, parts).items, expected)


@pytest.mark.parametrize("kind", ["csv", "parquet", "tar", "tar.gz", "zip-deflate"])
def test_manifests_and_archives_listed_in_parts_equal_list_source(tmp_path, monkeypatch, kind):
    monkeypatch.setattr(listparts, "PART_ROWS", 2)
    files = {f"c{i % 2}/{i}.jpg": JPEG for i in range(5)}
    if kind in ("csv", "parquet"):
        for name, data in files.items():
            (tmp_path / name).parent.mkdir(exist_ok=True)
            (tmp_path / name).write_bytes(data)
        frame = pd.DataFrame({"path": list(files), "label": ["x", None, "y", "x", "y"]})
        source = str(tmp_path / f"list.{kind}")
        frame.to_csv(source, index=False) if kind == "csv" else frame.to_parquet(source, index=False)
    else:
        source = str(make_archive(kind, list(files.items()), tmp_path))
    location = Location.resolve(str(tmp_path / "dest"))
    parts = listparts.write_listing(source, location)
    expected = list_source(source).items
    assert parts.counts == (2, 2, 1) and parts.streams == (kind == "tar.gz")
    pd.testing.assert_frame_equal(listparts.load_listing(location, parts).items, expected)


@pytest.mark.parametrize("n", [1, 70, 1000])
@pytest.mark.parametrize("chunk", [1, 16, 256])
def test_each_chunk_reads_its_rows_from_the_parts_across_part_and_row_group_boundaries(tmp_path, monkeypatch, n,
                                                                                        chunk):
    monkeypatch.setattr(listparts, "PART_ROWS", 64)
    monkeypatch.setattr(listparts, "_ROW_GROUP", 10)
    items = pd.DataFrame({"index": np.arange(n, dtype=np.int64), "origin": [f"/x/{i}.jpg" for i in range(n)],
                          "relpath": [f"{i}.jpg" for i in range(n)],
                          "label": pd.array([None if i % 3 else f"c{i % 5}" for i in range(n)], dtype="string"),
                          "bytes": np.arange(n, dtype=np.int64)})
    location = Location.resolve(str(tmp_path / "dest"))
    parts = listparts.write_rows(location, items.assign(label_id=0), "/x", {"source": "/x"})
    names = parts.label_names
    items["label_id"] = pd.array([names.index(v) if isinstance(v, str) else -1 for v in items["label"]], "int32")
    for k in range(-(-n // chunk)):
        got = listparts.chunk_rows(location, parts.id, k, chunk)
        pd.testing.assert_frame_equal(got, items.iloc[k * chunk : (k + 1) * chunk].reset_index(drop=True))
    listparts.drop_listing(location)
    assert not (tmp_path / "dest" / ".imgtools" / "listing").exists()


@pytest.mark.parametrize("cut", [[0, 3], [1, 1, 1], [3, 0], [2, 1]])
def test_the_digest_of_rows_is_the_same_however_they_are_cut(cut):
    rows = pd.DataFrame({"origin": ["a", "b", "c"], "label": pd.array(["x", None, "y"], dtype="string"),
                         "mask": [None, "m", None]})
    digest, at = 0, 0
    for n in cut:
        digest = listparts._combine(digest, listparts.rows_digest(rows.iloc[at : at + n]), n)
        at += n
    assert digest == listparts.rows_digest(rows)
    assert listparts.rows_digest(rows.iloc[::-1]) != listparts.rows_digest(rows)  # order counts
    assert listparts.rows_digest(rows.assign(label=["x", "z", "y"])) != listparts.rows_digest(rows)


def test_a_resumed_run_takes_the_listing_it_finds_and_relist_lists_again(labelled_dir, tmp_path):
    dest = tmp_path / "out.zarr"
    n = len(list_source(str(labelled_dir)).items)
    listparts.write_listing(str(labelled_dir), Location.resolve(str(dest)))  # as a run stopped after listing
    Image.fromarray(gradient(20, 20)).save(labelled_dir / "class0" / "zz_new.png")
    report = imgtools.presize(str(labelled_dir), str(dest), sizes=[8], workers=0, progress=False)
    assert report.total == n  # the listing found, not SOURCE as it is now
    assert not (dest / ".imgtools" / "listing").exists()  # a finished run removes it
    listparts.write_listing(str(labelled_dir), Location.resolve(str(tmp_path / "again.zarr")))
    Image.fromarray(gradient(20, 20)).save(labelled_dir / "class0" / "zz_newer.png")
    report = imgtools.presize(str(labelled_dir), str(tmp_path / "again.zarr"), sizes=[8], workers=0,
                              progress=False, relist=True)
    assert report.total == n + 2


def test_a_listing_for_another_request_is_not_taken(labelled_dir, tmp_path):
    dest = tmp_path / "out.zarr"
    listparts.write_listing(str(labelled_dir / "class0"), Location.resolve(str(dest)))  # another SOURCE
    report = imgtools.presize(str(labelled_dir), str(dest), sizes=[8], workers=0, progress=False)
    assert report.total == len(list_source(str(labelled_dir)).items)


def test_a_run_refused_for_another_job_leaves_no_listing_behind(labelled_dir, tmp_path):
    dest = tmp_path / "out.zarr"
    imgtools.presize(str(labelled_dir / "class0"), str(dest), sizes=[8], workers=0, progress=False)
    with pytest.raises(imgtools.DestinationError, match="another job"):
        imgtools.presize(str(labelled_dir), str(dest), sizes=[8], workers=0, progress=False)
    assert not (dest / ".imgtools" / "listing").exists() and (dest / "manifest.parquet").exists()


def test_a_missing_source_leaves_no_dest_behind(tmp_path):
    with pytest.raises(imgtools.SourceError, match="does not exist"):
        imgtools.presize(str(tmp_path / "nothing"), str(tmp_path / "out.zarr"), sizes=[8], workers=0, progress=False)
    assert not (tmp_path / "out.zarr").exists()


def test_a_resumed_positional_run_redoes_a_chunk_whose_marker_was_cut_short(labelled_dir, tmp_path):
    dest = tmp_path / "out.zarr"
    config = imgtools.PresizeConfig.build(sizes=[8], chunk=16)
    first = imgtools.presize(str(labelled_dir), str(dest), config=config, workers=0, progress=False)
    before = pd.read_parquet(dest / "manifest.parquet")
    (dest / "manifest.parquet").unlink()
    markers = sorted((dest / ".imgtools" / "chunks").iterdir())
    markers[1].write_bytes(markers[1].read_bytes()[:40])  # a marker cut short by a kill
    markers[2].unlink()
    again = imgtools.presize(str(labelled_dir), str(dest), config=config, workers=0, progress=False)
    assert again.chunks_done == 2 and again.chunks_resumed == first.chunks_done - 2
    pd.testing.assert_frame_equal(pd.read_parquet(dest / "manifest.parquet"), before)


def _garbled_row_group(path: pathlib.Path) -> None:
    """A Parquet manifest of two row groups whose second one is garbage."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"path": [f"{i}.jpg" for i in range(200)], "label": ["x"] * 200}), path,
                   row_group_size=100)
    offset = pq.read_metadata(path).row_group(1).column(0).data_page_offset
    data = bytearray(path.read_bytes())
    data[offset + 4 : offset + 60] = os.urandom(56)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("case", "message"), [
    ("no path column", "has no 'path' column (columns: file, label)"),
    ("null paths", "has an empty or non-text path at row 1: nan"),
    ("garbled row group", "cannot be read in row group 1 (rows 100 to 199)"),
])
def test_a_bad_manifest_is_refused_naming_the_part_and_leaves_no_dest(tmp_path, case, message):
    path = tmp_path / "m.parquet"
    if case == "no path column":
        pd.DataFrame({"file": ["a.jpg"], "label": ["x"]}).to_parquet(path, index=False)
    elif case == "null paths":
        pd.DataFrame({"path": ["a.jpg", None, None], "label": ["x", "y", "z"]}).to_parquet(path, index=False)
    else:
        _garbled_row_group(path)
    with pytest.raises(imgtools.SourceError) as err:
        imgtools.presize(str(path), str(tmp_path / "out.zarr"), sizes=[8], workers=0, progress=False)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out.zarr").exists()


def test_a_refused_run_leaves_an_empty_dest_folder_empty(tmp_path):
    (tmp_path / "out.zarr").mkdir()
    with pytest.raises(imgtools.SourceError, match="does not exist"):
        imgtools.presize(str(tmp_path / "nothing"), str(tmp_path / "out.zarr"), sizes=[8], workers=0, progress=False)
    assert (tmp_path / "out.zarr").is_dir() and not any((tmp_path / "out.zarr").iterdir())


def test_a_listing_written_again_cut_otherwise_is_read_afresh_not_from_the_cached_parts(tmp_path, monkeypatch):
    root = _tree(tmp_path / "src")
    location = Location.resolve(str(tmp_path / "dest"))
    first = listparts.write_listing(str(root), location)
    expected = list_source(str(root)).items
    pd.testing.assert_frame_equal(listparts.chunk_rows(location, first.id, 0, 100), expected)  # parts now cached
    monkeypatch.setattr(folders, "UNIT_FILES", 1)  # the same rows, other parts
    again = listparts.write_listing(str(root), location)
    assert again.digest == first.digest and again.counts != first.counts
    pd.testing.assert_frame_equal(listparts.chunk_rows(location, again.id, 0, 100), expected)


def test_a_csv_label_column_with_gaps_gives_the_same_labels_to_the_listing_and_the_dry_run(tmp_path):
    from imgtools.listing import summarize_source

    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(JPEG)
    (tmp_path / "m.csv").write_text("path,label\n0.jpg,3\n1.jpg,\n2.jpg,10\n")  # read as numbers, 3 would be 3.0
    listing = list_source(str(tmp_path / "m.csv"))
    assert listing.label_names == ("3", "10") == summarize_source(str(tmp_path / "m.csv")).label_names


def _parts_manifest(root: pathlib.Path, sizes=(3, 0, 4)) -> tuple[pathlib.Path, pd.DataFrame]:
    """A folder of Parquet parts (as Spark, Dask or pyarrow write one table) beside the images its relative
    paths name, with the files such writers leave (``_SUCCESS``, a hidden file); and the whole table."""
    frames = []
    for k, n in enumerate(sizes):
        start = sum(sizes[:k])
        frames.append(pd.DataFrame({"path": [f"c{i % 2}/{i}.jpg" for i in range(start, start + n)],
                                    "label": [f"c{i % 2}" for i in range(start, start + n)]}))
        for i in range(start, start + n):
            (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
            (root / f"c{i % 2}" / f"{i}.jpg").write_bytes(JPEG)
    folder = root / "m.parquet"
    (folder / "sub").mkdir(parents=True)
    for k, frame in enumerate(frames):  # part 2 one level down (a partitioned write)
        where = folder / "sub" if k == 2 else folder
        frame.to_parquet(where / f"part-{k:05d}.parquet", index=False, row_group_size=2)
    (folder / "_SUCCESS").write_bytes(b"")
    pd.DataFrame({"path": ["nope.jpg"]}).to_parquet(folder / ".hidden.parquet")
    return folder, pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("rows", [1, 3, 100])
def test_a_folder_of_parquet_parts_is_one_manifest_in_part_order(tmp_path, monkeypatch, rows):
    folder, table = _parts_manifest(tmp_path)
    table.to_parquet(tmp_path / "whole.parquet", index=False)
    monkeypatch.setattr(listparts, "PART_ROWS", rows)
    expected = list_source(str(tmp_path / "whole.parquet")).items
    assert list_source(str(folder)).items.equals(expected)
    location = Location.resolve(str(tmp_path / "dest"))
    parts = listparts.write_listing(str(folder), location, mapper=lambda work, items: [work(i) for i in items])
    pd.testing.assert_frame_equal(listparts.load_listing(location, parts).items, expected)
    plan = imgtools.dry_run(str(folder), str(tmp_path / "out.zarr"), sizes=[8])
    assert plan.inputs == 7 and list(plan.label_names) == ["c0", "c1"]
    report = imgtools.presize(str(folder), str(tmp_path / "out.zarr"), sizes=[8], workers=0, progress=False)
    assert report.ok == 7


def test_a_bad_part_of_a_folder_manifest_is_named_with_its_rows(tmp_path):
    folder, _ = _parts_manifest(tmp_path)
    _garbled_row_group(folder / "part-00001.parquet")  # rows 3 to 202 of the table, in groups of 100
    with pytest.raises(imgtools.SourceError) as err:
        imgtools.presize(str(folder), str(tmp_path / "out.zarr"), sizes=[8], workers=0, progress=False)
    assert "m.parquet' cannot be read in part-00001.parquet, row group 1 (rows 103 to 202)" in str(err.value)
    empty = tmp_path / "empty.parquet"  # a writer's marker and no part
    empty.mkdir()
    (empty / "_SUCCESS").write_bytes(b"")
    with pytest.raises(imgtools.SourceError, match="is a folder without .parquet parts"):
        imgtools.presize(str(empty), str(tmp_path / "out2.zarr"), sizes=[8], workers=0, progress=False)


def test_a_manifest_whose_first_batch_has_no_label_is_listed_in_runs_of_row_groups(tmp_path, monkeypatch):
    """A part written batch after batch takes a column without any value in its first batch as text."""
    monkeypatch.setattr(listparts, "PART_ROWS", 2)  # batches of 2 rows within runs of one row group of 4
    labels = [None, None, "x", "y", None, "x", "y", "x"]
    pd.DataFrame({"path": [f"{i}.jpg" for i in range(8)], "label": labels}).to_parquet(
        tmp_path / "m.parquet", index=False, row_group_size=4)
    source = str(tmp_path / "m.parquet")
    location = Location.resolve(str(tmp_path / "dest"))
    parts = listparts.write_listing(source, location, mapper=lambda work, items: [work(i) for i in items])
    assert parts.counts == (4, 4) and parts.label_names == ("x", "y")
    pd.testing.assert_frame_equal(listparts.load_listing(location, parts).items, list_source(source).items)


def test_a_folder_of_images_named_like_a_parquet_file_is_listed_as_images(tmp_path):
    folder = tmp_path / "photos.parquet"
    (folder / "cats").mkdir(parents=True)
    (folder / "cats" / "1.jpg").write_bytes(JPEG)
    assert list_source(str(folder)).items["relpath"].tolist() == ["cats/1.jpg"]
    assert imgtools.dry_run(str(folder), str(tmp_path / "out.zarr"), sizes=[8]).inputs == 1


def test_a_csv_manifest_that_breaks_part_way_names_the_rows_read_before(tmp_path, monkeypatch):
    path = tmp_path / "m.csv"
    path.write_text("path,label\n" + "".join(f"{i}.jpg,x\n" for i in range(5)) + '"broken,x\n')
    monkeypatch.setattr(listparts, "PART_ROWS", 2)
    with pytest.raises(imgtools.SourceError, match="cannot be read after row 4"):
        listparts.write_listing(str(path), Location.resolve(str(tmp_path / "dest")))
