"""Buckets for real: presize and sync against gcp-storage-emulator (gs://) and moto's S3 server (s3://)
on 127.0.0.1, also through a proxy that injects faults; listing without a request per object."""

from __future__ import annotations

import hashlib
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from fsspec.implementations.local import LocalFileSystem

import imgtools
from conftest import flip_last_byte, make_archive, tree_bytes
from imgtools import presize
from imgtools.errors import SourceError
from imgtools.sources import list_source
from imgtools.sync import sync
from imgtools.testing import Proxy

pytestmark = pytest.mark.slow
IMGTOOLS = [sys.executable, "-m", "imgtools.cli"]


def _upload(server, local: pathlib.Path, url: str) -> None:
    fs = server.filesystem()
    fs.put(str(local) + "/", url.split("://", 1)[1] + "/", recursive=True)


def _arrays(fs, root: str) -> dict[str, bytes]:
    """relpath -> bytes of every array chunk object and array metadata of an output (the manifest and
    attributes name their source and differ by origin only; they are compared apart)."""
    return {rel: data for rel, data in tree_bytes(root, fs).items()
            if not rel.startswith((".imgtools", "manifest", "imgtools")) and rel != "zarr.json"}


def _assert_same_run(fs_a, root_a, fs_b, root_b) -> None:
    a, b = _arrays(fs_a, root_a), _arrays(fs_b, root_b)
    assert a.keys() == b.keys() and len(a) > 3
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]
    ma = pd.read_parquet(fs_a.open(f"{root_a}/manifest.parquet")).drop(columns="origin")
    mb = pd.read_parquet(fs_b.open(f"{root_b}/manifest.parquet")).drop(columns="origin")
    pd.testing.assert_frame_equal(ma, mb)


@pytest.fixture
def local_run(labelled_dir, tmp_path):
    config = imgtools.PresizeConfig.build(sizes=[48, 64], mode="crop", chunk=16)
    presize(str(labelled_dir), str(tmp_path / "local.zarr"), config=config, workers=0, progress=False)
    import fsspec

    return fsspec.filesystem("file"), str(tmp_path / "local.zarr"), config


@pytest.mark.parametrize("route", ["bucket->bucket", "bucket->local", "local->bucket"])
def test_presize_with_a_bucket_on_either_side_equals_the_local_run_byte_for_byte(route, bucket, labelled_dir, tmp_path,
                                                                                  local_run, dask_client):
    url, options, server = bucket
    fs_local, local_root, config = local_run
    source = f"{url}/images" if route.startswith("bucket") else str(labelled_dir)
    if route.startswith("bucket"):
        _upload(server, labelled_dir, source)
    dest = f"{url}/out.zarr" if route.endswith("bucket") else str(tmp_path / "out.zarr")
    report = presize(source, dest, config=config, storage_options=options, client=dask_client, progress=False)
    assert report.ok == 80 and report.failed == 0
    fs_dest = server.filesystem() if dest.startswith(url) else fs_local
    _assert_same_run(fs_local, local_root, fs_dest, dest.split("://", 1)[-1])
    ds = imgtools.open(dest, storage_options=options)
    first = ds.manifest["origin"].iloc[0]
    assert (len(ds) == 80 and first.endswith("/class0/img000.jpg")
            and first.startswith(url if source.startswith(url) else "file://"))


def test_runs_through_a_faulty_connection_complete_and_lose_nothing(gcs_server, labelled_dir, local_run, dask_client):
    """503s and dropped connections on the way in and out: gcsfs and imgtools retry, Dask retries tasks."""
    url = gcs_server.make_bucket("faulty")
    _upload(gcs_server, labelled_dir, f"{url}/images")
    fs_local, local_root, config = local_run
    with Proxy(gcs_server.endpoint, error_rate=0.08, drop_rate=0.04, seed=1) as proxy:
        options = gcs_server.options(proxy.endpoint)
        report = presize(f"{url}/images", f"{url}/out.zarr", config=config, storage_options=options,
                         client=dask_client, progress=False)
    assert report.ok == 80 and report.failed == 0
    assert proxy.counts["503"] > 5 and proxy.counts["dropped"] > 2, proxy.counts
    _assert_same_run(fs_local, local_root, gcs_server.filesystem(), "faulty/out.zarr")


def test_listing_a_prefix_takes_a_request_per_page_not_per_object(bucket):
    url, options, server = bucket
    fs = server.filesystem()
    fs.pipe({f"{url.split('://')[1]}/many/c{i % 3}/{i:05d}.jpg": b"x" for i in range(800)})
    with Proxy(server.endpoint) as proxy:
        listing = list_source(f"{url}/many", storage_options=server.options(proxy.endpoint))
    assert len(listing) == 800 and set(listing.items["label"]) == {"c0", "c1", "c2"}
    assert sum(proxy.counts.values()) <= 12, proxy.counts


@pytest.mark.parametrize("shape", ["wide", "deep", "flat"])
def test_a_prefix_split_and_listed_side_by_side_lists_what_one_find_lists(bucket, shape):
    url, options, server = bucket
    fs = server.filesystem()
    root = f"{url.split('://')[1]}/tree"
    names = {"wide": [f"p{i:02d}/q{i % 3}/{i:04d}.jpg" for i in range(120)] + ["top.png", "p07/.hidden.jpg"],
             "deep": [f"a/b/c/d{i % 2}/{i:03d}.jpg" for i in range(30)] + ["a/x.jpg", "a/b/y.jpg"],
             "flat": [f"{i:03d}.jpg" for i in range(40)]}[shape]
    fs.pipe({f"{root}/{name}": b"x" * (len(name) + 1) for name in names})
    found = fs.find(root, withdirs=False, detail=True)
    expected = sorted((p[len(root) + 1 :], info["size"]) for p, info in found.items() if "/." not in p)
    items = list_source(f"{url}/tree", storage_options=options).items
    assert list(zip(items["relpath"], items["bytes"])) == expected


def test_archive_shards_in_a_bucket_are_read_in_place_through_a_faulty_connection(bucket, labelled_dir, tmp_path,
                                                                                  local_run):
    """Listing the shards and the ranged reads of their members meet 503s and dropped connections."""
    url, options, server = bucket
    files = list(tree_bytes(labelled_dir).items())
    for s, kind in enumerate(["tar", "tar.gz", "zip-deflate"]):
        path = make_archive(kind, files[s * 27 : (s + 1) * 27], tmp_path, name=f"train-{s}")
        server.filesystem().put(str(path), f"{url.split('://')[1]}/shards/train-{s}.{path.name.split('.', 1)[1]}")
    fs_local, local_root, config = local_run
    with Proxy(server.endpoint, error_rate=0.08, drop_rate=0.04, seed=3) as proxy:
        report = presize([f"{url}/shards/train-0.tar", f"{url}/shards/train-1.tar.gz", f"{url}/shards/train-2.zip"],
                         str(tmp_path / "from-shards.zarr"), config=config,
                         storage_options=server.options(proxy.endpoint), workers=0, progress=False)
    assert report.ok == 80
    assert proxy.counts["503"] + proxy.counts["dropped"] > 2, proxy.counts
    _assert_same_run(fs_local, local_root, fs_local, str(tmp_path / "from-shards.zarr"))


def test_an_interrupted_bucket_run_is_never_readable_as_complete_and_resumes(gcs_server, labelled_dir, local_run,
                                                                            cli_env):
    url = gcs_server.make_bucket("interrupted")
    _upload(gcs_server, labelled_dir, f"{url}/images")
    fs_local, local_root, config = local_run
    with Proxy(gcs_server.endpoint, latency=(0.02, 0.04)) as slow:  # slow enough to be caught mid-run
        args = IMGTOOLS + ["presize", f"{url}/images", f"{url}/out.zarr", "--size", "48", "--size", "64",
                           "--chunk", "16", "--workers", "0", "--quiet"]
        for key, value in {"endpoint_url": slow.endpoint, "token": "anon", "project": "test"}.items():
            args += ["--storage-option", f"{key}={value}"]
        proc = subprocess.Popen(args, env=cli_env, start_new_session=True)
        fs = gcs_server.filesystem()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(fs.ls("interrupted/out.zarr/.imgtools/chunks", refresh=True)
                                                   if fs.exists("interrupted/out.zarr/.imgtools/chunks") else []) < 2:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not gcs_server.filesystem().exists("interrupted/out.zarr/manifest.parquet")
    with pytest.raises(SourceError, match="not a complete imgtools output"):
        imgtools.open(f"{url}/out.zarr", storage_options=gcs_server.options())
    lock = "interrupted/out.zarr/.imgtools/lock.json"
    gcs_server.filesystem().rm(lock)  # the killed run's lock: same host, but its pid is gone anyway
    report = presize(f"{url}/images", f"{url}/out.zarr", config=config, storage_options=gcs_server.options(),
                     workers=0, progress=False)
    assert report.chunks_resumed >= 2 and report.ok == 80
    _assert_same_run(fs_local, local_root, gcs_server.filesystem(), "interrupted/out.zarr")


def test_sync_copies_between_any_two_places_and_skips_what_is_there(gcs_server, s3_server, labelled_dir, tmp_path,
                                                                   cli_env):
    gs = gcs_server.make_bucket("sync-src") + "/data"
    s3 = s3_server.make_bucket("sync-dst") + "/data"
    first = sync(str(labelled_dir), gs, gcs_server.options(), progress=False)
    assert (first.total, first.copied, first.skipped, first.failed) == (80, 80, 0, 0)
    to_s3 = sync(gs, s3, gcs_server.options(), dst_storage_options=s3_server.options(), progress=False)
    assert to_s3.copied == 80
    back = tmp_path / "back"
    sync(s3, str(back), s3_server.options(), dst_storage_options={}, progress=False)
    assert tree_bytes(back) == tree_bytes(labelled_dir)

    # a re-run copies nothing; a file changed in place (same size) is found by its checksum
    changed = labelled_dir / "class1" / "img004.png"
    data = bytearray(changed.read_bytes())
    data[-20] ^= 0xFF
    changed.write_bytes(bytes(data))
    args = IMGTOOLS + ["sync", str(labelled_dir), gs, "--quiet"] + [
        f"--storage-option={k}={v}"
        for k, v in {"endpoint_url": gcs_server.endpoint, "token": "anon", "project": "test"}.items()]
    run = subprocess.run(args, capture_output=True, text=True, env=cli_env)
    assert run.returncode == 0, run.stderr
    assert "1 copied, 79 already there, 0 failed" in run.stdout
    assert gcs_server.filesystem().cat_file("sync-src/data/class1/img004.png") == bytes(data)


def test_sync_of_a_missing_source_exits_2_naming_it(tmp_path, cli_env):
    run = subprocess.run(IMGTOOLS + ["sync", str(tmp_path / "nope"), str(tmp_path / "dst")], capture_output=True,
                         text=True, env=cli_env)
    assert run.returncode == 2 and "nope" in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_local_to_local_sync_resumes_after_a_partial_copy(labelled_dir, tmp_path):
    dst = tmp_path / "copy"
    first = sync(str(labelled_dir), str(dst), progress=False, batch=7)
    victims = sorted(p for p in dst.rglob("*") if p.is_file())[:5]
    victims[0].unlink()
    victims[1].write_bytes(victims[1].read_bytes()[:10])  # a copy cut short
    again = sync(str(labelled_dir), str(dst), progress=False)
    assert first.copied == 80 and (again.copied, again.skipped) == (2, 78)
    assert tree_bytes(dst) == tree_bytes(labelled_dir)


def test_sync_records_a_file_it_cannot_write_as_a_failure_and_copies_the_rest(labelled_dir, tmp_path, cli_env):
    dst = tmp_path / "dst"
    (dst / "class0" / "img000.jpg").mkdir(parents=True)  # a folder where a file must go: refused for good
    report = sync(str(labelled_dir), str(dst), progress=False, batch=16)
    assert (report.copied, report.failed) == (79, 1)
    assert report.failures["path"].tolist() == ["class0/img000.jpg"] and "write failed" in report.failures["error"][0]
    assert (dst / "class1" / "img004.png").read_bytes() == (labelled_dir / "class1" / "img004.png").read_bytes()
    run = subprocess.run(IMGTOOLS + ["sync", str(labelled_dir), str(dst)], capture_output=True, text=True, env=cli_env)
    assert run.returncode == 1 and "Traceback" not in run.stderr and "class0/img000.jpg" in run.stdout + run.stderr


class StatedMd5FileSystem(LocalFileSystem):
    """Local files under ``md5://`` whose listing states each file's MD5 as its ``ETag``, as S3's does."""

    protocol = "md5"

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        return super()._strip_protocol(path[len("md5://"):] if path.startswith("md5://") else path)

    def info(self, path, **kwargs):
        info = super().info(path, **kwargs)
        if info["type"] == "file":
            with open(info["name"], "rb") as f:
                info["ETag"] = hashlib.md5(f.read()).hexdigest()
        return info


def test_sync_compares_same_size_files_by_their_md5_computed_where_no_listing_states_one(labelled_dir, tmp_path):
    import fsspec

    fsspec.register_implementation("md5", StatedMd5FileSystem, clobber=True)
    path = labelled_dir / "class2" / "img001.png"
    dst = tmp_path / "copy"
    sync(str(labelled_dir), str(dst), progress=False)
    same_size = dst / "class2" / "img001.png"
    flip_last_byte(same_size)  # same size, other content: only the checksum tells
    # the MD5 sync computes for SRC against the real one the listing of DST states: equal but for the changed file
    stated = sync(str(labelled_dir), f"md5://{dst}", progress=False)
    assert (stated.copied, stated.skipped) == (1, 79) and same_size.read_bytes() == path.read_bytes()
    flip_last_byte(same_size)
    again = sync(str(labelled_dir), str(dst), progress=False)  # computed on both sides
    assert (again.copied, again.skipped) == (1, 79) and same_size.read_bytes() == path.read_bytes()


def test_listing_a_tar_in_a_bucket_reads_its_headers_not_its_members(bucket, tmp_path):
    url, options, server = bucket
    rng = np.random.default_rng(0)
    files = [(f"big/{i}.jpg", rng.integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()) for i in range(5)]
    path = make_archive("tar", files, tmp_path, name="big")
    server.filesystem().put(str(path), f"{url.split('://')[1]}/big.tar")
    with Proxy(server.endpoint) as proxy:
        listing = list_source(f"{url}/big.tar", storage_options=server.options(proxy.endpoint))
    assert listing.items["relpath"].tolist() == [name for name, _ in files]
    assert proxy.bytes_out < 0.5 * path.stat().st_size, (proxy.bytes_out, path.stat().st_size)


def test_sync_stops_on_a_storage_outage_instead_of_failing_every_file(labelled_dir, tmp_path, flaky_fs):
    from imgtools.errors import StorageError

    flaky_fs.faults["pipe_file"] = 10_000  # every write dropped: retried, then the run stops (exit 1)
    with pytest.raises(StorageError, match="still failing"):
        sync(str(labelled_dir), f"flaky://{tmp_path}/dst", progress=False, batch=16)
    flaky_fs.faults["pipe_file"] = 0
    report = sync(str(labelled_dir), f"flaky://{tmp_path}/dst", progress=False)  # back up: resumes
    assert (report.copied + report.skipped, report.failed) == (80, 0)


def test_sync_stops_when_the_files_it_must_hash_cannot_be_read(labelled_dir, tmp_path, flaky_fs):
    from imgtools.errors import StorageError

    sync(str(labelled_dir), f"flaky://{tmp_path}/dst", progress=False)  # there, same sizes, no MD5 listed
    flaky_fs.faults["open"] = 10_000
    with pytest.raises(StorageError, match="still failing"):
        sync(str(labelled_dir), f"flaky://{tmp_path}/dst", progress=False)
