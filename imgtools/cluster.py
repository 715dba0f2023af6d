"""Get or make a Dask client, and a dashboard link that works where the notebook or shell runs."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import urllib.parse
from collections.abc import Iterator

from .errors import ConfigError
from .memory import WORKER_ENV_OVERRIDES

__all__ = ["get_client", "client_for_run", "current_client", "dashboard_link"]


_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "0.0.0.0", "::1"})


def dashboard_link(client) -> str | None:
    """The dashboard URL of ``client`` as the user's browser can reach it: behind a JupyterHub or Binder
    proxy (``JUPYTERHUB_SERVICE_PREFIX``, jupyter-server-proxy) ``<prefix>/proxy/<port>/status``; in Colab
    the kernel's proxied URL; elsewhere the scheduler's own link.

    Examples
    --------
    >>> dashboard_link(client)       # doctest: +SKIP
    '/user/ada/proxy/8787/status'
    """
    try:
        link = client.dashboard_link
    except Exception:  # a scheduler without the dashboard (bokeh missing)
        return None
    parsed = urllib.parse.urlparse(link)
    port = parsed.port if parsed.hostname in _LOCAL_HOSTS | {socket.gethostname()} else None  # remote: as it is
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX")
    if prefix and port:
        return f"{prefix.rstrip('/')}/proxy/{port}/status"
    if "google.colab" in sys.modules and port:  # Colab serves kernel ports through its own proxy
        try:
            from google.colab.output import eval_js  # type: ignore[import-not-found]

            return eval_js(f"google.colab.kernel.proxyPort({port})").rstrip("/") + "/status"
        except Exception:
            return link
    return link


def get_client(scheduler: str | None = None, workers: int | None = None, show: bool = False):
    """A Dask client: connect to ``scheduler`` (or ``$DASK_SCHEDULER_ADDRESS``), or start a local cluster
    with ``workers`` single-threaded worker processes (default: one per core). ``show`` prints the
    dashboard link (see :func:`dashboard_link`): the one call a notebook needs.

    Examples
    --------
    >>> client = get_client(workers=2)           # doctest: +SKIP
    >>> print(dashboard_link(client))            # doctest: +SKIP
    """
    from distributed import Client, LocalCluster

    address = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        try:
            client = Client(address, timeout="20s")
        except (OSError, ValueError, TypeError) as exc:  # unreachable, or not an address at all
            raise ConfigError(f"scheduler {address!r} cannot be reached: {exc}") from None
        if show:
            print(f"dashboard: {dashboard_link(client)}")
        return client
    n = workers if workers is not None else (os.cpu_count() or 1)
    if n < 1:
        raise ConfigError(f"workers {n!r} must be at least 1")
    import dask

    with dask.config.set(WORKER_ENV_OVERRIDES):  # and so the nanny leaves this process's environment alone
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":8787")
    client = Client(cluster)
    if show:
        print(f"dashboard: {dashboard_link(client)}")
    return client


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
