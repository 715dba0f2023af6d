"""The local clusters imgtools starts, and the preload their workers run.

:func:`start_local_cluster` starts a LocalCluster of single-threaded worker processes with nannies, Dask's
dashboard where someone is shown its link, and this module as the workers' preload (:func:`dask_setup`):
each worker imports the per-image code and loads (or compiles) the resampling kernels in a thread while
the cluster is still starting and the client plans, and leaves without the interpreter's teardown once
closed. An :class:`EarlyCluster` starts such a cluster in a thread before the job is planned (the CLI's
``--workers N``), so that its start-up overlaps the client's imports and listing.

Which cluster a job runs on is :mod:`imgtools.cluster`'s decision; this module only starts and closes them.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import sys
import threading
from typing import TYPE_CHECKING, Self

from .errors import ConfigError
from .memory import WORKER_ENV_OVERRIDES

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["start_local_cluster", "close_local_cluster", "EarlyCluster", "dask_setup", "dask_teardown"]

#: The dashboard port of the local clusters imgtools starts, when it is free (Dask's default).
DASHBOARD_PORT = 8787


def _dashboard_port() -> str:
    """Dask's usual dashboard port, ``:8787``, when it is free, else any free one: a second run beside a
    first gets its own dashboard (whose link is printed) without Dask's warning on stderr."""
    with socket.socket() as probe:
        try:
            probe.bind(("", DASHBOARD_PORT))
        except OSError:
            return ":0"
    return f":{DASHBOARD_PORT}"


def start_local_cluster(workers: int | None, dashboard: bool = True) -> Client:
    """A client of a new LocalCluster of ``workers`` single-threaded worker processes (default: one per core),
    with Dask's dashboard unless ``dashboard`` is false (its bokeh server costs the client ~0.45 s of CPU to
    start: worth it only where someone is shown the link).

    Examples
    --------
    >>> client = start_local_cluster(2, dashboard=False)   # doctest: +SKIP
    >>> close_local_cluster(client)                        # doctest: +SKIP
    """
    from distributed import Client, LocalCluster

    n = workers if workers is not None else (os.cpu_count() or 1)
    if n < 1:
        raise ConfigError(f"workers {n!r} must be at least 1")
    import dask

    with dask.config.set(WORKER_ENV_OVERRIDES):  # and so the nanny leaves this process's environment alone
        # the scheduler's HTTP server (health, metrics) runs either way: on Dask's usual port when it serves the
        # dashboard and that port is free, else on any free one
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=_dashboard_port() if dashboard else ":0",
                               scheduler_kwargs=None if dashboard else {"dashboard": False},
                               preload=[__name__])  # dask_setup below, in each worker
    return Client(cluster)


def close_local_cluster(client: Client) -> None:
    """Close a client of :func:`start_local_cluster` and its cluster."""
    cluster = client.cluster
    client.close()
    if cluster is not None:
        cluster.close()


class EarlyCluster:
    """A local cluster of ``workers`` processes, started in a thread from now on, for a job that the caller
    has yet to plan: the CLI starts it before it imports the pipeline and lists SOURCE, so that the
    cluster's start-up overlaps the client's own (1-2 s). :meth:`client` waits for it (and raises what
    starting it raised); :meth:`close` closes it, waiting for a start that is under way. ``dashboard=False``
    starts it without Dask's dashboard (a run from the shell with ``--quiet``: no link is printed).

    Examples
    --------
    >>> early = EarlyCluster(2)                      # doctest: +SKIP
    >>> import imgtools.pipeline                     # doctest: +SKIP
    >>> report = imgtools.pipeline.presize("photos/", "photos.zarr", client=early.client())  # doctest: +SKIP
    >>> early.close()                                # doctest: +SKIP
    """

    def __init__(self, workers: int, dashboard: bool = True) -> None:
        if workers < 1:
            raise ConfigError(f"workers {workers!r} must be at least 1")
        self._done = threading.Event()
        self._client: Client | None = None
        self._error: BaseException | None = None
        threading.Thread(target=self._start, args=(workers, dashboard), name="imgtools-early-cluster",
                         daemon=True).start()

    def _start(self, workers: int, dashboard: bool) -> None:
        try:
            self._client = start_local_cluster(workers, dashboard)
        except BaseException as exc:  # handed to the caller of client()
            self._error = exc
        finally:
            self._done.set()

    def client(self) -> Client:
        """The cluster's client, once it has started."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._client is not None
        return self._client

    def close(self) -> None:
        """Close the cluster (after its start, if that is still under way)."""
        self._done.wait()
        if self._client is not None:
            close_local_cluster(self._client)
            self._client = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_closed = threading.Event()


def _warm() -> None:
    """Import what a presize task unpickles and run the resampler once on a tiny image: Numba's start-up
    (about 0.6 s a process) and the kernels' loading, or their compiling on a machine's first run, happen
    here, while the cluster starts, not in the first task. The signatures are those of every real image."""
    try:
        import numpy as np

        from . import pipeline  # noqa: F401  (what presize's tasks unpickle)
        from .config import PresizeConfig
        from .resize import resize_all

        resize_all(np.zeros((8, 8, 3), np.uint8), PresizeConfig.build(sizes=[4]), (8, 8))
    except Exception:  # pragma: no cover - only ever a head start: the first task does the same and reports
        logging.getLogger(__name__).debug("warming the worker failed", exc_info=True)


def _exit_without_teardown() -> None:
    """At exit of a worker that closed normally: run the other exit handlers, flush, and leave without the
    interpreter's teardown of its modules (1.5-4 s for a worker that loaded pandas, zarr and Numba, which
    the nanny, and so closing the cluster, waits for)."""
    if not _closed.is_set():  # it died or failed: the usual exit, with its exit code
        return
    atexit.unregister(_exit_without_teardown)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def dask_setup(worker) -> None:
    """Dask worker preload of imgtools' local clusters (``preload=["imgtools.localcluster"]``): start warming
    the process (:func:`_warm`, in a thread: the worker registers meanwhile) and make its exit quick."""
    atexit.register(_exit_without_teardown)
    threading.Thread(target=_warm, name="imgtools-warm", daemon=True).start()


def dask_teardown(worker) -> None:
    """The worker is closing normally: its process may then leave without the interpreter's teardown."""
    _closed.set()
