"""Get or make a Dask client, and a dashboard link that works where the notebook or shell runs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from .errors import ConfigError

__all__ = ["get_client", "client_for_run", "current_client", "dashboard_link"]


def dashboard_link(client) -> str | None:
    """The dashboard URL of ``client``; behind a Jupyter proxy (Binder, JupyterHub) the proxied one.

    Set ``DASK_DISTRIBUTED__DASHBOARD__LINK`` (Binder's ``start`` does) to change the template.
    """
    try:
        return client.dashboard_link
    except Exception:  # a scheduler without the dashboard (bokeh missing)
        return None


def get_client(scheduler: str | None = None, workers: int | None = None):
    """A Dask client: connect to ``scheduler`` (or ``$DASK_SCHEDULER_ADDRESS``), or start a local cluster
    with ``workers`` single-threaded worker processes (default: one per core).

    Examples
    --------
    >>> client = get_client(workers=2)           # doctest: +SKIP
    >>> print(dashboard_link(client))            # doctest: +SKIP
    """
    from distributed import Client, LocalCluster

    address = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        try:
            return Client(address, timeout="20s")
        except OSError as exc:
            raise ConfigError(f"scheduler {address!r} cannot be reached: {exc}") from None
    n = workers if workers is not None else (os.cpu_count() or 1)
    if n < 1:
        raise ConfigError(f"workers {n!r} must be at least 1")
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":8787")
    return Client(cluster)


def current_client():
    """The client this process already uses (``distributed.default_client``), or None."""
    from distributed import default_client

    try:
        return default_client()
    except ValueError:  # no client yet
        return None


@contextlib.contextmanager
def client_for_run(client=None, scheduler: str | None = None, workers: int | None = None) -> Iterator:
    """Use ``client`` if given, else the current default client, else one made by :func:`get_client`
    (closed, with its cluster, when the run ends)."""
    if client is not None:
        yield client
        return
    current = current_client() if scheduler is None and workers is None else None
    if current is not None:
        yield current
        return
    made = get_client(scheduler, workers)
    try:
        yield made
    finally:
        cluster = made.cluster
        made.close()
        if cluster is not None:
            cluster.close()
