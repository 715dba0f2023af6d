"""``imgtools sync``: a parallel, resumable copy of a file tree between any two fsspec locations (the
``gsutil -m cp -r`` step of staging a dataset into a bucket).

Files already at the destination with the same size and MD5 are skipped, so an interrupted sync is
resumed by running it again. A sync holds the run lock of DST (``DST/.imgtools/lock.json``, as presize and
derive do; see :mod:`imgtools.sinks.lock`) while it copies: a DST another run writes is refused, and the
lock of a run writing SRC is not copied. Reads are batched and concurrent (see :func:`~imgtools.sources.read_bytes`),
writes go out a batch at a time, several batches in flight; transient errors are retried with backoff.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import os
import posixpath
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import repeat
from typing import Any, TypeVar

import pandas as pd
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from . import retry
from .errors import ConfigError, DestinationError, SourceError, StorageError
from .location import Location
from .sinks.base import write_files
from .sinks.lock import LOCK_FILE, RunLock
from .sources import read_bytes

__all__ = ["sync", "SyncReport"]

#: Files bigger than this are copied as a stream of blocks instead of in one piece.
STREAM_ABOVE = 64 << 20
_BLOCK = 16 << 20

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class SyncReport:
    """What a sync did: files found, copied, skipped (already there), failed (``failures``: path, error)."""

    src: str
    dst: str
    total: int
    copied: int
    skipped: int
    failed: int
    bytes_copied: int
    seconds: float
    failures: pd.DataFrame

    def __str__(self) -> str:
        rate = self.bytes_copied / 2**20 / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.total} files: {self.copied} copied, {self.skipped} already there, {self.failed} failed; "
                f"{self.bytes_copied / 2**20:.1f} MiB in {self.seconds:.1f} s ({rate:.1f} MiB/s) -> {self.dst}")


@dataclasses.dataclass(frozen=True)
class _Side:
    """One end of a sync: its filesystem, the folder on it that relative paths start from, and the
    fsspec options it was opened with."""

    fs: Any
    root: str
    options: dict[str, Any]

    def path(self, rel: str) -> str:
        """The path of ``rel`` on this side's filesystem."""
        return posixpath.join(self.root, rel)

    def url(self, rel: str) -> str:
        """The URL of ``rel`` (with this side's protocol), as :func:`~imgtools.sources.read_bytes` takes it."""
        return self.fs.unstrip_protocol(self.path(rel))


@dataclasses.dataclass(frozen=True)
class _File:
    """A file to copy: its path under both roots and its size in the source listing."""

    rel: str
    size: int

    @property
    def streamed(self) -> bool:
        """True when the file is too big to copy in one piece (it is streamed block by block)."""
        return self.size > STREAM_ABOVE


@dataclasses.dataclass(frozen=True)
class _Failure:
    """A file that could not be copied: its path under both roots and why (a row of ``SyncReport.failures``)."""

    path: str
    error: str


def _md5_of_info(info: dict[str, Any]) -> str | None:
    """The MD5 (hex) a listing states, when it states one: GCS ``md5Hash``, a single-part S3 ``ETag``."""
    if info.get("md5Hash"):
        return base64.b64decode(info["md5Hash"]).hex()
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
    if len(etag) == 32 and all(c in "0123456789abcdef" for c in etag.lower()):
        return etag.lower()
    return None


def _tree(fs, root: str) -> dict[str, dict[str, Any]]:
    """relpath -> info of every file under ``root`` (one listing call, not one per file)."""
    if not fs.exists(root):
        return {}
    if fs.isfile(root):
        return {posixpath.basename(root): fs.info(root)}
    found = fs.find(root, withdirs=False, detail=True)
    return {posixpath.relpath(path, root): info for path, info in found.items()}


def _md5(fs, path: str) -> str:
    """The MD5 of one file, read block by block (never whole in memory), retried on transient errors."""
    def once() -> str:
        digest = hashlib.md5()
        with fs.open(path, "rb", block_size=_BLOCK, cache_type="none") as f:
            while block := f.read(_BLOCK):
                digest.update(block)
        return digest.hexdigest()

    return retry.call(once, f"reading {fs.unstrip_protocol(path)}")


def _same(src_info: dict[str, Any], dst_info: dict[str, Any] | None) -> bool | None:
    """Whether the file is already at the destination: not when the sizes differ, by the MD5s when both
    listings state one; None when a side's MD5 must be computed to tell."""
    if dst_info is None or int(src_info.get("size") or 0) != int(dst_info.get("size") or 0):
        return False
    sums = [_md5_of_info(src_info), _md5_of_info(dst_info)]
    return None if None in sums else sums[0] == sums[1]


def _same_by_reading(rel: str, src_info: dict[str, Any], dst_info: dict[str, Any], source: _Side,
                     dest: _Side) -> bool:
    """The MD5s, computed block by block where a listing states none; a file that cannot be read to
    compare is copied again."""
    sums = []
    for side, info in ((source, src_info), (dest, dst_info)):
        try:
            sums.append(_md5_of_info(info) or _md5(side.fs, side.path(rel)))
        except Exception as exc:
            if retry.is_transient(exc):  # the storage is down: stop, a re-run resumes
                raise
            return False
    return sums[0] == sums[1]


def _write_all(fs, files: dict[str, bytes], what: str) -> dict[str, str]:
    """Write ``files`` (path -> bytes) in one concurrent call, retried on transient errors; when the
    batch fails for good, each file alone, so that one refused file is that file's failure. Returns
    path -> reason of the files that could not be written."""
    try:
        retry.call(lambda: write_files(fs, files), f"writing {len(files)} files to {what}")
        return {}
    except Exception as exc:
        if retry.is_transient(exc):  # the storage is down, not a file refused: stop, a re-run resumes
            raise
    failed = {}
    for path, data in files.items():
        try:
            retry.call(lambda path=path, data=data: (fs.makedirs(posixpath.dirname(path), exist_ok=True),
                                                     fs.pipe_file(path, data)),
                       f"writing {path}")
        except StorageError:
            raise
        except Exception as exc:
            failed[path] = f"write failed: {type(exc).__name__}: {exc}"
    return failed


def _batches(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """``items`` cut in consecutive runs of ``size`` (the last one shorter)."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def _open_source(src: str, options: dict[str, Any]) -> tuple[_Side, dict[str, dict[str, Any]]]:
    """SRC as a side (its root the folder of SRC when SRC is one file) and its listing; SourceError when
    it cannot be reached or holds no files."""
    try:
        fs, root = url_to_fs(str(src), **options)
        files = _tree(fs, root.rstrip("/") or root)
    except Exception as exc:
        raise SourceError(f"SRC {src!r} cannot be reached: {exc}") from None
    if not files:
        raise SourceError(f"SRC {src!r} does not exist or holds no files")
    return _Side(fs, root.rstrip("/") if not fs.isfile(root) else posixpath.dirname(root), options), files


def _open_dest(dst: str, options: dict[str, Any]) -> _Side:
    """DST as a side; ConfigError when its URL cannot be resolved."""
    try:
        fs, root = url_to_fs(str(dst), **options)
    except Exception as exc:
        raise ConfigError(f"DST {dst!r} cannot be reached: {exc}") from None
    return _Side(fs, root.rstrip("/") or root, options)


def _list_dest(dst: str, dest: _Side) -> dict[str, dict[str, Any]]:
    """DST's listing (empty when DST does not exist yet), without its run lock; ConfigError when it
    cannot be reached."""
    try:
        return {rel: info for rel, info in _tree(dest.fs, dest.root).items() if rel != LOCK_FILE}
    except Exception as exc:
        raise ConfigError(f"DST {dst!r} cannot be reached: {exc}") from None


def _lock_dest(dst: str, dest: _Side) -> RunLock:
    """The run lock of DST, taken (DestinationError when another run holds it, StorageError when the
    storage kept failing, ConfigError when DST cannot be reached)."""
    lock = RunLock(Location(url=str(dst), fs=dest.fs, root=dest.root, storage_options=dest.options))
    try:
        lock.acquire()
    except (DestinationError, StorageError):  # another run holds DST; the storage kept failing
        raise
    except Exception as exc:
        raise ConfigError(f"DST {dst!r} cannot be reached: {exc}") from None
    return lock


def _tidy_local(dest: _Side, had_ledger: bool) -> None:
    """Remove the ``.imgtools`` folder this sync's lock left in a local DST that had none (object stores
    keep no empty folders)."""
    if not had_ledger and isinstance(dest.fs, LocalFileSystem):
        with contextlib.suppress(OSError):
            os.rmdir(dest.path(".imgtools"))


def _to_copy(src_files: dict[str, dict[str, Any]], dst_files: dict[str, dict[str, Any]], source: _Side, dest: _Side,
             batch: int, parallel: int) -> list[_File]:
    """The files of SRC not already at DST, in path order: by the listings where they tell (sizes, stated
    MD5s), else by MD5s computed ``parallel * 4`` files at a time, ``batch * parallel`` files a round."""
    same = {rel: _same(info, dst_files.get(rel)) for rel, info in src_files.items()}
    unsure = [rel for rel, known in same.items() if known is None]
    with ThreadPoolExecutor(parallel * 4) as pool:
        for part in _batches(unsure, batch * parallel):
            verdicts = pool.map(_same_by_reading, part, [src_files[rel] for rel in part],
                                [dst_files[rel] for rel in part], repeat(source), repeat(dest))
            same.update(zip(part, verdicts))
    return [_File(rel, int(src_files[rel].get("size") or 0))
            for rel in sorted(rel for rel in src_files if not same[rel])]


def _copy_small(files: Sequence[_File], source: _Side, dest: _Side, what: str) -> tuple[list[_Failure], int]:
    """Read ``files`` in one batched call and write them in another. Returns the files that could not be
    read or written, and the bytes written."""
    datas = read_bytes([source.url(f.rel) for f in files], source.options)
    failures, out, target_of = [], {}, {}
    for file, data in zip(files, datas):
        if isinstance(data, Exception):
            failures.append(_Failure(file.rel, f"read failed: {type(data).__name__}: {data}"))
        else:
            out[dest.path(file.rel)], target_of[dest.path(file.rel)] = data, file
    refused = _write_all(dest.fs, out, what) if out else {}
    failures += [_Failure(target_of[path].rel, reason) for path, reason in refused.items()]
    return failures, sum(len(data) for path, data in out.items() if path not in refused)


def _copy_big(file: _File, source: _Side, dest: _Side) -> _Failure | None:
    """Stream one big file across (see :func:`_copy_stream`); returns its failure, if it failed for good."""
    try:
        _copy_stream(source.fs, source.path(file.rel), dest.fs, dest.path(file.rel))
    except Exception as exc:
        if retry.is_transient(exc):  # the storage is down, not a file refused: stop, a re-run resumes
            raise
        return _Failure(file.rel, f"copy failed: {type(exc).__name__}: {exc}")
    return None


def _copy_batch(files: Sequence[_File], source: _Side, dest: _Side, what: str,
                advance: Callable[[int], None]) -> list[_Failure]:
    """Copy one batch: the small files read and written a batch at a time, the big ones streamed one by
    one. Reports the bytes done to ``advance`` as it goes; returns the files that failed."""
    small = [f for f in files if not f.streamed]
    failures, written = _copy_small(small, source, dest, what)
    advance(written)
    for file in (f for f in files if f.streamed):
        failure = _copy_big(file, source, dest)
        failures += [failure] if failure else []
        advance(file.size)
    return failures


class _Progress:
    """A progress bar that copy threads may advance at once (its count behind a lock)."""

    def __init__(self, bar: Any):
        self._bar, self._lock = bar, threading.Lock()

    def __call__(self, nbytes: int) -> None:
        with self._lock:
            self._bar.update(nbytes)


def sync(src: str, dst: str, storage_options: dict[str, Any] | None = None, *,
         dst_storage_options: dict[str, Any] | None = None, batch: int = 64, parallel: int = 4,
         progress: bool = True) -> SyncReport:
    """Copy every file under ``src`` to the same relative path under ``dst``, skipping files already
    there with the same size and checksum.

    Parameters
    ----------
    src, dst : str
        Folders or URLs (``gs://``, ``s3://``, ``memory://``, local paths); ``src`` may be one file.
    storage_options : dict, optional
        fsspec options for ``src`` (and for ``dst`` unless ``dst_storage_options`` is given).
    batch : int
        Files read in one concurrent request batch.
    parallel : int
        Batches in flight at once.

    Returns
    -------
    SyncReport
        Files that could not be read or written are listed in ``failures``, batch by batch in path
        order; the rest are copied.

    Raises
    ------
    SourceError
        ``src`` cannot be reached or holds no files.
    ConfigError
        ``dst`` cannot be reached, or ``batch`` or ``parallel`` is below 1.
    DestinationError
        Another run (a presize, derive or sync) is writing ``dst`` now.
    StorageError
        The storage kept failing after retries; what was copied stays, and a re-run resumes.

    Examples
    --------
    >>> report = sync("data/sample", "gs://my-bucket/sample")        # doctest: +SKIP
    >>> print(report)                                                 # doctest: +SKIP
    3001 files: 3001 copied, 0 already there, 0 failed; 23.1 MiB in 4.2 s (5.5 MiB/s) -> gs://my-bucket/sample
    """
    from tqdm.auto import tqdm

    if batch < 1 or parallel < 1:
        raise ConfigError(f"batch {batch!r} and parallel {parallel!r} must be at least 1")
    started = time.perf_counter()
    src_opts = dict(storage_options or {})
    source, src_files = _open_source(src, src_opts)
    src_files.pop(LOCK_FILE, None)  # a run writing SRC: its lock is not data
    dest = _open_dest(dst, dict(src_opts if dst_storage_options is None else dst_storage_options))
    had_ledger = isinstance(dest.fs, LocalFileSystem) and os.path.isdir(dest.path(".imgtools"))
    lock = _lock_dest(dst, dest)
    try:
        with lock.hold():  # taken just above; kept fresh while the copy goes on
            todo = _to_copy(src_files, _list_dest(dst, dest), source, dest, batch, parallel)
            bar = tqdm(total=sum(f.size for f in todo), unit="B", unit_scale=True, desc="sync",
                       disable=not progress, file=sys.stderr)
            with ThreadPoolExecutor(parallel) as pool:
                done = pool.map(_copy_batch, _batches(todo, batch), repeat(source), repeat(dest), repeat(str(dst)),
                                repeat(_Progress(bar)))
                failures = [failure for batch_failures in done for failure in batch_failures]
            bar.close()
    finally:
        lock.release()
        _tidy_local(dest, had_ledger)
    failed = {f.path for f in failures}
    copied = [f for f in todo if f.rel not in failed]
    return SyncReport(src=str(src), dst=str(dst), total=len(src_files), copied=len(copied),
                      skipped=len(src_files) - len(todo), failed=len(failed),
                      bytes_copied=sum(f.size for f in copied), seconds=time.perf_counter() - started,
                      failures=pd.DataFrame([(f.path, f.error) for f in failures], columns=["path", "error"]))


def _copy_stream(src_fs, src_path: str, dst_fs, dst_path: str) -> None:
    """A big file, block by block, never whole in memory; retried whole on transient errors."""
    def once() -> None:
        dst_fs.makedirs(posixpath.dirname(dst_path), exist_ok=True)
        with (src_fs.open(src_path, "rb", block_size=_BLOCK, cache_type="none") as fin,
              dst_fs.open(dst_path, "wb") as fout):
            while block := fin.read(_BLOCK):
                fout.write(block)

    retry.call(once, f"copying {src_path}")
