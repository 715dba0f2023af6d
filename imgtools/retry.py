"""Retries for storage calls: transient errors (HTTP 408/429/5xx, dropped connections, timeouts) are
tried again with capped exponential backoff and full jitter; permanent ones (404, 403, a bad request)
are not.

gcsfs and s3fs already retry single requests; this layer sits above them, around whole batches (a
chunk's reads, a chunk's writes), so an error that outlives the library's own retries is given a few
more, well spaced, tries before it is raised as :class:`~imgtools.errors.StorageError` -- which Dask
then retries as a whole task. Nothing here asks which backend it is on: errors are recognised by
their HTTP status, their class, or the standard ``OSError`` family.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from .errors import StorageError

__all__ = ["RetryPolicy", "DEFAULT_POLICY", "is_transient", "call", "retry_failed"]

T = TypeVar("T")

_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
#: Error codes that S3-like services send for "try again later".
_TRANSIENT_CODES = frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout",
                              "RequestTimeTooSkewed", "Throttling", "ThrottlingException", "503", "500"})
#: Exception classes of the HTTP stacks under fsspec that mean the connection, not the request, failed.
_TRANSIENT_NAMES = frozenset({"ServerDisconnectedError", "ClientConnectionError", "ClientOSError",
                              "ClientPayloadError", "ClientConnectorError", "ServerTimeoutError",
                              "ProxyError", "ChunkedEncodingError", "IncompleteRead", "ReadTimeoutError",
                              "ConnectTimeoutError", "EndpointConnectionError", "ConnectionClosedError",
                              "ResponseStreamingError", "FSTimeoutError", "ChecksumError"})
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


def _status(exc: BaseException) -> int | None:
    for attr in ("status", "code", "status_code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
            return int(value)
    response = getattr(exc, "response", None)  # botocore ClientError
    if isinstance(response, dict):
        meta = response.get("ResponseMetadata") or {}
        if isinstance(meta.get("HTTPStatusCode"), int):
            return meta["HTTPStatusCode"]
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether trying ``exc``'s call again may succeed.

    Examples
    --------
    >>> is_transient(ConnectionResetError()), is_transient(TimeoutError()), is_transient(FileNotFoundError("x"))
    (True, True, False)
    """
    if isinstance(exc, StorageError):
        return exc.transient
    if isinstance(exc, _PERMANENT):
        return False
    status = _status(exc)
    if status is not None:
        return status in _TRANSIENT_STATUS
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and (response.get("Error") or {}).get("Code") in _TRANSIENT_CODES:
        return True
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if any(cls.__name__ in _TRANSIENT_NAMES for cls in type(exc).__mro__):
        return True
    cause = exc.__cause__ or exc.__context__
    return cause is not None and cause is not exc and is_transient(cause)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How often and how far apart to try again: ``attempts`` tries in all, the n-th wait drawn
    uniformly from ``[0, min(cap, base * 2**n)]`` (full jitter)."""

    attempts: int = 4
    base: float = 0.5
    cap: float = 8.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before try ``attempt + 1`` (``attempt`` counts from 0)."""
        return random.uniform(0.0, min(self.cap, self.base * 2**attempt))


DEFAULT_POLICY = RetryPolicy()


def call(fn: Callable[[], T], what: str, policy: RetryPolicy = DEFAULT_POLICY,
         sleep: Callable[[float], None] = time.sleep) -> T:
    """``fn()``, tried again on transient errors; the last transient error is raised as a
    :class:`StorageError` naming ``what``, a permanent one as it is.

    Examples
    --------
    >>> call(lambda: 42, "the answer")
    42
    """
    for attempt in range(policy.attempts):
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt == policy.attempts - 1:
                raise StorageError(f"{what}: still failing after {policy.attempts} tries: "
                                   f"{type(exc).__name__}: {exc}", transient=True) from exc
            sleep(policy.delay(attempt))
    raise AssertionError("unreachable")


def retry_failed(fetch: Callable[[Sequence[int]], Sequence[object]], n: int, what: str,
                 policy: RetryPolicy = DEFAULT_POLICY, sleep: Callable[[float], None] = time.sleep) -> list[object]:
    """Results of a batch call ``fetch(indices)`` for ``range(n)`` that returns one result or exception
    per index: the indices whose exception is transient are fetched again, alone, with backoff; a
    transient error that outlives the policy raises :class:`StorageError` (so that the task is retried
    as a whole rather than an image recorded as failed for a hiccup); permanent ones are returned.

    Examples
    --------
    >>> retry_failed(lambda idx: [i * 10 for i in idx], 3, "reads")
    [0, 10, 20]
    """
    out = list(fetch(range(n)))
    for attempt in range(policy.attempts):
        again = [i for i, got in enumerate(out) if isinstance(got, BaseException) and is_transient(got)]
        if not again:
            return out
        if attempt == policy.attempts - 1:
            exc = out[again[0]]
            raise StorageError(f"{what}: {len(again)} of {n} still failing after {policy.attempts} tries, "
                               f"e.g. {type(exc).__name__}: {exc}", transient=True) from exc  # type: ignore[misc]
        sleep(policy.delay(attempt))
        for i, got in zip(again, fetch(again)):
            out[i] = got
    return out
