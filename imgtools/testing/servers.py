"""Start and stop the storage servers: each is a child process on a free port of 127.0.0.1."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

__all__ = ["Server", "gcs_emulator", "s3_server", "free_port"]

#: moto's S3 server needs a region for bucket creation; any fixed one will do.
S3_REGION = "us-west-2"


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Server:
    """A running storage server: ``protocol`` (``gs`` or ``s3``), its ``endpoint`` URL, and the
    ``storage_options`` and environment variables that point gcsfs / s3fs at it."""

    protocol: str
    endpoint: str
    storage_options: dict[str, Any]
    env: dict[str, str]

    def filesystem(self, endpoint: str | None = None):
        """A fresh (uncached) fsspec filesystem on this server, or on ``endpoint`` (e.g. a proxy)."""
        import fsspec

        return fsspec.filesystem(self.protocol, skip_instance_cache=True, **self.options(endpoint))

    def options(self, endpoint: str | None = None) -> dict[str, Any]:
        """``storage_options`` for this server, or for ``endpoint`` in front of it."""
        return dict(self.storage_options) if endpoint is None else {**self.storage_options, "endpoint_url": endpoint}

    def make_bucket(self, name: str) -> str:
        """Create bucket ``name`` (an existing one is kept) and return its URL."""
        fs = self.filesystem()
        if fs.exists(name):
            return f"{self.protocol}://{name}"
        try:
            fs.mkdir(name, **({"region_name": S3_REGION} if self.protocol == "s3" else {}))
        except Exception as exc:  # the emulator answers 409 for a bucket that exists; moto, FileExistsError
            if not (isinstance(exc, FileExistsError) or getattr(exc, "code", None) == 409):
                raise
        return f"{self.protocol}://{name}"


def _wait(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:  # answering, if not with 200
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server for {url} did not answer within {timeout:.0f} s")


@contextlib.contextmanager
def _process(argv: list[str], probe: str, env: dict[str, str] | None = None) -> Iterator[None]:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, **(env or {})})
    try:
        _wait(probe, proc)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def gcs_emulator(port: int | None = None) -> Iterator[Server]:
    """gcp-storage-emulator in memory on 127.0.0.1 (byte-exact uploads, see ``_gcs_emulator``).

    gcsfs finds it through ``STORAGE_EMULATOR_HOST``, which is set in ``env`` and in the returned
    ``storage_options`` (``endpoint_url``, anonymous token); ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``
    is needed too, as the emulator lacks the bucket-layout call that gcsfs otherwise makes.
    """
    port = port or free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"STORAGE_EMULATOR_HOST": endpoint, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    with _process([sys.executable, "-m", "imgtools.testing._gcs_emulator", str(port)], f"{endpoint}/storage/v1/b"):
        yield Server("gs", endpoint, {"endpoint_url": endpoint, "token": "anon", "project": "test"}, env)


@contextlib.contextmanager
def s3_server(port: int | None = None) -> Iterator[Server]:
    """moto's S3 server (threaded) on 127.0.0.1, with dummy credentials in ``env`` and the endpoint in
    ``storage_options``."""
    port = port or free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": S3_REGION}
    moto = os.path.join(os.path.dirname(sys.executable), "moto_server")
    argv = [moto] if os.path.exists(moto) else [sys.executable, "-m", "moto.server"]
    with _process(argv + ["-H", "127.0.0.1", "-p", str(port)], f"{endpoint}/moto-api/", env):
        yield Server("s3", endpoint, {"endpoint_url": endpoint, "key": "testing", "secret": "testing",
                                      "client_kwargs": {"region_name": S3_REGION}}, env)
