"""Archives as sources: ``.tar``, ``.tar.gz`` / ``.tgz`` and ``.zip`` shards, local or in a bucket, read
in place -- never extracted to disk.

Listing an archive records where each member's bytes lie (its *span*): for ``.tar`` the data's offset
and size, for ``.zip`` the local header's offset and the compressed size. Reading members is then one
ranged read each, batched and concurrent like any other file. A compressed tar has no random access:
its members are read in one forward pass over the stream; a :class:`TarCursor` keeps that stream open
between reads, so that the next read of later members goes on from where the last one stopped.

A member's origin is an fsspec URL, ``tar://<member>::<archive URL>`` or ``zip://<member>::<archive URL>``.
Only this module and :mod:`imgtools.sources` (which lists archives into such origins) know that syntax;
the rest of imgtools goes through the sources stage (``reading``, ``read_bytes``, ``stream_group``).

No module-level state but a bounded cache of archive indexes (member -> span), shared by all threads
under a lock; an open stream belongs to the :class:`TarCursor` that opened it, and so to one thread.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import struct
import tarfile
import threading
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import IO, Any, NamedTuple

from . import retry
from .errors import SourceError
from .location import Resolver

__all__ = ["Member", "archive_kind", "is_member", "split_member", "list_archive", "read_members", "is_stream",
           "stream_of", "TarCursor"]

#: archive suffix -> (fsspec protocol of its members, compressed stream?)
_KINDS = {".tar": ("tar", False), ".tar.gz": ("tar", True), ".tgz": ("tar", True), ".zip": ("zip", False)}
_ZIP_LOCAL = struct.Struct("<4sHHHHHIIIHH")  # the 30-byte local file header
_ZIP_SLACK = 1024  # bytes read past a zip member's name for its local extra field


def archive_kind(url: str) -> tuple[str, bool] | None:
    """``(member protocol, compressed stream)`` for an archive URL, None for anything else.

    Examples
    --------
    >>> archive_kind("gs://b/train-0001.tar"), archive_kind("x/y.TAR.GZ"), archive_kind("a.jpg")
    (('tar', False), ('tar', True), None)
    """
    name = url.rsplit("/", 1)[-1].lower()
    for suffix, kind in _KINDS.items():
        if name.endswith(suffix):
            return kind
    return None


def is_member(origin: str) -> bool:
    """Whether ``origin`` names a member of an archive (``tar://...::...`` or ``zip://...::...``)."""
    return origin.startswith(("tar://", "zip://")) and "::" in origin


def split_member(origin: str) -> tuple[str, str, str]:
    """``(protocol, member, archive URL)`` of a member origin.

    Examples
    --------
    >>> split_member("tar://cat/1.jpg::gs://b/shard-0.tar")
    ('tar', 'cat/1.jpg', 'gs://b/shard-0.tar')
    >>> split_member("tar://cat/1.jpg::simplecache::gs://b/shard-0.tar")  # a chained archive URL stays whole
    ('tar', 'cat/1.jpg', 'simplecache::gs://b/shard-0.tar')
    """
    proto, rest = origin.split("://", 1)
    member, archive = rest.split("::", 1)
    return proto, member, archive


def is_stream(archive: str) -> bool:
    """Whether an archive's members can only be read in one forward pass (a compressed tar).

    Examples
    --------
    >>> is_stream("gs://b/shard-0.tar.gz"), is_stream("gs://b/shard-0.tar")
    (True, False)
    """
    kind = archive_kind(archive)
    return bool(kind and kind[1])


def stream_of(origin: str) -> str | None:
    """The archive URL of ``origin`` when it is a member of a compressed tar (read in one forward pass
    over the archive's stream), else None.

    Examples
    --------
    >>> stream_of("tar://cat/1.jpg::gs://b/shard-0.tar.gz")
    'gs://b/shard-0.tar.gz'
    >>> stream_of("tar://cat/1.jpg::gs://b/shard-0.tar"), stream_of("gs://b/cat/1.jpg")
    (None, None)
    """
    if not is_member(origin):
        return None
    archive = split_member(origin)[2]
    return archive if is_stream(archive) else None


def _open_stream(f: IO[bytes]) -> tarfile.TarFile:
    """A compressed tar's members in one forward pass over ``f``. The gzip layer is Python's
    :class:`gzip.GzipFile` under tarfile's plain stream, not tarfile's own ``r|gz``: tarfile's decompresses
    each 10 KiB block whole and slices the rest, so a member of zeros (a 2 MB archive claiming 2 GiB)
    costs gigabytes of copying to skip; GzipFile decompresses at most what is asked for."""
    return tarfile.open(fileobj=gzip.GzipFile(fileobj=f, mode="rb"), mode="r|")


def _tar_members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    while (member := tar.next()) is not None:
        tar.members.clear()  # tarfile keeps every header it has seen; a big archive has millions
        if member.isfile():
            yield member


#: Read-ahead block when listing an uncompressed archive in place: a tar's headers lie one per member,
#: so each block costs one request; 1 MiB reads small members' shards through in few requests and
#: skips most of the bytes of big members (fsspec's default of 5 MiB read most shards whole).
LIST_BLOCK = 1 << 20


class Member(NamedTuple):
    """A regular file of an archive: its ``name``, its span (``offset`` and ``size`` of its data in the
    archive: for a zip the local header and the compressed size; ``-1`` for a compressed tar, read by
    streaming), its ``length`` once extracted (what reading it costs in memory), and, for a plain tar,
    its header ``chksum`` (None otherwise)."""

    name: str
    offset: int
    size: int
    length: int
    chksum: int | None = None


def list_archive(fs: Any, path: str) -> list[Member]:
    """The regular files of one archive, in archive order (see :class:`Member`), from the headers alone:
    a member's length is known before a byte of it is read.

    A transient storage error (a dropped connection, HTTP 5xx) lists the archive again, with backoff.

    Raises
    ------
    SourceError
        When the archive cannot be opened as its suffix says (or is not there).
    StorageError
        When the storage kept failing after the retries.
    """
    return retry.call(lambda: _list_once(fs, path), f"listing {fs.unstrip_protocol(path)}")


def _list_once(fs: Any, path: str) -> list[Member]:
    protocol, compressed = archive_kind(path) or (None, False)
    try:
        with fs.open(path, "rb", **({} if compressed else {"block_size": LIST_BLOCK})) as f:
            if protocol == "zip":
                with zipfile.ZipFile(f) as zf:
                    return [Member(i.filename, i.header_offset, i.compress_size, i.file_size)
                            for i in zf.infolist() if not i.is_dir()]
            with _open_stream(f) if compressed else tarfile.open(fileobj=f, mode="r:") as tar:
                return [Member(m.name, -1, -1, m.size) if compressed
                        else Member(m.name, m.offset_data, m.size, m.size, m.chksum) for m in _tar_members(tar)]
    except Exception as exc:
        if retry.is_transient(exc):
            raise
        if isinstance(exc, (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error)):
            raise SourceError(f"archive {fs.unstrip_protocol(path)!r} cannot be read: {exc}") from None
        raise


#: Archives whose index (member -> span) a process keeps, for reads that come without spans.
INDEX_CACHE = 64
_indexes: OrderedDict[tuple[str, str], dict[str, tuple[int, int, int | None]] | Exception] = OrderedDict()
_indexes_lock = threading.Lock()


def _index(archive: str, resolve: Resolver, fresh: bool = False) -> dict[str, tuple[int, int, int | None]] | Exception:
    """member -> span of an archive (its first copy, as in the listing), listed once per process and
    again when ``fresh``; or the error that listing it raised. No request per read: a shard rewritten in
    place is noticed by the headers the reads check (see :func:`read_members`)."""
    key = (archive, resolve.key)
    with _indexes_lock:
        if not fresh and key in _indexes:
            _indexes.move_to_end(key)
            return _indexes[key]
    index: dict[str, tuple[int, int, int | None]] | Exception = {}
    try:
        fs, path = resolve(archive)
        for m in list_archive(fs, path):
            index.setdefault(m.name, (m.offset, m.size, m.chksum))  # type: ignore[union-attr]
    except Exception as exc:
        if retry.is_transient(exc):  # a hiccup is not remembered; an unreadable archive is
            return exc
        index = exc
    with _indexes_lock:
        _indexes[key] = index
        while len(_indexes) > INDEX_CACHE:
            _indexes.popitem(last=False)
    return index


def _tar_header_is(block: bytes, chksum: int | None) -> bool:
    """Whether the 512-byte block before a member's data is still the header it was listed with (its
    checksum covers the name, size and dates as stored, whatever the tar format)."""
    try:
        return (len(block) == 512
                and tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape").chksum == chksum)
    except tarfile.HeaderError:
        return False


class _Stale(Exception):
    """The header at a cached span names another member: the archive changed since it was listed."""


def _zip_data(raw: bytes, size: int, member: str | None = None) -> bytes | int:
    """A zip member's bytes from a read starting at its local header; the length to read instead when
    the local extra field made ``raw`` too short. With ``member``, the header must name it (else
    :class:`_Stale`)."""
    if member is not None and len(raw) < _ZIP_LOCAL.size:  # past the end of a shorter archive
        raise _Stale(member)
    sig, _, flags, method, _, _, _, _, _, name_len, extra_len = _ZIP_LOCAL.unpack_from(raw)
    if member is not None:
        encoding = "utf-8" if flags & 0x800 else "cp437"
        name = raw[_ZIP_LOCAL.size : _ZIP_LOCAL.size + name_len].decode(encoding, "replace")
        if sig != b"PK\x03\x04" or name != member:
            raise _Stale(member)
    if sig != b"PK\x03\x04":
        raise ValueError("not a zip local file header at the member's offset")
    start = _ZIP_LOCAL.size + name_len + extra_len
    if start + size > len(raw):
        return start + size
    data = raw[start : start + size]
    if method == zipfile.ZIP_STORED:
        return data
    if method == zipfile.ZIP_DEFLATED:
        return zlib.decompress(data, -15)
    if method == zipfile.ZIP_BZIP2:
        return bz2.decompress(data)
    raise ValueError(f"zip compression method {method} is not supported")


class TarCursor:
    """Where a reader stands in the compressed tar it reads: at most one open stream, kept between
    :meth:`read` calls so that a read of later members goes on from there instead of decompressing the
    archive from its start again. Reading another archive closes the stream and opens that one.

    A cursor is for one thread (it is not locked). Close it when done, or use it in a ``with`` block;
    :class:`imgtools.sources.ReadSession` owns one.

    Examples
    --------
    >>> with TarCursor() as cursor:       # doctest: +SKIP
    ...     cursor.read("shard-0.tar.gz", ["a/1.jpg", "a/2.jpg"], Resolver())
    {'a/1.jpg': b'...', 'a/2.jpg': b'...'}
    """

    def __init__(self) -> None:
        self._archive: str | None = None
        self._file: IO[bytes] | None = None
        self._tar: tarfile.TarFile | None = None

    @property
    def archive(self) -> str | None:
        """The archive whose stream is open, or None."""
        return self._archive

    def read(self, archive: str, names: Sequence[str], resolve: Resolver) -> dict[str, bytes | Exception]:
        """Members of a compressed tar in one forward pass, by name; a name not in the archive maps to a
        :class:`FileNotFoundError`. Members that the open stream has gone past are found on a fresh pass
        from the start. On any error the stream is closed, so that the next read starts afresh; the
        error is raised.
        """
        wanted, got = set(names), {}
        try:
            for fresh in (False, True):
                if fresh or self._tar is None or self._archive != archive:
                    self._open(archive, resolve)
                assert self._tar is not None
                for member in _tar_members(self._tar):
                    if member.name in wanted and member.name not in got:
                        got[member.name] = self._tar.extractfile(member).read()  # type: ignore[union-attr]
                        if wanted <= got.keys():
                            return got
                self.close()  # at the end: what is missing lies behind us, or is not there at all
                wanted -= got.keys()
        except BaseException:
            self.close()
            raise
        return {**got, **{name: FileNotFoundError(f"{name!r} is not in {archive}") for name in wanted}}

    def _open(self, archive: str, resolve: Resolver) -> None:
        self.close()
        fs, path = resolve(archive)
        f = fs.open(path, "rb")
        try:
            self._tar = _open_stream(f)
        except BaseException:
            f.close()
            raise
        self._archive, self._file = archive, f

    def close(self) -> None:
        """Close the open stream, if any (a stream that will not close is dropped all the same)."""
        f, self._archive, self._file, self._tar = self._file, None, None, None
        if f is not None:
            with contextlib.suppress(Exception):
                f.close()

    def __enter__(self) -> TarCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Ranged(NamedTuple):
    """One member to read by a ranged read: its place in the output, and its span (``-1`` when it is
    taken from the archive's index, which ``check`` then verifies against the member's header)."""

    index: int
    protocol: str
    member: str
    offset: int
    size: int
    check: bool


def read_members(origins: Sequence[str], spans: Sequence[tuple[int, int] | None] | None,
                 resolve: Resolver, cursor: TarCursor | None = None) -> list[bytes | Exception]:
    """The bytes of archive members (origins as :func:`split_member` reads them), each or its error.

    Members with a span (from the listing) are ranged reads, concurrent through fsspec's
    ``cat_ranges``. Members without one find it in the archive's index, listed once per process; their
    reads take the member's header along and check that it names the member, so an archive rewritten
    since is listed again, not read at stale offsets. Members of compressed tars are read by streaming
    through ``cursor``, left open for the caller's next read (without one, a stream is opened and
    closed within this call). A whole batch that fails (a connection that did not come up) gives every
    member that error.

    Examples
    --------
    >>> with TarCursor() as cursor:                                             # doctest: +SKIP
    ...     read_members(["tar://a/1.jpg::shard-0.tar.gz"], None, Resolver(), cursor)
    [b'...']
    """
    if cursor is None:
        with TarCursor() as own:
            return read_members(origins, spans, resolve, own)
    out: list[bytes | Exception] = [FileNotFoundError("not read")] * len(origins)
    ranged: dict[str, list[_Ranged]] = {}
    streamed: dict[str, list[tuple[int, str]]] = {}
    for i, origin in enumerate(origins):
        proto, member, archive = split_member(origin)
        span = spans[i] if spans is not None else None
        if is_stream(archive):
            streamed.setdefault(archive, []).append((i, member))
        elif span is not None and span[0] >= 0:
            ranged.setdefault(archive, []).append(_Ranged(i, proto, member, span[0], span[1], False))
        else:
            ranged.setdefault(archive, []).append(_Ranged(i, proto, member, -1, -1, True))
    for archive, rows in ranged.items():
        _read_ranged(archive, rows, resolve, out)
    for archive, names in streamed.items():
        try:
            found = cursor.read(archive, [name for _, name in names], resolve)
        except Exception as exc:  # the archive itself failed: every member of it, with that reason
            found = {name: exc for _, name in names}
        for i, name in names:
            out[i] = found.get(name, FileNotFoundError(f"{name!r} is not in {archive}"))
    return out


def _read_ranged(archive: str, rows: list[_Ranged], resolve: Resolver, out: list[bytes | Exception],
                 fresh: bool = False) -> None:
    """Ranged reads of one archive's members into ``out``. Rows without a span (``-1``) take it from the
    cached index and are checked against their headers; those that meet a header naming another
    member are read once more at the spans of a fresh listing (``fresh``), which are trusted."""
    index = _index(archive, resolve, fresh) if any(row.check for row in rows) else {}
    todo: list[_Ranged] = []
    sums: dict[int, int | None] = {}
    for row in rows:
        if row.check and isinstance(index, Exception):
            out[row.index] = index
        elif row.check and row.member not in index:
            out[row.index] = FileNotFoundError(f"{row.member!r} is not in {archive}")
        elif row.check:  # a span from a fresh listing is trusted as it is
            offset, size, sums[row.index] = index[row.member]  # type: ignore[index]
            todo.append(row._replace(offset=offset, size=size, check=not fresh))
        else:
            todo.append(row)
    if not todo:
        return
    try:
        fs, path = resolve(archive)
        starts = [row.offset - (512 if row.check and row.protocol == "tar" else 0) for row in todo]
        ends = [row.offset + row.size + (_ZIP_LOCAL.size + _ZIP_SLACK if row.protocol == "zip" else 0) for row in todo]
        got = fs.cat_ranges([path] * len(todo), starts, ends, on_error="return")
    except Exception as exc:  # the whole batch failed
        fs, path, got = None, None, [exc] * len(todo)
    stale: list[_Ranged] = []
    for row, raw in zip(todo, got):
        again = row._replace(offset=-1, size=-1, check=True)
        if isinstance(raw, Exception) and row.check and not retry.is_transient(raw):
            stale.append(again)  # e.g. a range past the end of a shorter archive
        elif isinstance(raw, Exception):
            out[row.index] = raw
        elif row.protocol == "tar" and row.check:
            if _tar_header_is(raw[:512], sums[row.index]) and len(raw) == 512 + row.size:
                out[row.index] = raw[512:]
            else:
                stale.append(again)
        elif row.protocol == "tar":
            out[row.index] = raw
        else:
            try:
                out[row.index] = _unzip(fs, path, raw, row.offset, row.size, row.member if row.check else None)
            except _Stale:
                stale.append(again)
    if stale:
        _read_ranged(archive, stale, resolve, out, fresh=True)


def _unzip(fs, path: str, raw: bytes, offset: int, size: int, member: str | None = None) -> bytes | Exception:
    """A zip member's data (or why not) from a read at its local header; raises :class:`_Stale` when
    ``member`` is given and the header names another."""
    try:
        data = _zip_data(raw, size, member)
        if isinstance(data, int):  # a long local extra field: read the exact span
            data = _zip_data(fs.cat_file(path, offset, offset + data), size, member)
        return data  # type: ignore[return-value]
    except _Stale:
        raise
    except Exception as exc:
        return exc
