"""Archives as sources: ``.tar``, ``.tar.gz`` / ``.tgz`` and ``.zip`` shards, local or in a bucket, read
in place -- never extracted to disk.

Listing an archive records where each member's bytes lie (its *span*): for ``.tar`` the data's offset
and size, for ``.zip`` the local header's offset and the compressed size. Reading members is then one
ranged read each, batched and concurrent like any other file. A compressed tar has no random access:
its members are read in one forward pass over the stream, kept open between the chunks of a task.

A member's origin is an fsspec URL, ``tar://<member>::<archive URL>`` or ``zip://<member>::<archive URL>``.
"""

from __future__ import annotations

import bz2
import contextlib
import json
import struct
import tarfile
import threading
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

from fsspec.core import url_to_fs

from . import retry
from .errors import SourceError

__all__ = ["archive_kind", "is_member", "split_member", "list_archive", "read_members", "is_stream", "close_streams",
           "closing_streams"]

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
    """Whether an archive's members can only be read in one forward pass (a compressed tar)."""
    kind = archive_kind(archive)
    return bool(kind and kind[1])


def _tar_members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    while (member := tar.next()) is not None:
        tar.members.clear()  # tarfile keeps every header it has seen; a big archive has millions
        if member.isfile():
            yield member


#: Read-ahead block when listing an uncompressed archive in place: a tar's headers lie one per member,
#: so each block costs one request; 1 MiB reads small members' shards through in few requests and
#: skips most of the bytes of big members (fsspec's default of 5 MiB read most shards whole).
LIST_BLOCK = 1 << 20


def list_archive(fs: Any, path: str) -> list[tuple[str, int, int]]:
    """The regular files of one archive, in archive order, as ``(member, offset, size)``; a
    compressed tar gives ``-1`` spans (its members are read by streaming).

    A transient storage error (a dropped connection, HTTP 5xx) lists the archive again, with backoff.

    Raises
    ------
    SourceError
        When the archive cannot be opened as its suffix says (or is not there).
    StorageError
        When the storage kept failing after the retries.
    """
    return [(name, offset, size) for name, offset, size, _ in _listing(fs, path)]


def _listing(fs: Any, path: str) -> list[tuple[str, int, int, int | None]]:
    """:func:`list_archive` with each tar member's header checksum (None for zip and compressed tars)."""
    return retry.call(lambda: _list_once(fs, path), f"listing {fs.unstrip_protocol(path)}")


def _list_once(fs: Any, path: str) -> list[tuple[str, int, int, int | None]]:
    protocol, compressed = archive_kind(path) or (None, False)
    try:
        with fs.open(path, "rb", **({} if compressed else {"block_size": LIST_BLOCK})) as f:
            if protocol == "zip":
                with zipfile.ZipFile(f) as zf:
                    return [(i.filename, i.header_offset, i.compress_size, None) for i in zf.infolist() if not i.is_dir()]
            with tarfile.open(fileobj=f, mode="r|*" if compressed else "r:") as tar:
                return [(m.name, -1, -1, None) if compressed else (m.name, m.offset_data, m.size, m.chksum)
                        for m in _tar_members(tar)]
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


def _index(archive: str, options: dict, fresh: bool = False) -> dict[str, tuple[int, int, int | None]] | Exception:
    """member -> span of an archive (its first copy, as in the listing), listed once per process and
    again when ``fresh``; or the error that listing it raised. No request per read: a shard rewritten in
    place is noticed by the headers the reads check (see :func:`read_members`)."""
    key = (archive, json.dumps(options, sort_keys=True, default=repr))
    with _indexes_lock:
        if not fresh and key in _indexes:
            _indexes.move_to_end(key)
            return _indexes[key]
    index: dict[str, tuple[int, int, int | None]] | Exception = {}
    try:
        fs, path = url_to_fs(archive, **options)
        for name, offset, size, chksum in _listing(fs, path):
            index.setdefault(name, (offset, size, chksum))  # type: ignore[union-attr]
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
        return len(block) == 512 and tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape").chksum == chksum
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
        name = raw[_ZIP_LOCAL.size : _ZIP_LOCAL.size + name_len].decode("utf-8" if flags & 0x800 else "cp437", "replace")
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


_streams = threading.local()


def _stream_read(archive: str, names: Sequence[str], options: dict) -> dict[str, bytes | Exception]:
    """Members of a compressed tar in one forward pass; the open stream is kept (per thread) so that
    the next call for later members goes on from here instead of decompressing from the start. On any
    error the stream is dropped, so the next call starts afresh."""
    wanted, got = set(names), {}
    try:
        for fresh in (False, True):
            state = getattr(_streams, "state", None)
            if fresh or state is None or state[0] != archive:
                close_streams()
                fs, path = url_to_fs(archive, **options)
                f = fs.open(path, "rb")
                try:
                    state = (archive, f, tarfile.open(fileobj=f, mode="r|*"))
                except BaseException:
                    f.close()
                    raise
                _streams.state = state
            for member in _tar_members(state[2]):
                if member.name in wanted and member.name not in got:
                    got[member.name] = state[2].extractfile(member).read()
                    if wanted <= got.keys():
                        return got
            close_streams()  # at the end: what is missing lies behind us, or is not there at all
            wanted -= got.keys()
    except BaseException:
        close_streams()
        raise
    return {**got, **{name: FileNotFoundError(f"{name!r} is not in {archive}") for name in wanted}}


def read_members(origins: Sequence[str], spans: Sequence[tuple[int, int] | None] | None,
                 options: dict) -> list[bytes | Exception]:
    """The bytes of archive members (origins as :func:`split_member` reads them), each or its error.

    Members with a span (from the listing) are ranged reads, concurrent through fsspec's
    ``cat_ranges``. Members without one find it in the archive's index, listed once per process; their
    reads take the member's header along and check that it names the member, so an archive rewritten
    since is listed again, not read at stale offsets. Members of compressed tars are read by streaming.
    A whole batch that fails (a connection that did not come up) gives every member that error.
    """
    out: list[bytes | Exception] = [FileNotFoundError("not read")] * len(origins)
    ranged: dict[str, list[tuple[int, str, str, int, int, bool]]] = {}
    streamed: dict[str, list[tuple[int, str]]] = {}
    for i, origin in enumerate(origins):
        proto, member, archive = split_member(origin)
        span = spans[i] if spans is not None else None
        if is_stream(archive):
            streamed.setdefault(archive, []).append((i, member))
        elif span is not None and span[0] >= 0:
            ranged.setdefault(archive, []).append((i, proto, member, *span, False))
        else:
            ranged.setdefault(archive, []).append((i, proto, member, -1, -1, True))
    for archive, rows in ranged.items():
        _read_ranged(archive, rows, options, out)
    for archive, names in streamed.items():
        try:
            found = _stream_read(archive, [name for _, name in names], options)
        except Exception as exc:  # the archive itself failed: every member of it, with that reason
            found = {name: exc for _, name in names}
        for i, name in names:
            out[i] = found.get(name, FileNotFoundError(f"{name!r} is not in {archive}"))
    return out


def _read_ranged(archive: str, rows: list[tuple[int, str, str, int, int, bool]], options: dict,
                 out: list[bytes | Exception], fresh: bool = False) -> None:
    """Ranged reads of one archive's members into ``out``. Rows without a span (``-1``) take it from the
    cached index and are checked against their headers; those that meet a header naming another
    member are read once more at the spans of a fresh listing (``fresh``), which are trusted."""
    index = _index(archive, options, fresh) if any(check for *_, check in rows) else {}
    todo, sums = [], {}
    for i, proto, member, offset, size, check in rows:
        if check and isinstance(index, Exception):
            out[i] = index
        elif check and member not in index:
            out[i] = FileNotFoundError(f"{member!r} is not in {archive}")
        elif check:  # a span from a fresh listing is trusted as it is
            offset, size, sums[i] = index[member]  # type: ignore[index]
            todo.append((i, proto, member, offset, size, not fresh))
        else:
            todo.append((i, proto, member, offset, size, False))
    if not todo:
        return
    try:
        fs, path = url_to_fs(archive, **options)
        starts = [offset - (512 if check and proto == "tar" else 0) for _, proto, _, offset, _, check in todo]
        ends = [offset + size + (_ZIP_LOCAL.size + _ZIP_SLACK if proto == "zip" else 0) for _, proto, _, offset, size, _ in todo]
        got = fs.cat_ranges([path] * len(todo), starts, ends, on_error="return")
    except Exception as exc:  # the whole batch failed
        fs, path, got = None, None, [exc] * len(todo)
    stale = []
    for (i, proto, member, offset, size, check), raw in zip(todo, got):
        if isinstance(raw, Exception) and check and not retry.is_transient(raw):
            stale.append((i, proto, member, -1, -1, True))  # e.g. a range past the end of a shorter archive
        elif isinstance(raw, Exception):
            out[i] = raw
        elif proto == "tar" and check:
            if _tar_header_is(raw[:512], sums[i]) and len(raw) == 512 + size:
                out[i] = raw[512:]
            else:
                stale.append((i, proto, member, -1, -1, True))
        elif proto == "tar":
            out[i] = raw
        else:
            try:
                out[i] = _unzip(fs, path, raw, offset, size, member if check else None)
            except _Stale:
                stale.append((i, proto, member, -1, -1, True))
    if stale:
        _read_ranged(archive, stale, options, out, fresh=True)


def close_streams() -> None:
    """Close the compressed-tar stream this thread keeps open between reads (the end of a task)."""
    state = getattr(_streams, "state", None)
    _streams.state = None
    if state is not None:
        with contextlib.suppress(Exception):  # a stream that will not close is dropped all the same
            state[1].close()


@contextlib.contextmanager
def closing_streams() -> Iterator[None]:
    """Keep compressed-tar streams open between the reads inside, and close them at the end.

    Examples
    --------
    >>> with closing_streams():
    ...     pass
    """
    try:
        yield
    finally:
        close_streams()


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
