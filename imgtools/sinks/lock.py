"""The run lock of a DEST, made exclusive with the store's own conditional writes.

Contract
--------
One small file, ``DEST/.imgtools/lock.json``, names the run writing DEST: its run id, host, pid and the
time of its last heartbeat (a :class:`Holder`). A :class:`RunLock`

- **takes** the lock with a create-if-absent write: of runs that start together, exactly one succeeds;
- **takes it over** only when it is stale (no heartbeat for ``ttl`` seconds, or its holder is a dead
  process of this host), with a write conditional on the version of the lock it read: of runs taking
  over the same stale lock, exactly one succeeds, and a lock refreshed meanwhile is not taken;
- **refreshes** it (the heartbeat) with a write conditional on the version of its own last write, so a run
  whose lock was taken over learns it at its next heartbeat (:class:`~imgtools.errors.DestinationError`)
  instead of writing over the new holder's lock;
- **releases** it with a delete conditional on that version: it never removes a lock it no longer holds.

Two runs therefore never both believe they hold DEST, on every store with conditional writes. Each store
is one :class:`LockFile` class in :data:`LOCK_FILES`, chosen by the filesystem's protocol:

==========  ==========================================  ============================================
store       create if absent                            replace / delete if unchanged
==========  ==========================================  ============================================
local       ``open(path, "xb")`` (``O_EXCL``)            bytes compared, then ``os.replace`` / unlink
gs          ``ifGenerationMatch=0``                     ``ifGenerationMatch=<generation read>``
s3          ``If-None-Match: *``                        ``If-Match: <ETag read>``
==========  ==========================================  ============================================

On local disks every write of the lock is made under ``flock`` of the ``.imgtools`` folder, so a
compare-then-replace is atomic and a lock being created is never seen half-written by a replacement.
(``flock`` is per machine on most network filesystems: a DEST on NFS shared by hosts is not covered.)

Any other store (``memory://``, a filesystem of its own protocol) has no conditional write that fsspec
exposes: :class:`LockFile` itself checks, then writes. It refuses a live holder as before, but two runs
starting within the same few milliseconds can both proceed there; :attr:`LockFile.exclusive` is False.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import posixpath
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TypeVar

from .. import retry
from ..errors import DestinationError
from ..location import Location

__all__ = ["RunLock", "Holder", "Seen", "LockFile", "LocalLockFile", "GCSLockFile", "S3LockFile", "LOCK_FILES",
           "Lost", "lock_file", "LOCK_FILE", "LOCK_TTL"]

T = TypeVar("T")

#: Where the lock lives, relative to DEST.
LOCK_FILE = ".imgtools/lock.json"
#: Seconds after its last heartbeat that a lock counts as abandoned (heartbeats come every quarter of it).
LOCK_TTL = 120.0
#: Times a run looks again after losing a race for the lock before it gives up.
_ATTEMPTS = 5


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    return True


@dataclasses.dataclass(frozen=True)
class Holder:
    """What a lock file says: the run holding DEST, where it runs, and its last heartbeat (epoch seconds).

    Examples
    --------
    >>> h = Holder(run="abc", host="elsewhere", pid=1, heartbeat=time.time() - 600)
    >>> Holder.parse(h.encode()) == h, h.stale(ttl=120)
    (True, True)
    """

    run: str
    host: str
    pid: int
    heartbeat: float

    @classmethod
    def now(cls, run: str) -> Holder:
        """This process as the holder of run ``run``, heartbeat now."""
        return cls(run=run, host=socket.gethostname(), pid=os.getpid(), heartbeat=time.time())

    @classmethod
    def parse(cls, data: bytes) -> Holder | None:
        """The holder a lock file's bytes name; None when they cannot be read as one (damaged, or empty
        while its creator writes it)."""
        try:
            lock = json.loads(data)
            return cls(run=str(lock["run"]), host=str(lock.get("host")), pid=int(lock.get("pid", -1)),
                       heartbeat=float(lock.get("heartbeat", 0)))
        except (ValueError, TypeError, KeyError, AttributeError):
            return None

    def encode(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode()

    @property
    def age(self) -> float:
        """Seconds since the last heartbeat."""
        return time.time() - self.heartbeat

    def stale(self, ttl: float) -> bool:
        """True when no heartbeat came for ``ttl`` seconds, or the holder is a process of this host that
        is gone."""
        if self.age >= ttl:
            return True
        return self.host == socket.gethostname() and not _pid_alive(self.pid)

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, last seen {max(self.age, 0.0):.0f} s ago"


@dataclasses.dataclass(frozen=True)
class Seen:
    """The lock file as read: its ``holder`` (None when unreadable) and ``token``, the version a
    conditional write names (a GCS generation, an S3 ETag, a digest of the bytes elsewhere)."""

    holder: Holder | None
    token: str


class Lost(Exception):
    """A conditional write of the lock failed: another run wrote (or removed) it first."""


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LockFile:
    """One lock file on a store, read and written with its conditional writes (see the module's table).

    This base class is the fallback for stores without them: it checks, then writes (not atomic:
    :attr:`exclusive` is False). Subclasses register themselves in :data:`LOCK_FILES`.
    """

    #: True when create / replace / delete are atomic conditional writes on this store.
    exclusive: ClassVar[bool] = False
    #: fsspec protocols this class serves.
    protocols: ClassVar[tuple[str, ...]] = ()

    def __init__(self, fs: Any, path: str):
        self.fs = fs
        self.path = path

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        LOCK_FILES.update(dict.fromkeys(cls.protocols, cls))

    @contextlib.contextmanager
    def _conditional(self) -> Iterator[None]:
        """Around one conditional request: a failed precondition raises :class:`Lost`; the filesystem's
        listing cache of the lock is dropped whatever happens."""
        try:
            yield
        except Exception as exc:
            if _precondition_failed(exc):
                raise Lost(self.path) from None
            raise
        finally:
            self.fs.invalidate_cache(self.path)

    def read(self) -> Seen | None:
        """The lock as it is now; None when there is none."""
        try:
            data = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        return Seen(Holder.parse(data), _digest(data))

    def create(self, data: bytes) -> str:
        """Write the lock where there is none; returns its token. Raises :class:`Lost` when one exists."""
        if self.fs.exists(self.path):
            raise Lost(self.path)
        self.fs.makedirs(posixpath.dirname(self.path), exist_ok=True)
        self.fs.pipe_file(self.path, data)
        return _digest(data)

    def replace(self, data: bytes, token: str) -> str:
        """Write the lock over the version ``token``; returns the new token. Raises :class:`Lost` when
        the lock is another version now, or gone."""
        self._expect(token)
        self.fs.pipe_file(self.path, data)
        return _digest(data)

    def delete(self, token: str) -> None:
        """Remove the lock if it is still the version ``token``. Raises :class:`Lost` otherwise."""
        self._expect(token)
        self.fs.rm_file(self.path)

    def _expect(self, token: str) -> None:
        seen = self.read()
        if seen is None or seen.token != token:
            raise Lost(self.path)


#: fsspec protocol -> the :class:`LockFile` class for its stores (any other: :class:`LockFile` itself).
LOCK_FILES: dict[str, type[LockFile]] = {}


def lock_file(fs: Any, path: str) -> LockFile:
    """The lock file at ``path`` on ``fs``, as the class registered for the filesystem's protocol.

    Examples
    --------
    >>> import fsspec
    >>> type(lock_file(fsspec.filesystem("file"), "/tmp/out/.imgtools/lock.json")).__name__
    'LocalLockFile'
    >>> lock_file(fsspec.filesystem("memory"), "/out/.imgtools/lock.json").exclusive
    False
    """
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    cls = next((LOCK_FILES[p] for p in protocols if p in LOCK_FILES), LockFile)
    return cls(fs, path)


class LocalLockFile(LockFile):
    """A lock on this machine's disk: created with ``O_EXCL``; replaced and removed after comparing its
    bytes, all under ``flock`` of its folder."""

    exclusive = True
    protocols = ("file", "local")

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        import fcntl

        folder = os.path.dirname(self.path)
        os.makedirs(folder, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    def read(self) -> Seen | None:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return Seen(Holder.parse(data), _digest(data))

    def create(self, data: bytes) -> str:
        with self._guard():
            try:
                with open(self.path, "xb") as f:
                    f.write(data)
            except FileExistsError:
                raise Lost(self.path) from None
        return _digest(data)

    def replace(self, data: bytes, token: str) -> str:
        with self._guard():
            self._expect(token)
            tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self.path)  # readers see the old lock or the new one, whole
        return _digest(data)

    def delete(self, token: str) -> None:
        with self._guard():
            self._expect(token)
            os.unlink(self.path)


def _precondition_failed(exc: BaseException) -> bool:
    """Whether ``exc`` (as gcsfs or s3fs raise it) says a conditional write's condition did not hold, or
    the object it named is gone."""
    if isinstance(exc, (FileExistsError, FileNotFoundError)):  # gcsfs: 412 -> FileExistsError
        return True
    response = getattr(exc.__cause__, "response", None)  # s3fs keeps botocore's error as the cause
    code = (response or {}).get("Error", {}).get("Code")
    return code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412", "409", "404")


class GCSLockFile(LockFile):
    """A lock in a GCS bucket: writes conditional on the object's generation (``ifGenerationMatch``)."""

    exclusive = True
    protocols = ("gs", "gcs")

    def read(self) -> Seen | None:
        for _ in range(_ATTEMPTS):
            self.fs.invalidate_cache(self.path)
            try:
                generation = str(self.fs.info(self.path)["generation"])
                # that generation's bytes (a newer one was written meanwhile: 404, look again)
                data = self.fs.cat_file(self.path, generation=generation)
            except FileNotFoundError:
                continue
            return Seen(Holder.parse(data), generation)
        return None

    def create(self, data: bytes) -> str:
        with self._conditional():  # public API: mode="create" sends ifGenerationMatch=0
            out = self.fs.pipe_file(self.path, data, mode="create")
        return str(out["generation"])

    def replace(self, data: bytes, token: str) -> str:
        from gcsfs.core import quote

        bucket, key, _ = self.fs.split_path(self.path)
        # gcsfs has no public write conditional on a generation: its request method, a media upload
        with self._conditional():
            out = self.fs.call("POST", f"{self.fs._location}/upload/storage/v1/b/{quote(bucket)}/o",
                               uploadType="media", name=key, ifGenerationMatch=token, data=data,
                               headers={"Content-Type": "application/octet-stream"}, json_out=True)
        return str(out["generation"])

    def delete(self, token: str) -> None:
        bucket, key, _ = self.fs.split_path(self.path)
        with self._conditional():  # gcsfs's rm_file takes no precondition: its request method
            self.fs.call("DELETE", "b/{}/o/{}", bucket, key, ifGenerationMatch=token)


class S3LockFile(LockFile):
    """A lock in an S3 bucket: writes conditional on the object's ETag (``If-None-Match`` / ``If-Match``)."""

    exclusive = True
    protocols = ("s3", "s3a")

    def read(self) -> Seen | None:
        # the ETag first, then the bytes: the bytes are never older than the version a write names, so a
        # decision taken on newer bytes only makes that write fail
        self.fs.invalidate_cache(self.path)
        try:
            etag = str(self.fs.info(self.path)["ETag"])
            data = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        return Seen(Holder.parse(data), etag)

    def _put(self, data: bytes, **condition: str) -> str:
        with self._conditional():  # s3fs hands put_object's own arguments through pipe_file
            out = self.fs.pipe_file(self.path, data, ContentType="application/json", **condition)
        return str(out["ETag"])

    def create(self, data: bytes) -> str:
        return self._put(data, IfNoneMatch="*")  # what pipe_file(mode="create") sends

    def replace(self, data: bytes, token: str) -> str:
        return self._put(data, IfMatch=token)

    def delete(self, token: str) -> None:
        bucket, key, _ = self.fs.split_path(self.path)
        with self._conditional():  # s3fs's rm_file takes no condition: its call of the S3 API
            self.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=token)


class RunLock:
    """The lock of one run on one DEST (see the module docstring for the contract).

    Examples
    --------
    >>> lock = RunLock(Location.resolve("memory://imgtools-doc/locked"))
    >>> lock.acquire(); lock.held
    True
    >>> RunLock(Location.resolve("memory://imgtools-doc/locked")).acquire()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    imgtools.errors.DestinationError: DEST 'memory://imgtools-doc/locked' is being written by another run ...
    >>> lock.release(); lock.held
    False
    """

    def __init__(self, location: Location, run_id: str | None = None, ttl: float = LOCK_TTL,
                 relpath: str = LOCK_FILE):
        self.location = location
        self.run_id = run_id or uuid.uuid4().hex
        self.ttl = ttl
        self.file = lock_file(location.fs, location.path(relpath))
        self._token: str | None = None
        self._lost: str | None = None  # why this run no longer holds the lock it took

    @property
    def url(self) -> str:
        return self.location.url

    def _read(self) -> Seen | None:
        return retry.call(self.file.read, f"reading the lock of {self.url}")

    def _write(self, fn: Callable[[], T]) -> T:
        """A write of the lock, tried again on transient errors (one that landed before its answer was lost
        then fails its condition: :class:`Lost`, which the callers resolve by reading the lock again)."""
        return retry.call(fn, f"writing the lock of {self.url}")

    def _ours(self) -> Seen | None:
        """The lock as read, when it names this run."""
        seen = self._read()
        return seen if seen is not None and seen.holder is not None and seen.holder.run == self.run_id else None

    def _taken_over(self) -> str:
        seen = self._read()
        by = f" ({seen.holder.describe()})" if seen is not None and seen.holder is not None else ""
        self._token = None
        self._lost = f"DEST {self.url!r} was taken over by another run{by}; this run stopped writing it"
        return self._lost

    @property
    def held(self) -> bool:
        """True while this run holds the lock, as far as it knows (see :meth:`verify`)."""
        return self._token is not None

    @property
    def lost(self) -> bool:
        """True once this run has found its lock taken over."""
        return self._lost is not None

    def _busy(self, holder: Holder) -> DestinationError:
        return DestinationError(f"DEST {self.url!r} is being written by another run ({holder.describe()}); "
                                "wait for it, or stop it and run again")

    def _live_other(self, seen: Seen | None) -> Holder | None:
        if seen is None or seen.holder is None or seen.holder.run == self.run_id:
            return None
        return None if seen.holder.stale(self.ttl) else seen.holder

    def check(self) -> None:
        """Raise :class:`DestinationError` when another live run holds the lock (nothing is written)."""
        holder = self._live_other(self._read())
        if holder is not None:
            raise self._busy(holder)

    def acquire(self) -> None:
        """Take the lock: create it, or take over a stale one.

        Raises
        ------
        DestinationError
            Another live run holds it (or keeps winning the race for it).
        """
        if self._lost is not None:
            raise DestinationError(self._lost)
        for _ in range(_ATTEMPTS):
            data = Holder.now(self.run_id).encode()
            seen = self._read()
            holder = self._live_other(seen)
            if holder is not None:
                raise self._busy(holder)
            try:
                # absent: create it; ours (a retried write that had landed), stale or unreadable: replace it
                self._token = self._write(lambda seen=seen, data=data: self.file.create(data) if seen is None
                                          else self.file.replace(data, seen.token))
            except Lost:
                continue  # another run wrote first: look again
            # read back: where a store checks the condition and writes in two steps (moto's threaded server),
            # two runs' writes can both succeed, and only the one the lock names holds it
            mine = self._ours()
            if mine is not None:
                self._token = mine.token
                return
            self._token = None
        raise DestinationError(f"DEST {self.url!r} is being locked by other runs at the same moment; run again")

    def refresh(self) -> None:
        """The heartbeat: rewrite the lock if it is still the version this run last wrote.

        Raises
        ------
        DestinationError
            The lock was taken over by another run (this one was thought dead), or this run never took it.
        """
        if self._lost is not None:
            raise DestinationError(self._lost)
        if self._token is None:
            raise DestinationError(f"DEST {self.url!r} is not locked by this run")
        data, token = Holder.now(self.run_id).encode(), self._token
        try:
            self._token = self._write(lambda: self.file.replace(data, token))
        except Lost:
            seen = self._ours()  # a retried write whose first try had landed: still ours
            if seen is None:
                raise DestinationError(self._taken_over()) from None
            self._token = seen.token

    def verify(self) -> None:
        """Raise :class:`DestinationError` unless the lock still names this run (one read; call before
        the writes that complete an output)."""
        if self._lost is None and self._ours() is not None:
            return
        raise DestinationError(self._lost or self._taken_over())

    def release(self) -> None:
        """Remove the lock if this run still holds it (a lock taken over is left to its new holder)."""
        token, self._token = self._token, None
        if token is None:
            return
        with contextlib.suppress(Lost):
            try:
                self._write(lambda: self.file.delete(token))
            except Lost:
                seen = self._ours()  # our last write landed unseen: remove that one
                if seen is not None:
                    self._write(lambda: self.file.delete(seen.token))

    @contextlib.contextmanager
    def hold(self, every: float | None = None) -> Iterator[RunLock]:
        """Take the lock (unless held already), keep it fresh from a thread every ``every`` seconds
        (``ttl / 4``), release it at the end. A heartbeat that finds the lock taken over stops beating;
        :meth:`verify` then raises.

        Examples
        --------
        >>> with RunLock(Location.resolve("memory://imgtools-doc/held")).hold() as lock:
        ...     lock.verify()      # before the writes that complete the output
        """
        if not self.held:
            self.acquire()
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.ttl / 4 if every is None else every):
                try:
                    self.refresh()
                except DestinationError:
                    return  # taken over: verify() says so
                except Exception:  # a missed beat is tried again at the next one; the lock only ages
                    continue

        thread = threading.Thread(target=beat, name="imgtools-lock", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
            self.release()
