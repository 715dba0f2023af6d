"""The run lock of a DEST (imgtools.sinks.lock): exclusive on local disks, GCS and S3, taken over only when
stale, refreshed and released only while still held; presize, derive and sync all take it.

Stores: a local folder; moto's S3 server (which honours If-None-Match / If-Match on PutObject and If-Match on
DeleteObject); gcp-storage-emulator as imgtools.testing runs it ("gs"), whose insert and delete handlers are
made to check ``ifGenerationMatch`` as GCS does (the plain emulator ignores it; see
imgtools/testing/_gcs_emulator.py).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

import imgtools
from conftest import make_labelled
from imgtools.config import PresizeConfig
from imgtools.derive import derive
from imgtools.errors import DestinationError
from imgtools.location import Location
from imgtools.sinks.lock import (
    LOCK_FILE,
    GCSLockFile,
    Holder,
    LocalLockFile,
    LockFile,
    Lost,
    RunLock,
    S3LockFile,
    lock_file,
)
from imgtools.sync import sync

ROUNDS = 20
#: Stores with conditional writes (the memory store's check-then-write fallback is tested on its own).
STORES = ["local", "gs", "s3"]

# One racer process: resolves every round's DEST first, then at t0 + i * gap takes round i's lock.
_RACER = r"""
import json, sys, time
from imgtools.errors import DestinationError
from imgtools.location import Location
from imgtools.sinks.lock import RunLock

base, options, rounds, gap = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
locks = [RunLock(Location.resolve(f"{base}/round-{i:03d}", options)) for i in range(rounds)]
locks[0].check()  # the filesystem is made and connected before the race
print("ready", flush=True)
t0 = float(sys.stdin.readline())
results = []
for i, lock in enumerate(locks):
    time.sleep(max(0.0, t0 + i * gap - time.time()))
    started = time.time()
    try:
        lock.acquire()
        results.append({"run": lock.run_id, "started": started})
    except DestinationError:
        results.append({"run": None, "started": started})
print(json.dumps(results), flush=True)
"""


@dataclasses.dataclass(frozen=True)
class Store:
    """Where a test's DESTs go: a base URL, the fsspec options, and the store's name in the parameters."""

    name: str
    url: str
    options: dict[str, Any]

    def location(self, name: str) -> Location:
        return Location.resolve(f"{self.url}/{name}", self.options)


_buckets = itertools.count()


def _store(request, tmp_path, name: str) -> Store:
    if name == "local":
        return Store(name, str(tmp_path), {})
    server = request.getfixturevalue({"gs": "gcs_server", "s3": "s3_server"}[name])
    url = server.make_bucket(f"lock-{next(_buckets):04d}-{os.getpid()}")
    return Store(name, url, server.options())


@pytest.fixture(params=STORES)
def store(request, tmp_path) -> Store:
    """A fresh place for DESTs on each store."""
    return _store(request, tmp_path, request.param)


def _holder_of(loc: Location) -> Holder | None:
    """Who the lock file at ``loc`` names, read straight from the store."""
    loc.fs.invalidate_cache(loc.path(LOCK_FILE))
    try:
        return Holder.parse(loc.fs.cat_file(loc.path(LOCK_FILE)))
    except FileNotFoundError:
        return None


def _plant(loc: Location, holder: Holder) -> None:
    """Write a lock naming ``holder`` as another run would have left it (plain write, no condition)."""
    loc.fs.makedirs(loc.path(".imgtools"), exist_ok=True)
    loc.fs.pipe_file(loc.path(LOCK_FILE), holder.encode())
    loc.fs.invalidate_cache(loc.path(LOCK_FILE))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


STALE = {
    "old heartbeat": lambda: Holder(run="gone", host="elsewhere", pid=1, heartbeat=time.time() - 3600),
    "dead pid on this host": lambda: Holder(run="gone", host=socket.gethostname(), pid=_dead_pid(),
                                            heartbeat=time.time()),
}


# ---- which conditional write each store gets ------------------------------------------------------
@pytest.mark.parametrize("url,cls", [("/tmp/x", LocalLockFile), ("gs://b/x", GCSLockFile), ("s3://b/x", S3LockFile),
                                     ("memory://x", LockFile)])
def test_each_store_gets_its_conditional_writes_and_others_the_documented_fallback(url, cls, request, tmp_path):
    options = {}
    if url.startswith(("gs", "s3")):
        options = request.getfixturevalue({"gs": "gcs_server", "s3": "s3_server"}[url[:2]]).options()
    loc = Location.resolve(url, options)
    found = lock_file(loc.fs, loc.path(LOCK_FILE))
    assert type(found) is cls and found.exclusive == (cls is not LockFile)


def test_the_emulator_answers_412_as_gcs_does(gcs_server):
    url = gcs_server.make_bucket(f"lock-probe-{os.getpid()}")
    loc = Store("gs", url, gcs_server.options()).location("probe")
    file = lock_file(loc.fs, loc.path(LOCK_FILE))
    first = file.create(b"first")
    with pytest.raises(Lost):
        file.create(b"second")
    second = file.replace(b"second", first)
    with pytest.raises(Lost):
        file.replace(b"third", first)
    with pytest.raises(Lost):
        file.delete(first)
    file.delete(second)
    assert file.read() is None


# ---- never two holders ------------------------------------------------------------------------------
@pytest.mark.parametrize("start", ["no lock", "stale lock"])
def test_threads_started_together_never_both_hold_the_lock(store, start):
    for i in range(ROUNDS):
        loc = store.location(f"round-{i:03d}")
        if start == "stale lock":
            _plant(loc, STALE["old heartbeat"]())
        locks = [RunLock(Location.resolve(loc.url, store.options)) for _ in range(3)]
        barrier = threading.Barrier(len(locks))
        won: list[str] = []

        def race(lock: RunLock, barrier: threading.Barrier = barrier, won: list[str] = won) -> None:
            barrier.wait()
            try:
                lock.acquire()
                won.append(lock.run_id)
            except DestinationError:
                pass

        threads = [threading.Thread(target=race, args=(lock,)) for lock in locks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1, f"round {i}: {len(won)} runs hold {loc.url}"
        assert _holder_of(loc).run == won[0]
        assert [lock.held for lock in locks].count(True) == 1


def test_processes_started_together_never_both_hold_the_lock(store):
    gap = 0.4
    argv = [sys.executable, "-c", _RACER, f"{store.url}/procs", json.dumps(store.options),
            str(ROUNDS), str(gap)]
    racers = [subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for racer in racers:
            assert racer.stdout.readline().strip() == "ready"
        t0 = time.time() + 0.5
        for racer in racers:
            racer.stdin.write(f"{t0}\n")
            racer.stdin.flush()
        results = [json.loads(racer.stdout.readline()) for racer in racers]
    finally:
        for racer in racers:
            racer.stdin.close()
            racer.stdout.close()
            racer.wait(60)
    for i, rows in enumerate(zip(*results)):
        winners = [row["run"] for row in rows if row["run"] is not None]
        assert len(winners) == 1, f"round {i}: {len(winners)} processes hold the lock"
        assert _holder_of(store.location(f"procs/round-{i:03d}")).run == winners[0]
    spreads = sorted(abs(a["started"] - b["started"]) for a, b in zip(*results))
    assert spreads[len(spreads) // 2] < gap / 4, f"the racers did not start together: {spreads}"


# ---- refused, taken over, lost -------------------------------------------------------------------
def test_a_live_lock_is_refused_naming_dest_holder_and_age(store):
    loc = store.location("live")
    holder = RunLock(loc)
    holder.acquire()
    with pytest.raises(DestinationError) as refused:
        RunLock(Location.resolve(loc.url, store.options)).acquire()
    message = str(refused.value)
    assert "\n" not in message and repr(loc.url) in message
    seen = re.search(rf"pid {os.getpid()} on {re.escape(socket.gethostname())}, last seen (\d+) s ago", message)
    assert seen and int(seen.group(1)) <= 5, message  # the holder was just written; a loaded CI machine takes a second
    assert _holder_of(loc).run == holder.run_id
    holder.release()
    assert _holder_of(loc) is None


@pytest.mark.parametrize("why", list(STALE))
def test_a_stale_lock_is_taken_over(store, why):
    loc = store.location("stale")
    _plant(loc, STALE[why]())
    lock = RunLock(loc)
    lock.acquire()
    assert lock.held and _holder_of(loc).run == lock.run_id
    lock.refresh()
    lock.verify()
    lock.release()
    assert _holder_of(loc) is None


def test_a_heartbeat_after_being_taken_over_raises_and_leaves_the_new_holder_alone(store):
    loc = store.location("taken")
    first = RunLock(loc, ttl=0.5)
    first.acquire()
    time.sleep(0.6)  # no heartbeat for ttl: stale
    second = RunLock(Location.resolve(loc.url, store.options), ttl=0.5)
    second.acquire()
    with pytest.raises(DestinationError, match="was taken over by another run") as lost:
        first.refresh()
    assert "\n" not in str(lost.value) and f"pid {os.getpid()}" in str(lost.value)
    with pytest.raises(DestinationError, match="taken over"):
        first.verify()
    with pytest.raises(DestinationError, match="taken over"):
        first.acquire()  # a run that lost DEST does not take it back
    first.release()
    assert first.lost and not first.held and _holder_of(loc).run == second.run_id
    second.refresh()
    second.verify()
    second.release()
    assert _holder_of(loc) is None


def test_the_heartbeat_thread_keeps_a_lock_alive_past_its_ttl(store):
    loc = store.location("beating")
    with RunLock(loc, ttl=1.0).hold(every=0.1) as lock:
        time.sleep(1.5)
        with pytest.raises(DestinationError, match="being written by another run"):
            RunLock(Location.resolve(loc.url, store.options), ttl=1.0).acquire()
        lock.verify()
    assert _holder_of(loc) is None


def test_the_memory_store_falls_back_to_check_then_write_and_still_refuses_a_live_holder():
    loc = Location.resolve(f"memory://imgtools-test-lock/{os.getpid()}")
    holder = RunLock(loc)
    assert not holder.file.exclusive
    holder.acquire()
    with pytest.raises(DestinationError, match="being written by another run"):
        RunLock(loc).acquire()
    holder.release()


# ---- presize, derive and sync take it -------------------------------------------------------------
@pytest.fixture
def small_dir(tmp_path):
    root = tmp_path / "src"
    make_labelled(root, per_class=3, classes=2)
    return root


@pytest.mark.parametrize("name", STORES)
def test_derive_refuses_a_dest_locked_by_another_run(small_dir, tmp_path, request, name):
    store = _store(request, tmp_path, name)
    dest = f"{store.url}/out.zarr"
    imgtools.presize(str(small_dir), dest, config=PresizeConfig.build(sizes=[32], chunk=4), workers=0,
                     progress=False, storage_options=store.options)
    other = RunLock(Location.resolve(dest, store.options))
    other.acquire()
    with pytest.raises(DestinationError, match=f"DEST {dest!r} is being written by another run .pid {os.getpid()}"):
        derive(dest, "32x32", [16], workers=0, storage_options=store.options)
    other.release()
    report = derive(dest, "32x32", [16], workers=0, storage_options=store.options)
    assert report.sizes == ("16x16",) and _holder_of(Location.resolve(dest, store.options)) is None
    assert imgtools.open(dest, storage_options=store.options).images("16x16").shape[0] == 6


def test_presize_refuses_a_dest_locked_by_another_run_and_overwrite_keeps_its_own_lock(small_dir, tmp_path):
    dest = tmp_path / "out.zarr"
    cfg = PresizeConfig.build(sizes=[32], chunk=4)
    imgtools.presize(str(small_dir), str(dest), config=cfg, workers=0, progress=False)
    other = RunLock(Location.resolve(str(dest)))
    other.acquire()
    with pytest.raises(DestinationError, match="being written by another run"):
        imgtools.presize(str(small_dir), str(dest), config=cfg, workers=0, progress=False, overwrite=True)
    assert (dest / "manifest.parquet").exists()  # the refused overwrite deleted nothing
    other.release()
    report = imgtools.presize(str(small_dir), str(dest), config=cfg, workers=0, progress=False, overwrite=True)
    assert report.ok == 6 and not (dest / ".imgtools" / "lock.json").exists()


@pytest.mark.parametrize("name", STORES)
def test_sync_refuses_a_dst_locked_by_another_run(small_dir, tmp_path, request, name):
    store = _store(request, tmp_path, name)
    dst = f"{store.url}/copy"
    other = RunLock(Location.resolve(dst, store.options))
    other.acquire()
    with pytest.raises(DestinationError, match=f"DEST {dst!r} is being written by another run .pid {os.getpid()}"):
        sync(str(small_dir), dst, dst_storage_options=store.options, progress=False)
    fs = Location.resolve(dst, store.options).fs
    fs.invalidate_cache()
    assert fs.find(Location.resolve(dst, store.options).root) == [other.file.path]  # nothing copied
    other.release()
    report = sync(str(small_dir), dst, dst_storage_options=store.options, progress=False)
    assert report.copied == report.total == 6
    fs.invalidate_cache()
    assert not any(".imgtools" in path for path in fs.find(Location.resolve(dst, store.options).root))


def test_sync_leaves_out_the_lock_of_a_run_writing_src(small_dir, tmp_path):
    writing = RunLock(Location.resolve(str(small_dir)))
    writing.acquire()
    report = sync(str(small_dir), str(tmp_path / "copy"), progress=False)
    assert report.total == 6 and not (tmp_path / "copy" / ".imgtools").exists()
    writing.release()
