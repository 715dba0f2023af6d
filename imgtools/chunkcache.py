"""Caches for reading outputs back: whole files of a remote output kept on local disk (:class:`DiskCache`),
and decoded chunks kept in memory by each process (:class:`MemoryCache`).

Contract of the disk cache:

- Files are keyed by the output's URL *and* a token that changes whenever the output is written again
  (its run id, or the manifest's fingerprint), so a store rewritten with ``--overwrite`` never serves stale
  chunks: the folders of other tokens of the same URL are removed when an output is opened.
- The total size under the cache folder stays near ``max_bytes``: the least recently written files are
  removed first.
- A cache that cannot be written (unwritable folder, a full disk) turns itself off with one
  :class:`CacheWarning`; reads then go to the store. It never fails a read.
- Files appear atomically (written beside, then renamed), so concurrent readers (DataLoader workers, ranks on
  one machine) see a whole file or none.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import pathlib
import shutil
import threading
import uuid
import warnings
from typing import Any

__all__ = ["DiskCache", "BoundCache", "MemoryCache", "CacheWarning", "default_cache_dir", "DEFAULT_CACHE_BYTES"]

#: Default bound of the disk cache, all outputs together.
DEFAULT_CACHE_BYTES = 20 << 30


class CacheWarning(UserWarning):
    """The disk cache could not be used; reads go to the store."""


def default_cache_dir() -> pathlib.Path:
    """``$IMGTOOLS_CACHE``, else ``$XDG_CACHE_HOME/imgtools``, else ``~/.cache/imgtools``.

    Examples
    --------
    >>> default_cache_dir().name in ("imgtools",) or "IMGTOOLS_CACHE" in os.environ
    True
    """
    if os.environ.get("IMGTOOLS_CACHE"):
        return pathlib.Path(os.environ["IMGTOOLS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "imgtools"


class DiskCache:
    """Where and how much: a folder (default :func:`default_cache_dir`) and a bound in bytes.

    Examples
    --------
    >>> cache = DiskCache("/tmp/imgtools-cache", max_bytes=1 << 30)   # doctest: +SKIP
    >>> ds = imgtools.open("gs://bucket/out.zarr", cache=cache)       # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike | None = None, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.path = pathlib.Path(path) if path is not None else default_cache_dir()
        self.max_bytes = int(max_bytes)

    def __repr__(self) -> str:
        return f"DiskCache({str(self.path)!r}, max_bytes={self.max_bytes})"

    def bind(self, url: str, token: str) -> BoundCache:
        """The cache of one output (``url``) as written by one run (``token``); other tokens' files of the
        same URL are removed."""
        return BoundCache(self, url, token)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class BoundCache:
    """The files of one output in a :class:`DiskCache`. Picklable; each process keeps its own counters."""

    def __init__(self, cache: DiskCache, url: str, token: str):
        self.cache = cache
        self.url = url
        self.folder = cache.path / _digest(url) / _digest(token)
        self.disabled = False
        self._used: int | None = None
        self._lock = threading.Lock()
        try:
            for other in (cache.path / _digest(url)).iterdir():
                if other != self.folder:
                    shutil.rmtree(other, ignore_errors=True)
        except OSError:
            pass

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_lock"] = None
        state["_used"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def local(self, relpath: str) -> str | None:
        """The local copy of ``relpath`` (a path inside the output), or None when it is not cached."""
        if self.disabled:
            return None
        path = self.folder / relpath
        return str(path) if path.is_file() else None

    def put(self, relpath: str, data: bytes) -> str | None:
        """Keep ``data`` as the copy of ``relpath``; its local path, or None when the cache is off."""
        if self.disabled or len(data) > self.cache.max_bytes:
            return None
        path = self.folder / relpath
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            self._make_room(len(data))
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            with self._lock:  # prefetch threads fail together: one warning
                if self.disabled:
                    return None
                self.disabled = True
            warnings.warn(f"the chunk cache in {str(self.cache.path)!r} cannot be written ({exc.strerror or exc}); "
                          f"reading {self.url!r} without it", CacheWarning, stacklevel=3)
            return None
        return str(path)

    def _make_room(self, nbytes: int) -> None:
        with self._lock:
            if self._used is None:
                self._used = sum(size for _, size, _ in _files(self.cache.path))
            self._used += nbytes
            if self._used <= self.cache.max_bytes:
                return
            files = sorted(_files(self.cache.path), key=lambda f: f[2])  # oldest first
            self._used = sum(size for _, size, _ in files) + nbytes
            for path, size, _ in files:
                if self._used <= self.cache.max_bytes * 0.9:
                    break
                try:
                    os.unlink(path)
                    self._used -= size
                except OSError:
                    pass


def _files(root: pathlib.Path) -> list[tuple[str, int, float]]:
    """(path, size, mtime) of every file under ``root``."""
    out = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            out.append((path, st.st_size, st.st_mtime))
    return out


class MemoryCache:
    """Decoded chunks by key, least recently used first out, bounded by ``max_bytes`` (thread-safe).

    Examples
    --------
    >>> import numpy as np
    >>> cache = MemoryCache(max_bytes=100)
    >>> cache.put("a", np.zeros(80, np.uint8)); cache.put("b", np.zeros(80, np.uint8))
    >>> cache.get("a") is None, cache.get("b").nbytes
    (True, 80)
    """

    def __init__(self, max_bytes: int = 256 << 20):
        self.max_bytes = int(max_bytes)
        self._items: collections.OrderedDict[Any, Any] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Any, value: Any) -> None:
        size = getattr(value, "nbytes", 0)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            self._bytes -= getattr(old, "nbytes", 0) if old is not None else 0
            self._items[key] = value
            self._bytes += size
            while self._bytes > self.max_bytes and self._items:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= getattr(dropped, "nbytes", 0)
