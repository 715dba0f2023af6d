"""Sources stage: the inputs of a run, listed (:mod:`imgtools.listing`, whose names this module also offers)
and read, concurrently and with retries.

Members of archives are origins like any other: the rest of imgtools never parses their URLs. Reading
goes through a :class:`ReadSession` (``with reading(options) as session: session.read(origins)``), which
keeps a compressed tar's stream open from one read to the next and closes it when the session ends;
:func:`read_bytes` is a session of one read. :func:`stream_group` says which origins must be read in
that order, one stream per group, so that work can be split without reading an archive twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import archives, retry
from .listing import (
    IMAGE_EXTENSIONS,
    LISTING_ONLY_COLUMNS,
    PAIRED_COLUMNS,
    SPAN_COLUMNS,
    Listing,
    ListingSummary,
    list_source,
    safe_relpath,
    sniff_image,
    source_columns,
    spans_of,
    summarize_source,
)
from .location import Resolver

__all__ = ["Listing", "list_source", "ListingSummary", "summarize_source", "ReadSession", "reading", "read_bytes",
           "stream_group", "spans_of", "IMAGE_EXTENSIONS", "sniff_image", "safe_relpath", "SPAN_COLUMNS",
           "LISTING_ONLY_COLUMNS", "PAIRED_COLUMNS", "source_columns"]


def stream_group(origin: str) -> str | None:
    """The stream an origin is read from, when it must be read in order with the origins before it:
    for a member of a compressed tar (``.tar.gz``, ``.tgz``), which has no random access, a key shared
    by the members of that archive (its URL); None for anything read on its own (a file, a member of a
    ``.tar`` or ``.zip``).

    Consecutive origins of one group are best read in one :class:`ReadSession`, in listing order: the
    stream then goes on from read to read instead of decompressing the archive from its start again.

    Examples
    --------
    >>> stream_group("tar://cat/1.jpg::gs://b/shard-0.tar.gz")
    'gs://b/shard-0.tar.gz'
    >>> stream_group("tar://cat/1.jpg::gs://b/shard-0.tar"), stream_group("gs://b/cat/1.jpg")
    (None, None)
    """
    return archives.stream_of(origin)


class ReadSession:
    """Reads many files at once, like :func:`read_bytes`, and keeps what a run of reads shares: the
    stream of the compressed tar last read (so that reading later members of a ``.tar.gz`` goes on from
    where the last read stopped, not from the archive's start). Closing the session closes that stream.

    A session is for one thread at a time (it is not locked); open one per thread or task, with
    :func:`reading`.

    Examples
    --------
    >>> with reading() as session:
    ...     session.read(["memory://nowhere.jpg"])
    [FileNotFoundError('/nowhere.jpg')]
    """

    def __init__(self, storage_options: dict[str, Any] | None = None,
                 policy: retry.RetryPolicy = retry.DEFAULT_POLICY) -> None:
        self.resolve = Resolver(storage_options)  # each filesystem made once for the session's reads
        self.policy = policy
        self._cursor: archives.TarCursor | None = archives.TarCursor()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (a closed session reads no more)."""
        return self._cursor is None

    def read(self, origins: Sequence[str],
             spans: Sequence[tuple[int, int] | None] | None = None) -> list[bytes | Exception]:
        """Fetch many whole files at once, each from the filesystem its URL names; concurrent on remote
        filesystems (fsspec's ``cat_ranges``, which, unlike ``cat``, takes names literally: ``[``, ``?``
        and ``*`` are not globs). Archive members (origins from :func:`list_source`) are ranged reads at
        their ``spans`` (from the listing, see :func:`spans_of`), or read by streaming a compressed tar.

        Transient errors (HTTP 429/5xx, dropped connections) are retried with backoff; one that outlives
        the retries raises :class:`~imgtools.errors.StorageError`, so that no image is recorded as
        failed for a hiccup of the storage.

        Returns, in order, each file's bytes or the (permanent) exception that reading it raised.

        Raises
        ------
        ValueError
            When the session is closed.
        StorageError
            When the storage kept failing after the retries.

        Examples
        --------
        >>> with reading() as session:
        ...     session.read(["memory://nowhere.jpg"])
        [FileNotFoundError('/nowhere.jpg')]
        """
        cursor = self._cursor
        if cursor is None:
            raise ValueError("read from a closed ReadSession")

        def fetch(indices: Sequence[int]) -> list[bytes | Exception]:
            picked = [origins[i] for i in indices]
            return _read_once(picked, self.resolve, None if spans is None else [spans[i] for i in indices],
                              cursor)

        return retry.retry_failed(fetch, len(origins), f"reading {len(origins)} files", self.policy)  # type: ignore[return-value]

    def close(self) -> None:
        """Close what the session keeps open; closing it again does nothing."""
        cursor, self._cursor = self._cursor, None
        if cursor is not None:
            cursor.close()

    def __enter__(self) -> ReadSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def reading(storage_options: dict[str, Any] | None = None,
            policy: retry.RetryPolicy = retry.DEFAULT_POLICY) -> ReadSession:
    """A :class:`ReadSession` for the reads of one thread (a task, a loop over chunks): use it in a
    ``with`` block, which closes it at the end (or call its ``close()``).

    Examples
    --------
    >>> with reading({}) as session:
    ...     first = session.read(["memory://nowhere.jpg"])
    ...     later = session.read(["memory://nowhere.jpg"])   # a .tar.gz goes on from the first read
    >>> session.closed
    True
    """
    return ReadSession(storage_options, policy)


def read_bytes(origins: Sequence[str], storage_options: dict[str, Any] | None = None,
               spans: Sequence[tuple[int, int] | None] | None = None,
               policy: retry.RetryPolicy = retry.DEFAULT_POLICY) -> list[bytes | Exception]:
    """Fetch many whole files at once: :meth:`ReadSession.read` in a session of its own, closed before
    returning (nothing stays open). Reads that follow one another through a compressed tar are
    quicker in one :func:`reading` session.

    Returns, in order, each file's bytes or the (permanent) exception that reading it raised.

    Raises
    ------
    StorageError
        When the storage kept failing after the retries.

    Examples
    --------
    >>> read_bytes(["memory://nowhere.jpg"])
    [FileNotFoundError('/nowhere.jpg')]
    """
    with reading(storage_options, policy) as session:
        return session.read(origins, spans)


def _read_once(origins: Sequence[str], resolve: Resolver, spans, cursor: archives.TarCursor) -> list[bytes | Exception]:
    out: list[bytes | Exception] = [FileNotFoundError("not read")] * len(origins)
    members = [i for i, origin in enumerate(origins) if archives.is_member(origin)]
    if members:
        member_spans = None if spans is None else [spans[i] for i in members]
        got = archives.read_members([origins[i] for i in members], member_spans, resolve, cursor)
        for i, value in zip(members, got):
            out[i] = value
    groups: dict[int, tuple[Any, list[int], list[str]]] = {}
    for i, origin in enumerate(origins):
        if archives.is_member(origin):
            continue
        try:
            fs, path = resolve(origin)
        except Exception as exc:  # an unknown protocol fails this file only
            out[i] = exc
            continue
        _, where, paths = groups.setdefault(id(fs), (fs, [], []))
        where.append(i)
        paths.append(path)
    for fs, where, paths in groups.values():
        none = [None] * len(paths)
        try:
            got = fs.cat_ranges(paths, none, none, on_error="return")
        except Exception as exc:  # the whole batch failed (a connection that did not come up)
            got = [exc] * len(paths)
        for i, value in zip(where, got):
            out[i] = value
    return out
