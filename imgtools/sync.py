"""``imgtools sync``: a parallel, resumable copy of a file tree between any two fsspec locations (the
``gsutil -m cp -r`` step of staging a dataset into a bucket).

Files already at the destination with the same size and MD5 are skipped, so an interrupted sync is
resumed by running it again. Reads are batched and concurrent (see :func:`~imgtools.sources.read_bytes`),
writes go out a batch at a time, several batches in flight; transient errors are retried with backoff.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import posixpath
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pandas as pd
from fsspec.core import url_to_fs

from . import retry
from .errors import ConfigError, SourceError, StorageError
from .sinks.base import write_files
from .sources import read_bytes

__all__ = ["sync", "SyncReport"]

#: Files bigger than this are copied as a stream of blocks instead of in one piece.
STREAM_ABOVE = 64 << 20
_BLOCK = 16 << 20


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


def _same_by_reading(rel: str, src_info, dst_info, src, dst) -> bool:
    """The MD5s, computed block by block where a listing states none (``src`` and ``dst`` are
    ``(filesystem, root)``); a file that cannot be read to compare is copied again."""
    sums = []
    for (fs, root), info in ((src, src_info), (dst, dst_info)):
        try:
            sums.append(_md5_of_info(info) or _md5(fs, posixpath.join(root, rel)))
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
            retry.call(lambda: (fs.makedirs(posixpath.dirname(path), exist_ok=True), fs.pipe_file(path, data)),
                       f"writing {path}")
        except StorageError:
            raise
        except Exception as exc:
            failed[path] = f"write failed: {type(exc).__name__}: {exc}"
    return failed


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
        Files that could not be read or written are listed in ``failures``; the rest are copied.

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
    dst_opts = dict(src_opts if dst_storage_options is None else dst_storage_options)
    try:
        src_fs, src_root = url_to_fs(str(src), **src_opts)
        src_files = _tree(src_fs, src_root.rstrip("/") or src_root)
    except Exception as exc:
        raise SourceError(f"SRC {src!r} cannot be reached: {exc}") from None
    if not src_files:
        raise SourceError(f"SRC {src!r} does not exist or holds no files")
    try:
        dst_fs, dst_root = url_to_fs(str(dst), **dst_opts)
        dst_root = dst_root.rstrip("/") or dst_root
        dst_files = _tree(dst_fs, dst_root)
    except Exception as exc:
        raise ConfigError(f"DST {dst!r} cannot be reached: {exc}") from None
    src_root = src_root.rstrip("/") if not src_fs.isfile(src_root) else posixpath.dirname(src_root)
    sides = ((src_fs, src_root), (dst_fs, dst_root))
    same = {rel: _same(info, dst_files.get(rel)) for rel, info in src_files.items()}
    unsure = [rel for rel, known in same.items() if known is None]
    with ThreadPoolExecutor(parallel * 4) as pool:  # the files to hash, side by side, a batch at a time
        for start in range(0, len(unsure), batch * parallel):
            part = unsure[start : start + batch * parallel]
            same.update(zip(part, pool.map(lambda rel: _same_by_reading(rel, src_files[rel], dst_files[rel], *sides), part)))
    todo = sorted(rel for rel in src_files if not same[rel])
    failures: list[tuple[str, str]] = []
    bar = tqdm(total=sum(int(src_files[r].get("size") or 0) for r in todo), unit="B", unit_scale=True,
               desc="sync", disable=not progress, file=sys.stderr)

    def copy(rels: list[str]) -> None:
        small = [r for r in rels if int(src_files[r].get("size") or 0) <= STREAM_ABOVE]
        datas = read_bytes([src_fs.unstrip_protocol(posixpath.join(src_root, r)) for r in small], src_opts)
        out = {}
        for rel, data in zip(small, datas):
            if isinstance(data, Exception):
                failures.append((rel, f"read failed: {type(data).__name__}: {data}"))
            else:
                out[posixpath.join(dst_root, rel)] = data
        refused = _write_all(dst_fs, out, dst) if out else {}
        failures.extend((posixpath.relpath(path, dst_root), reason) for path, reason in refused.items())
        bar.update(sum(len(d) for p, d in out.items() if p not in refused))
        for rel in sorted(set(rels) - set(small)):
            try:
                _copy_stream(src_fs, posixpath.join(src_root, rel), dst_fs, posixpath.join(dst_root, rel))
            except Exception as exc:
                if retry.is_transient(exc):
                    raise
                failures.append((rel, f"copy failed: {type(exc).__name__}: {exc}"))
            bar.update(int(src_files[rel].get("size") or 0))

    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(copy, [todo[i : i + batch] for i in range(0, len(todo), batch)]))
    bar.close()
    failed = {rel for rel, _ in failures}
    copied = [r for r in todo if r not in failed]
    return SyncReport(src=str(src), dst=str(dst), total=len(src_files), copied=len(copied),
                      skipped=len(src_files) - len(todo), failed=len(failed),
                      bytes_copied=sum(int(src_files[r].get("size") or 0) for r in copied),
                      seconds=time.perf_counter() - started,
                      failures=pd.DataFrame(failures, columns=["path", "error"]))


def _copy_stream(src_fs, src_path: str, dst_fs, dst_path: str) -> None:
    """A big file, block by block, never whole in memory; retried whole on transient errors."""
    def once() -> None:
        dst_fs.makedirs(posixpath.dirname(dst_path), exist_ok=True)
        with src_fs.open(src_path, "rb", block_size=_BLOCK, cache_type="none") as fin, dst_fs.open(dst_path, "wb") as fout:
            while block := fin.read(_BLOCK):
                fout.write(block)

    retry.call(once, f"copying {src_path}")
