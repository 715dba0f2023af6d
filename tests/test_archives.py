"""Archives as sources: .tar, .tar.gz, .zip, one or a glob of shards, read in place without extracting."""

from __future__ import annotations

import io
import pathlib
import subprocess
import sys
import tarfile
import threading

import numpy as np
import pandas as pd
import pytest
from fsspec.implementations.local import LocalFileSystem

import imgtools
from conftest import ARCHIVE_WRITERS, make_archive, tree_bytes
from imgtools import presize
from imgtools.errors import SourceError
from imgtools.sources import list_source, read_bytes, reading, stream_group


def _same_output(a: str, b: str, sizes=("64x64",)) -> None:
    ra, rb = imgtools.open(a), imgtools.open(b)
    ma, mb = ra.manifest, rb.manifest
    assert list(ma["relpath"]) == list(mb["relpath"])
    assert list(ma["label"]) == list(mb["label"]) and list(ma["status"]) == list(mb["status"])
    for key in sizes:
        np.testing.assert_array_equal(np.asarray(ra.images(key)), np.asarray(rb.images(key)))


@pytest.mark.parametrize("workers", [0, None])
@pytest.mark.parametrize("kind", list(ARCHIVE_WRITERS))
def test_archive_source_gives_the_same_output_as_the_extracted_folder(kind, workers, labelled_dir, tmp_path,
                                                                      dask_client):
    archive = make_archive(kind, tree_bytes(labelled_dir), tmp_path)
    client = dask_client if workers is None else None
    folder = presize(str(labelled_dir), str(tmp_path / "folder.zarr"), sizes=[64], workers=0, progress=False)
    report = presize(str(archive), str(tmp_path / "archive.zarr"), sizes=[64], client=client,
                     workers=workers, progress=False)
    assert report.ok == folder.ok == 80 and report.failed == 0
    _same_output(str(tmp_path / "folder.zarr"), str(tmp_path / "archive.zarr"))
    manifest = imgtools.open(str(tmp_path / "archive.zarr")).manifest
    protocol = "zip" if kind.startswith("zip") else "tar"
    assert manifest["origin"].iloc[0] == f"{protocol}://class0/img000.jpg::file://{archive}"
    assert not {"offset", "size"} & set(manifest.columns)


@pytest.mark.parametrize("kind", ["tar", "tar.gz", "zip-deflate"])
def test_glob_of_shards_is_one_dataset_in_shard_order_split_into_many_chunks(kind, labelled_dir, tmp_path, dask_client):
    files = list(tree_bytes(labelled_dir).items())
    shards = tmp_path / "shards"
    shards.mkdir()
    for s in range(3):  # 27, 27, 26 files
        make_archive(kind, files[s * 27 : (s + 1) * 27], shards, name=f"train-{s:04d}")
    suffix = ARCHIVE_WRITERS[kind][0]
    config = imgtools.PresizeConfig.build(sizes=[64], chunk=16)  # several chunks per shard, some across shards
    presize(str(labelled_dir), str(tmp_path / "folder.zarr"), config=config, workers=0, progress=False)
    report = presize(str(shards / f"train-*{suffix}"), str(tmp_path / "shards.zarr"), config=config,
                     client=dask_client, progress=False)
    assert report.ok == 80
    _same_output(str(tmp_path / "folder.zarr"), str(tmp_path / "shards.zarr"))


def test_list_of_archives_and_a_broken_member_becomes_one_failed_row(labelled_dir, tmp_path):
    files = list(tree_bytes(labelled_dir).items())[:10] + [("class9/broken.jpg", b"\xff\xd8\xff not a jpeg")]
    a = make_archive("tar", files[:5], tmp_path, "a")
    b = make_archive("zip-deflate", files[5:], tmp_path, "b")
    report = presize([str(a), str(b)], str(tmp_path / "out.zarr"), sizes=[32], workers=0, progress=False)
    assert (report.total, report.ok, report.failed) == (11, 10, 1)
    assert report.failures["origin"].iloc[0].startswith("zip://class9/broken.jpg::")


def test_member_bytes_read_without_spans_match_the_file(labelled_dir, tmp_path):
    files = list(tree_bytes(labelled_dir).items())[:6]
    for kind in ("tar", "tar.gz", "zip-deflate"):
        archive = make_archive(kind, files, tmp_path, name=f"x-{kind}")
        protocol = "zip" if kind.startswith("zip") else "tar"
        origins = ([f"{protocol}://{name}::{archive}" for name, _ in reversed(files)]
                   + [f"{protocol}://nope.jpg::{archive}"])
        got = read_bytes(origins)
        assert got[:-1] == [data for _, data in reversed(files)]
        assert isinstance(got[-1], FileNotFoundError)


def test_members_outside_image_extensions_and_hidden_ones_are_left_out(tmp_path, labelled_dir):
    files = list(tree_bytes(labelled_dir).items())[:3]
    files += [("notes.txt", b"hello"), (".hidden/x.jpg", b"x"), ("dir/", b"")]
    archive = make_archive("tar", files[:-1], tmp_path)
    listing = list_source(str(archive))
    assert list(listing.items["relpath"]) == [name for name, _ in files[:3]]
    assert list(listing.items["label"]) == ["class0"] * 3


@pytest.mark.parametrize("bad, message", [
    ("missing.tar", "does not exist"),
    ("nothing-*.tar", "matches no archives"),
    ("corrupt.zip", "cannot be read"),
])
def test_bad_archive_sources_exit_2_naming_them(bad, message, tmp_path, cli_env):
    (tmp_path / "corrupt.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(SourceError, match=message):
        list_source(str(tmp_path / bad))
    run = subprocess.run([sys.executable, "-m", "imgtools.cli", "presize", str(tmp_path / bad),
                          str(tmp_path / "o.zarr")], capture_output=True, text=True, env=cli_env)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1 and message in run.stderr


def test_resume_of_a_compressed_archive_only_redoes_missing_chunks(labelled_dir, tmp_path):
    archive = make_archive("tar.gz", tree_bytes(labelled_dir), tmp_path)
    config = imgtools.PresizeConfig.build(sizes=[32], chunk=16)
    dest = tmp_path / "out.zarr"
    presize(str(archive), str(dest), config=config, workers=0, progress=False)
    for marker in sorted((dest / ".imgtools" / "chunks").iterdir())[2:4]:
        marker.unlink()
    (dest / "manifest.parquet").unlink()
    again = presize(str(archive), str(dest), config=config, workers=0, progress=False)
    assert again.processed == 32 and again.ok == 80
    assert pd.read_parquet(dest / "manifest.parquet")["status"].eq("ok").all()


class CountingFileSystem(LocalFileSystem):
    """Local files under ``counting://``, remembering every file opened (to count passes over an
    archive, and to see that each was closed); ``passes`` are the paths opened other than by a ranged
    read (``cat_ranges``): listings of an archive, and streams through a compressed one."""

    protocol = "counting"
    opened: list = []
    passes: list = []
    _in_ranges = threading.local()

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        return super()._strip_protocol(path[len("counting://"):] if path.startswith("counting://") else path)

    def _open(self, path, *args, **kwargs):
        f = super()._open(path, *args, **kwargs)
        self.opened.append((path, f))
        if not getattr(self._in_ranges, "on", False):
            self.passes.append(path)
        return f

    def cat_ranges(self, *args, **kwargs):
        self._in_ranges.on = True
        try:
            return super().cat_ranges(*args, **kwargs)
        finally:
            self._in_ranges.on = False


@pytest.fixture
def counting_fs():
    """The ``counting://`` filesystem, registered, its records of opened files emptied."""
    import fsspec

    fsspec.register_implementation("counting", CountingFileSystem, clobber=True)
    CountingFileSystem.opened.clear()
    CountingFileSystem.passes.clear()
    yield CountingFileSystem
    CountingFileSystem.opened.clear()
    CountingFileSystem.passes.clear()


def _opens(fs, path) -> list:
    return [f for p, f in fs.opened if p.endswith(str(path))]


def test_a_session_goes_on_through_a_compressed_tar_and_closes_it_at_the_end(tmp_path, counting_fs):
    files = [(f"img/{i:03d}.jpg", b"x%d" % i) for i in range(12)]
    archive = make_archive("tar.gz", files, tmp_path)
    origins = [f"tar://{name}::counting://{archive}" for name, _ in files]
    with reading() as session:
        got = [session.read(origins[start : start + 4]) for start in (0, 4, 8)]
        assert got == [[d for _, d in files[start : start + 4]] for start in (0, 4, 8)]
        assert len(_opens(counting_fs, archive)) == 1  # one forward pass: later members go on from there
        assert not _opens(counting_fs, archive)[0].closed  # kept open for the session's next read
    assert session.closed and all(f.closed for f in _opens(counting_fs, archive))
    with pytest.raises(ValueError, match="closed"):
        session.read(origins[:1])
    counting_fs.opened.clear()
    assert read_bytes(origins[:4]) + read_bytes(origins[4:8]) == [d for _, d in files[:8]]  # a session each
    assert len(_opens(counting_fs, archive)) == 2 and all(f.closed for f in _opens(counting_fs, archive))


def test_a_stream_already_past_some_wanted_members_reads_them_all_on_a_fresh_pass(tmp_path, counting_fs):
    """A retried or resumed chunk of a .tar.gz whose kept-open stream stopped part-way through it."""
    files = [(f"img/{i:03d}.jpg", b"x%d" % i) for i in range(12)]
    archive = make_archive("tar.gz", files, tmp_path)
    origins = [f"tar://{name}::counting://{archive}" for name, _ in files]
    with reading() as session:
        assert session.read(origins[:10]) == [data for _, data in files[:10]]
        assert session.read(origins[6:]) == [data for _, data in files[6:]]
        assert session.read(origins[:1] + [f"tar://nope.jpg::counting://{archive}"])[0] == files[0][1]
    assert len(_opens(counting_fs, archive)) == 3  # the first pass, a fresh one for 6..9, one for 0 and "nope"
    assert all(f.closed for f in _opens(counting_fs, archive))


def test_presize_reads_a_compressed_tar_once_across_its_chunks_and_closes_it(labelled_dir, tmp_path, counting_fs):
    from distributed import Client, LocalCluster

    archive = make_archive("tar.gz", tree_bytes(labelled_dir), tmp_path)
    config = imgtools.PresizeConfig.build(sizes=[16], chunk=16)  # 5 chunks: one task of them all on Dask
    presize(f"counting://{archive}", str(tmp_path / "here.zarr"), config=config, workers=0, progress=False)
    assert len(_opens(counting_fs, archive)) == 2  # listed, then read in one pass by one session
    assert all(f.closed for f in _opens(counting_fs, archive))
    counting_fs.opened.clear()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:  # workers in this process: their opens are counted here
        report = presize(f"counting://{archive}", str(tmp_path / "dask.zarr"), config=config, client=client,
                         progress=False)
    assert report.ok == 80 and len(_opens(counting_fs, archive)) == 2
    assert all(f.closed for f in _opens(counting_fs, archive))
    _same_output(str(tmp_path / "here.zarr"), str(tmp_path / "dask.zarr"), sizes=("16x16",))


def test_stream_groups_are_compressed_tars_only():
    assert stream_group("tar://a/1.jpg::file:///d/s.tar.gz") == stream_group("tar://b/2.jpg::file:///d/s.tar.gz")
    assert stream_group("tar://a/1.jpg::simplecache::gs://b/s.tgz") == "simplecache::gs://b/s.tgz"
    assert {stream_group(o) for o in ("tar://a/1.jpg::file:///d/s.tar", "zip://a/1.jpg::file:///d/s.zip",
                                       "file:///d/a/1.jpg", "gs://b/x.tar.gz")} == {None}


def test_a_folder_whose_name_holds_glob_characters_is_listed_as_a_folder(labelled_dir, tmp_path):
    folder = tmp_path / "photos[old]"
    labelled_dir.rename(folder)
    assert len(list_source(str(folder))) == 80


def _chunks_tasks_passes(source: pathlib.Path | str, chunk: int, dest: pathlib.Path,
                         counting_fs) -> tuple[int, int, int]:
    """presize ``source`` (through ``counting://``) on a Dask cluster in this process: the chunks the run
    did, the Dask tasks that did them (told apart by the partition each ran, as Dask's task stream
    records them), and how often an archive was opened for reading through (its listing aside)."""
    from distributed import Client, LocalCluster, get_task_stream

    counting_fs.passes.clear()
    listed = len(list_source(f"counting://{source}"))
    listings = len(counting_fs.passes)  # a presize lists its source as this did
    counting_fs.passes.clear()
    config = imgtools.PresizeConfig.build(sizes=[8], chunk=chunk)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client, get_task_stream(client) as stream:
        report = presize(f"counting://{source}", str(dest), config=config, client=client, progress=False)
    assert report.total == listed and report.failed == listed  # the members are not pictures: failed rows
    partitions = {entry["key"][1] for entry in stream.data}
    return report.chunks_done, len(partitions), len(counting_fs.passes) - listings


def test_many_small_compressed_shards_run_side_by_side_and_one_big_one_in_one_pass(tmp_path, counting_fs):
    files = [(f"c{i % 2}/{i:03d}.jpg", b"x%d" % i) for i in range(60)]
    for s in range(12):  # shards of 5 members, chunks of 8: every chunk starts less than a chunk into its shard
        make_archive("tar.gz", files[s * 5 : (s + 1) * 5], tmp_path, name=f"small-{s:02d}")
    # a task per chunk, each opening the shards its chunk touches afresh: 18 streams over the 12 shards
    assert _chunks_tasks_passes(tmp_path / "small-*.tar.gz", 8, tmp_path / "small.zarr", counting_fs) == (8, 8, 18)
    (tmp_path / "one").mkdir()
    big = make_archive("tar.gz", files, tmp_path / "one", name="big")
    assert _chunks_tasks_passes(big, 8, tmp_path / "big.zarr", counting_fs) == (8, 1, 1)  # decompressed once
    plain = make_archive("tar", files, tmp_path / "one", name="plain")  # ranged reads: no pass to go on with
    assert _chunks_tasks_passes(plain, 8, tmp_path / "plain.zarr", counting_fs)[:2] == (8, 8)


def test_the_same_path_in_two_shards_is_refused_for_files_and_kept_apart_in_arrays(labelled_dir, tmp_path):
    from imgtools.errors import ConfigError

    files = [(name, data) for name, data in tree_bytes(labelled_dir).items() if name.endswith(".jpg")][:6]
    a = make_archive("tar", files, tmp_path, name="a")
    b = make_archive("tar", [(files[0][0], b"not an image")] + files[1:], tmp_path, name="b")
    with pytest.raises(ConfigError, match="would both be written to"):
        presize([str(a), str(b)], str(tmp_path / "files"), sizes=[32], format="jpeg", workers=0, progress=False)
    assert not (tmp_path / "files").exists()
    twice = make_archive("tar.gz", files[:2] + [(files[0][0], b"a second copy")], tmp_path, name="twice")
    listed = list_source(str(twice)).items  # a name stored twice is one input, its first copy
    assert listed["relpath"].tolist() == [files[0][0], files[1][0]]
    assert read_bytes(list(listed["origin"]))[0] == files[0][1]
    config = imgtools.PresizeConfig.build(sizes=[32], chunk=8)  # one chunk holds both copies of files[0]
    dest = tmp_path / "both.zarr"
    first = presize([str(a), str(b)], str(dest), config=config, workers=0, progress=False)
    again = presize([str(a), str(b)], str(dest), config=config, workers=0, progress=False)
    expected = ["ok"] * 6 + ["failed"] + ["ok"] * 5
    assert (first.ok, again.processed, again.chunks_resumed) == (11, 0, 2)
    assert pd.read_parquet(dest / "manifest.parquet")["status"].tolist() == expected


def test_an_archive_named_by_a_relative_path_is_listed_with_full_url_origins(labelled_dir, tmp_path, monkeypatch):
    files = list(tree_bytes(labelled_dir).items())[:3]
    make_archive("zip-stored", files, tmp_path, name="rel")
    monkeypatch.chdir(tmp_path)
    origins = list(list_source("rel.zip").items["origin"])
    assert all(o.endswith(f"::file://{tmp_path}/rel.zip") for o in origins), origins
    monkeypatch.chdir("/")
    assert read_bytes(origins) == [data for _, data in files]


def test_an_archive_rewritten_in_place_is_indexed_again(tmp_path):
    archive = make_archive("zip-stored", [("img/a.jpg", b"one")], tmp_path)
    assert read_bytes([f"zip://img/a.jpg::{archive}"]) == [b"one"]
    make_archive("zip-stored", [("pad/x.jpg", b"p" * 100), ("img/a.jpg", b"two!")], tmp_path)
    assert read_bytes([f"zip://img/a.jpg::{archive}"]) == [b"two!"]  # the stale span's header named pad/x.jpg
    tar = make_archive("tar", [("img/a.jpg", b"one")], tmp_path)
    assert read_bytes([f"tar://img/a.jpg::{tar}"]) == [b"one"]
    make_archive("tar", [("pad/x.jpg", b"p" * 600), ("img/a.jpg", b"two!")], tmp_path)
    assert read_bytes([f"tar://img/a.jpg::{tar}"]) == [b"two!"]
    assert read_bytes([f"tar://pad/x.jpg::{tar}"]) == [b"p" * 600]  # from the index, no listing again


def test_a_dropped_connection_while_listing_or_reading_an_archive_is_retried_not_a_failure(tmp_path, flaky_fs):
    from imgtools.errors import StorageError
    from imgtools.sources import spans_of

    files = [(f"img/{i}.jpg", b"x%d" % i) for i in range(5)]
    for kind in ("tar", "zip-deflate"):
        archive = make_archive(kind, files, tmp_path)
        flaky_fs.faults["open"] = 1
        listing = list_source(f"flaky://{archive}")
        assert len(listing) == 5 and flaky_fs.faults["open"] == 0
        flaky_fs.faults["cat_ranges"] = 1  # the whole batch of ranged reads fails once
        assert read_bytes(list(listing.items["origin"]), {}, spans_of(listing.items)) == [d for _, d in files]
        assert flaky_fs.faults["cat_ranges"] == 0
    flaky_fs.faults["open"] = 99  # down for good: a storage error (exit 1, resumable), not "cannot be read"
    with pytest.raises(StorageError, match="still failing"):
        list_source(f"flaky://{archive}")


@pytest.mark.parametrize("kind", ["tar", "tar.gz", "zip-stored"])
def test_a_chained_archive_url_keeps_its_chain_in_every_origin(kind, tmp_path):
    files = [(f"img/{i}.jpg", b"x%d" % i) for i in range(3)]
    archive = make_archive(kind, files, tmp_path)
    url = f"simplecache::file://{archive}"
    listing = list_source(url, storage_options={"simplecache": {"cache_storage": str(tmp_path / "cache")}})
    assert all(o.endswith(f"::{url}") for o in listing.items["origin"])
    assert read_bytes(list(listing.items["origin"])) == [d for _, d in files]  # without spans too
    with pytest.raises(SourceError, match="glob of chained URLs"):
        list_source(f"simplecache::file://{tmp_path}/*.tar")


def test_a_local_archive_path_with_a_tilde_is_found(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    make_archive("tar", [("a/1.jpg", b"one")], tmp_path, name="home")
    assert list(list_source("~/home.tar").items["origin"]) == [f"tar://a/1.jpg::file://{tmp_path}/home.tar"]


def test_members_read_without_spans_are_listed_once_whatever_their_names(tmp_path, counting_fs):
    files = [("cls/café.jpg", b"accent"), ("cls/" + "long" * 40 + ".jpg", b"long name"), ("cls/plain.jpg", b"plain")]
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        path = tmp_path / f"names-{fmt}.tar"
        with tarfile.open(path, "w", format=fmt) as tar:
            for name, data in files:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        counting_fs.passes.clear()
        for _ in range(3):
            got = read_bytes([f"tar://{name}::counting://{path}" for name, _ in files])
            assert got == [d for _, d in files]
        assert counting_fs.passes == [str(path)], fmt  # one listing; the reads after it are ranged


def test_a_zip_rewritten_shorter_is_listed_again_not_a_failure(tmp_path):
    big = make_archive("zip-stored", [("pad/x.jpg", b"p" * 5000), ("img/a.jpg", b"one")], tmp_path)
    assert read_bytes([f"zip://img/a.jpg::{big}"]) == [b"one"]
    make_archive("zip-stored", [("img/a.jpg", b"two")], tmp_path)  # the old span now lies past the end
    assert read_bytes([f"zip://img/a.jpg::{big}"]) == [b"two"]
