"""Where a job runs (this process, a given or current client, a named scheduler, a new local cluster), and
a dashboard link that works where the notebook or shell runs.

Every entry point (``presize``, ``derive``, ``inspect``) decides with :func:`where_to_run`; this module is
the only one that reads ``$DASK_SCHEDULER_ADDRESS`` (:func:`scheduler_address`).

The local clusters themselves (their start, their workers' preload, :class:`EarlyCluster`) are
:mod:`imgtools.localcluster`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import socket
import sys
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Self

from .errors import ConfigError
from .localcluster import EarlyCluster, close_local_cluster, start_local_cluster

if TYPE_CHECKING:
    from distributed import Client

    from .folders import Mapper

__all__ = ["where_to_run", "Placement", "EarlyCluster", "get_client", "current_client", "scheduler_address",
           "dashboard_link", "map_on_workers"]

SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"
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


def scheduler_address(scheduler: str | None = None) -> str | None:
    """``scheduler`` if given, else ``$DASK_SCHEDULER_ADDRESS``, else None: the one place imgtools reads
    that variable.

    Examples
    --------
    >>> scheduler_address("tcp://10.0.0.5:8786")
    'tcp://10.0.0.5:8786'
    """
    return scheduler or os.environ.get(SCHEDULER_ENV) or None


def _connect(address: str, default: bool = True) -> Client:
    """A client of the scheduler at ``address`` (the process's default client unless ``default`` is False);
    ConfigError naming it when it cannot be reached."""
    from distributed import Client
    from distributed.comm import get_address_host_port
    from distributed.comm.addressing import normalize_address

    try:  # a malformed address is refused before a Client exists: one that fails inside its start-up leaves
        get_address_host_port(normalize_address(address))  # a half-made client whose __del__ blocks 40 s at exit
        return Client(address, timeout="20s", set_as_default=default)
    except (OSError, ValueError, TypeError) as exc:  # unreachable, or not an address at all
        raise ConfigError(f"scheduler {address!r} cannot be reached: {exc}") from None


def get_client(scheduler: str | None = None, workers: int | None = None, show: bool = False) -> Client:
    """A Dask client: connect to ``scheduler`` (or ``$DASK_SCHEDULER_ADDRESS``), or start a local cluster
    with ``workers`` single-threaded worker processes (default: one per core). ``show`` prints the
    dashboard link (see :func:`dashboard_link`): the one call a notebook needs.

    Examples
    --------
    >>> client = get_client(workers=2)           # doctest: +SKIP
    >>> print(dashboard_link(client))            # doctest: +SKIP
    """
    address = scheduler_address(scheduler)
    client = _connect(address) if address else start_local_cluster(workers)
    if show:
        print(f"dashboard: {dashboard_link(client)}")
    return client


def current_client() -> Client | None:
    """The client this process already uses (``distributed.default_client``), or None."""
    from distributed import default_client

    try:
        return default_client()
    except ValueError:  # no client yet
        return None


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a job runs, as :func:`where_to_run` decided it.

    Attributes
    ----------
    existing : distributed.Client, EarlyCluster or None
        The client every job runs on: the one given (an :class:`EarlyCluster` is waited for by the first
        job that needs it), one connected to a named scheduler, or the current default client. None:
        decided per job by :meth:`client`.
    workers : int or None
        Without ``existing``: ``0`` runs in this process; ``N`` starts a local cluster of N processes for
        each job; None one of one process per core, except that a job of one task runs in this process.
    owned : bool
        ``existing`` was connected by :func:`where_to_run`: :meth:`close` (or leaving a ``with``) closes it.

    Examples
    --------
    >>> with where_to_run(workers=0) as where, where.client(tasks=10) as client:
    ...     print(client)            # None: run the tasks in this process, without Dask
    None
    """

    existing: Client | EarlyCluster | None = None
    workers: int | None = None
    owned: bool = False

    def mapper(self, name: str = "imgtools-map", this_disk: bool = False) -> Mapper | None:
        """A :data:`~imgtools.folders.Mapper` over the workers of ``existing`` (an :class:`EarlyCluster`
        is waited for when the map is called), for work a job does before its tasks; None where the job
        has no cluster yet, or where the work reads this machine's disk (``this_disk``) and the cluster's
        scheduler is on another host (the caller maps in this process). ``name`` begins the keys of its
        tasks on the dashboard.

        Examples
        --------
        >>> print(where_to_run(workers=0).mapper())
        None
        """
        if self.existing is None or (this_disk and not _on_this_host(self.existing)):
            return None
        return functools.partial(map_on_workers, self.existing, name=name)

    @contextlib.contextmanager
    def client(self, tasks: int) -> Iterator[Client | None]:
        """The client to run a job of ``tasks`` tasks on, or None to run it in this process.

        A local cluster started for the job is closed when the ``with`` block ends; ``existing`` is not.

        Parameters
        ----------
        tasks : int
            Tasks the job has (chunks, partitions). Without ``existing`` and with the default ``workers``,
            a job of one task runs in this process, as starting a cluster would take longer than the work.
            A job of none runs nowhere: None.

        Yields
        ------
        distributed.Client or None

        Examples
        --------
        >>> with Placement(workers=None).client(tasks=1) as client:
        ...     print(client)
        None
        """
        if tasks >= 1 and self.existing is not None:
            yield self.existing.client() if isinstance(self.existing, EarlyCluster) else self.existing
            return
        if tasks < 1 or self.workers == 0 or (self.workers is None and tasks == 1):
            yield None
            return
        made = start_local_cluster(self.workers)
        try:
            yield made
        finally:
            close_local_cluster(made)

    def close(self) -> None:
        """Close ``existing`` if :func:`where_to_run` connected it (a named scheduler); else nothing."""
        if self.owned and self.existing is not None:
            self.existing.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _on_this_host(client: Client | EarlyCluster) -> bool:
    """Whether the scheduler of ``client`` runs on this machine (its workers then see this disk, as those
    of the local clusters imgtools starts do)."""
    if isinstance(client, EarlyCluster):
        return True
    try:
        host = urllib.parse.urlparse(client.scheduler.address).hostname
    except Exception:
        return False
    return host in _LOCAL_HOSTS | {socket.gethostname()}


def map_on_workers(client: Client | EarlyCluster, work: Callable[[Any], Any], items: Sequence[Any],
                   name: str = "imgtools-map") -> list:
    """``[work(item) for item in items]`` computed on ``client``'s workers, one task an item, in order. A
    worker lost on the way loses nothing: the scheduler runs its tasks again elsewhere (``work`` must be
    idempotent); an error ``work`` raises is raised here as it was, and the other tasks are cancelled.

    Examples
    --------
    >>> map_on_workers(client, len, ["a", "bc"])      # doctest: +SKIP
    [1, 2]
    """
    if isinstance(client, EarlyCluster):
        client = client.client()
    token = uuid.uuid4().hex[:12]
    futures = client.map(work, list(items), key=[f"{name}-{token}-{k}" for k in range(len(items))], pure=False)
    try:
        return client.gather(futures)
    finally:
        client.cancel(futures)


def where_to_run(client: Any = None, scheduler: str | None = None, workers: int | None = None) -> Placement:
    """Decide where a job runs; the one rule every entry point follows.

    In order: ``client`` if given; else a named scheduler (``scheduler``, or ``$DASK_SCHEDULER_ADDRESS``
    when no client is current and ``workers`` is None), connected to here and now, so that a bad address
    fails before anything is written; else ``workers=0``: this process, without Dask; else the current
    default client when ``workers`` is None; else, per job (:meth:`Placement.client`), this process for a
    job of one task when ``workers`` is None, or a new local cluster of ``workers`` processes (one per core
    by default) closed at the end of the job.

    Parameters
    ----------
    client : distributed.Client or EarlyCluster, optional
        Run on this client (it is not closed).
    scheduler : str, optional
        Address of a running Dask scheduler (then leave ``workers`` out).
    workers : int, optional
        Worker processes of a local cluster; ``0`` runs in this process.

    Returns
    -------
    Placement
        Use it in a ``with`` block: a scheduler it connected to is closed at the end.

    Raises
    ------
    ConfigError
        ``workers`` below 0, both ``scheduler`` and ``workers``, or a scheduler that cannot be reached.

    Examples
    --------
    >>> where_to_run(workers=0)
    Placement(existing=None, workers=0, owned=False)
    >>> with (where_to_run(scheduler="tcp://10.0.0.5:8786") as where,  # doctest: +SKIP
    ...       where.client(len(chunks)) as client):
    ...     results = [work(c) for c in chunks] if client is None else client.gather(client.map(work, chunks))
    """
    if workers is not None and workers < 0:
        raise ConfigError(f"workers {workers!r} must be 0 (in this process) or more")
    if scheduler is not None and workers is not None:
        raise ConfigError(f"give a scheduler ({scheduler!r}) or workers ({workers!r}), not both")
    if client is not None:
        return Placement(existing=client)
    current = current_client() if workers is None else None
    named = scheduler or (scheduler_address() if workers is None and current is None else None)
    if named:
        # reached before DEST is touched; used by name only, so the caller's default client stays the default
        return Placement(existing=_connect(named, default=False), owned=True)
    if workers == 0:
        return Placement(workers=0)
    if current is not None:
        return Placement(existing=current)
    return Placement(workers=workers)
