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
import struct
import tarfile
import threading
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any

from fsspec.core import url_to_fs

from . import retry
from .errors import SourceError

__all__ = ["archive_kind", "is_member", "split_member", "list_archive", "read_members", "is_stream", "close_streams"]

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
    """
    proto, rest = origin.split("://", 1)
    member, archive = rest.rsplit("::", 1)
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
    return retry.call(lambda: _list_once(fs, path), f"listing {fs.unstrip_protocol(path)}")


def _list_once(fs: Any, path: str) -> list[tuple[str, int, int]]:
    protocol, compressed = archive_kind(path) or (None, False)
    try:
        with fs.open(path, "rb", **({} if compressed else {"block_size": LIST_BLOCK})) as f:
            if protocol == "zip":
                with zipfile.ZipFile(f) as zf:
                    return [(i.filename, i.header_offset, i.compress_size) for i in zf.infolist() if not i.is_dir()]
            with tarfile.open(fileobj=f, mode="r|*" if compressed else "r:") as tar:
                return [(m.name, -1, -1) if compressed else (m.name, m.offset_data, m.size) for m in _tar_members(tar)]
    except Exception as exc:
        if retry.is_transient(exc):
            raise
        if isinstance(exc, (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error)):
            raise SourceError(f"archive {fs.unstrip_protocol(path)!r} cannot be read: {exc}") from None
        raise


@lru_cache(maxsize=64)
def _index(archive: str, options: str, version: str) -> dict[str, tuple[int, int]]:
    """member -> span of an archive, for reads that come without spans (cached per process, per
    ``version`` of the archive: a shard rewritten in place is listed again)."""
    import json

    fs, path = url_to_fs(archive, **json.loads(options))
    return {name: (offset, size) for name, offset, size in list_archive(fs, path)}


def _version(fs: Any, path: str) -> str:
    """What tells one state of a file from the next: size with modification time, ETag or generation."""
    info = fs.info(path)
    stamp = [info.get(k) for k in ("size", "mtime", "LastModified", "updated", "ETag", "etag", "generation")]
    return repr([v for v in stamp if v is not None])


def _spans_from_index(archive: str, options: dict) -> dict[str, tuple[int, int]] | Exception:
    """The spans of an archive's members from its (cached) index, or the error that reading it raised."""
    import json

    try:
        fs, path = url_to_fs(archive, **options)
        return _index(archive, json.dumps(options, sort_keys=True), retry.call(lambda: _version(fs, path), f"reading {archive}"))
    except Exception as exc:
        return exc


def _zip_data(raw: bytes, size: int) -> bytes | int:
    """A zip member's bytes from a read starting at its local header; the length to read instead when
    the local extra field made ``raw`` too short."""
    sig, _, _, method, _, _, _, _, _, name_len, extra_len = _ZIP_LOCAL.unpack_from(raw)
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
    the next call for later members goes on from here instead of decompressing from the start."""
    wanted, got = set(names), {}
    for fresh in (False, True):
        state = getattr(_streams, "state", None)
        if fresh or state is None or state[0] != archive:
            if state is not None:
                state[1].close()
            fs, path = url_to_fs(archive, **options)
            f = fs.open(path, "rb")
            state = _streams.state = (archive, f, tarfile.open(fileobj=f, mode="r|*"))
        for member in _tar_members(state[2]):
            if member.name in wanted and member.name not in got:
                got[member.name] = state[2].extractfile(member).read()
                if wanted <= got.keys():
                    return got
        state[1].close()  # at the end: what is missing lies behind us, or is not there at all
        _streams.state = None
        wanted -= got.keys()
    return {**got, **{name: FileNotFoundError(f"{name!r} is not in {archive}") for name in wanted}}


def read_members(origins: Sequence[str], spans: Sequence[tuple[int, int] | None] | None,
                 options: dict) -> list[bytes | Exception]:
    """The bytes of archive members (origins as :func:`split_member` reads them), each or its error.

    Members with a span (from the listing) are ranged reads, concurrent through fsspec's
    ``cat_ranges``; members without one find it in the archive's index, read once per process (and
    again when the archive changed). Members of compressed tars are read by streaming. A whole batch
    that fails (a connection that did not come up) gives every member of it that error, to be retried.
    """
    out: list[bytes | Exception] = [FileNotFoundError("not read")] * len(origins)
    ranged: dict[str, list[tuple[int, str, int, int]]] = {}
    streamed: dict[str, list[tuple[int, str]]] = {}
    unknown: dict[str, list[tuple[int, str, str]]] = {}
    for i, origin in enumerate(origins):
        proto, member, archive = split_member(origin)
        span = spans[i] if spans is not None else None
        if is_stream(archive):
            streamed.setdefault(archive, []).append((i, member))
        elif span is not None and span[0] >= 0:
            ranged.setdefault(archive, []).append((i, proto, *span))
        else:
            unknown.setdefault(archive, []).append((i, proto, member))
    for archive, rows in unknown.items():
        index = _spans_from_index(archive, options)
        for i, proto, member in rows:
            if isinstance(index, Exception):
                out[i] = index
            elif member in index:
                ranged.setdefault(archive, []).append((i, proto, *index[member]))
            else:
                out[i] = FileNotFoundError(f"{member!r} is not in {archive}")
    for archive, rows in ranged.items():
        try:
            fs, path = url_to_fs(archive, **options)
            ends = [offset + size + (_ZIP_LOCAL.size + _ZIP_SLACK if proto == "zip" else 0) for _, proto, offset, size in rows]
            got = fs.cat_ranges([path] * len(rows), [r[2] for r in rows], ends, on_error="return")
        except Exception as exc:  # the whole batch failed
            fs, path, got = None, None, [exc] * len(rows)
        for (i, proto, offset, size), raw in zip(rows, got):
            out[i] = raw if proto == "tar" or isinstance(raw, Exception) else _unzip(fs, path, raw, offset, size)
    for archive, names in streamed.items():
        try:
            found = _stream_read(archive, [name for _, name in names], options)
        except Exception as exc:  # the archive itself failed: every member of it, with that reason
            found = {name: exc for _, name in names}
        for i, name in names:
            out[i] = found.get(name, FileNotFoundError(f"{name!r} is not in {archive}"))
    return out


def close_streams() -> None:
    """Close the compressed-tar stream this thread keeps open between reads (the end of a task)."""
    state = getattr(_streams, "state", None)
    _streams.state = None
    if state is not None:
        state[1].close()


def _unzip(fs, path: str, raw: bytes, offset: int, size: int) -> bytes | Exception:
    try:
        data = _zip_data(raw, size)
        if isinstance(data, int):  # a long local extra field: read the exact span
            data = _zip_data(fs.cat_file(path, offset, offset + data), size)
        return data  # type: ignore[return-value]
    except Exception as exc:
        return exc

