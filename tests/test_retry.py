"""Retries: which errors are transient, backoff bounds, and the batch retry of failed reads."""

from __future__ import annotations

import pickle

import aiohttp
import pytest
from botocore.exceptions import ClientError
from gcsfs.retry import HttpError

from imgtools import retry
from imgtools.errors import StorageError

FAST = retry.RetryPolicy(attempts=4, base=0.0, cap=0.0)


def _s3_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "x"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "GetObject")


@pytest.mark.parametrize("exc, transient", [
    (HttpError({"code": 503, "message": "backend"}), True),
    (HttpError({"code": 429, "message": "rate"}), True),
    (HttpError({"code": 404, "message": "gone"}), False),
    (HttpError({"code": 403, "message": "forbidden"}), False),
    (_s3_error("SlowDown", 503), True),
    (_s3_error("InternalError", 500), True),
    (_s3_error("NoSuchKey", 404), False),
    (_s3_error("AccessDenied", 403), False),
    (aiohttp.ServerDisconnectedError(), True),
    (ConnectionResetError(), True),
    (TimeoutError(), True),
    (FileNotFoundError("x"), False),
    (PermissionError("x"), False),
    (ValueError("bad request"), False),
    (StorageError("again", transient=True), True),
    (StorageError("no", transient=False), False),
])
def test_is_transient_retries_throttling_5xx_and_dropped_connections_only(exc, transient):
    assert retry.is_transient(exc) is transient


def test_call_retries_transient_errors_then_succeeds():
    failures = iter([ConnectionResetError(), HttpError({"code": 503, "message": "x"})])
    calls = []

    def flaky():
        calls.append(1)
        exc = next(failures, None)
        if exc:
            raise exc
        return "ok"

    assert retry.call(flaky, "x", FAST) == "ok" and len(calls) == 3


def test_call_raises_permanent_errors_at_once_and_transient_ones_as_storage_error_at_the_end():
    calls = []

    def missing():
        calls.append(1)
        raise FileNotFoundError("gs://b/x.jpg")

    with pytest.raises(FileNotFoundError):
        retry.call(missing, "x", FAST)
    assert len(calls) == 1

    def down():
        raise HttpError({"code": 503, "message": "down"})

    with pytest.raises(StorageError, match="reading y: still failing after 4 tries") as info:
        retry.call(down, "reading y", FAST)
    assert info.value.transient and pickle.loads(pickle.dumps(info.value)).transient


def test_backoff_delays_grow_and_stay_under_the_cap():
    policy = retry.RetryPolicy(attempts=8, base=0.5, cap=4.0)
    for attempt in range(8):
        delays = [policy.delay(attempt) for _ in range(200)]
        assert 0 <= min(delays) and max(delays) <= min(4.0, 0.5 * 2**attempt)
    assert max(policy.delay(6) for _ in range(200)) > 2.0  # full jitter spreads up to the cap


def test_retry_failed_refetches_only_the_transient_failures():
    seen: list[list[int]] = []
    hiccups = {1: 2, 3: 1}  # index -> transient failures before it reads

    def fetch(indices):
        seen.append(list(indices))
        out = []
        for i in indices:
            if i == 2:
                out.append(FileNotFoundError(f"{i}"))
            elif hiccups.get(i, 0):
                hiccups[i] -= 1
                out.append(aiohttp.ServerDisconnectedError())
            else:
                out.append(b"%d" % i)
        return out

    got = retry.retry_failed(fetch, 4, "reads", FAST)
    assert got[0] == b"0" and got[1] == b"1" and isinstance(got[2], FileNotFoundError) and got[3] == b"3"
    assert seen == [[0, 1, 2, 3], [1, 3], [1]]


def test_retry_failed_raises_when_the_storage_never_comes_back():
    with pytest.raises(StorageError, match="1 of 2 still failing"):
        retry.retry_failed(lambda idx: [b"x" if i == 0 else ConnectionError() for i in idx], 2, "reads", FAST)
