"""A time limit on each image's work: an image whose decode and resize run past it is given up on.

Python cannot stop a thread, and an image decoder stuck in a loop (Pillow and libtiff have had such bugs)
never returns to let it. So the per-image work runs where it can be left behind:

- :func:`run_watched` runs one unit of work (a chunk) in a daemon thread of its own, the *work thread*,
  while the calling thread waits on it and watches the clock. The work marks each image it starts and
  finishes on a :class:`Watch` (a clock read, two attribute writes and an uncontended lock: about a
  microsecond an image, against the 250 us of the smallest image; a work thread is started a chunk).
- When the image in progress has run past the limit, the waiting thread calls ``on_stuck`` with a
  :class:`Stuck` (which image, how long). ``on_stuck`` records the image as failed (durably, in the
  caller's ledger) and either ends the process (a Dask worker with a nanny, which starts it afresh: the
  stuck thread's CPU and memory go with it) or returns. When it returns, the work thread is *abandoned*:
  it may never come back, and if it does, its next :meth:`Watch.end` raises :class:`Abandoned`, so it
  stops there and writes nothing. The work then runs again in a fresh thread; it reads the record and
  takes the stuck image as failed without touching it, so each stuck image costs one limit's wait.

Abandoning, not killing, is the choice where the process must live on (a run in the caller's own
process, a worker without a nanny): Pillow's C decoders release the GIL while they decode, so an
abandoned decoder costs at most a core until the process ends, and nothing of its result is ever used.

Nothing here knows of Dask, storage or images: the work, its records and the way out are the caller's.

Examples
--------
>>> def work(watch):
...     watch.begin("a.png")
...     try:
...         return "done"
...     finally:
...         watch.end()
>>> run_watched(work, 5.0, on_stuck=print)
'done'
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Watch", "Stuck", "Abandoned", "run_watched", "timed_out_reason"]

T = TypeVar("T")

#: How often the waiting thread looks at the clock: at most this, and ten times an image's limit.
_MAX_POLL = 1.0


def timed_out_reason(seconds: float) -> str:
    """The failure reason of an image that ran past ``seconds``.

    Examples
    --------
    >>> timed_out_reason(120.0), timed_out_reason(1.5)
    ('timed out after 120 s', 'timed out after 1.5 s')
    """
    return f"timed out after {seconds:g} s"


class Abandoned(Exception):
    """Raised in a work thread that was left behind, when it comes back from a stuck image."""


@dataclasses.dataclass(frozen=True)
class Stuck:
    """An image past its limit: its ``key`` (what the work named it by) and the ``seconds`` it has run."""

    key: str
    seconds: float


class Watch:
    """What one work thread is doing: the image it is on (its key) and since when.

    The work calls :meth:`begin` before an image and :meth:`end` after it (in a ``finally``); the
    waiting thread calls :meth:`abandon_if_overdue`. :meth:`end` and the abandoning hold one lock, so an
    image that finishes just as it is given up on is either finished (and kept) or abandoned, never both.
    """

    __slots__ = ("limit", "_key", "_since", "_lock", "abandoned")

    def __init__(self, limit: float):
        self.limit = limit
        self._key: str | None = None
        self._since = 0.0
        self._lock = threading.Lock()
        self.abandoned = False

    def begin(self, key: str) -> None:
        """The work starts the image named ``key``."""
        self._since = time.monotonic()
        self._key = key

    def end(self) -> None:
        """The work is done with its image.

        Raises
        ------
        Abandoned
            The image ran past its limit and the work was left behind: stop, write nothing.
        """
        with self._lock:
            self._key = None
            if self.abandoned:
                raise Abandoned

    def abandon_if_overdue(self) -> Stuck | None:
        """When the image in progress has run past the limit: leave the work behind (its next
        :meth:`end` raises :class:`Abandoned`) and return that image; else None."""
        with self._lock:
            key = self._key
            if key is None:
                return None
            elapsed = time.monotonic() - self._since
            if elapsed <= self.limit:
                return None
            self.abandoned = True
            return Stuck(key, elapsed)


class _Outcome(Generic[T]):
    __slots__ = ("value", "error")

    def __init__(self) -> None:
        self.value: T | None = None
        self.error: BaseException | None = None


def _work_thread(work: Callable[[Watch], T], watch: Watch, out: _Outcome[T]) -> None:
    try:
        out.value = work(watch)
    except Abandoned:
        pass
    except BaseException as exc:  # handed to the waiting thread, which raises it
        out.error = exc


def run_watched(work: Callable[[Watch], T], limit: float, on_stuck: Callable[[Stuck], object]) -> T:
    """Run ``work(watch)`` in a work thread while this thread watches each image's time.

    Parameters
    ----------
    work : callable
        Takes a :class:`Watch` and marks each image on it (``begin(key)`` ... ``end()`` in a ``finally``).
        It may run more than once: after an image got stuck, it runs again from the start, and must
        then take the images ``on_stuck`` recorded as failed instead of processing them.
    limit : float
        Seconds an image may take.
    on_stuck : callable
        Called in this thread with the :class:`Stuck` image: records it (it may end the process instead
        of returning). Then ``work`` runs again in a fresh thread.

    Returns
    -------
    What ``work`` returned; what it raised is raised here.

    Raises
    ------
    RuntimeError
        The same image got stuck twice: ``work`` did not take the record of the first time.

    Examples
    --------
    >>> failed = set()
    >>> def work(watch):
    ...     for key in ["a", "slow", "b"]:
    ...         if key in failed:
    ...             continue
    ...         watch.begin(key)
    ...         try:
    ...             time.sleep(0.3 if key == "slow" else 0)
    ...         finally:
    ...             watch.end()
    ...     return sorted(failed)
    >>> run_watched(work, 0.1, on_stuck=lambda stuck: failed.add(stuck.key))
    ['slow']
    """
    poll = min(_MAX_POLL, limit / 10)
    given_up: set[str] = set()
    while True:
        watch, out = Watch(limit), _Outcome[T]()
        thread = threading.Thread(target=_work_thread, args=(work, watch, out), name="imgtools-image-work",
                                  daemon=True)
        thread.start()
        stuck = None
        while stuck is None:
            thread.join(poll)
            if not thread.is_alive():
                if out.error is not None:
                    raise out.error
                return out.value  # type: ignore[return-value]
            stuck = watch.abandon_if_overdue()  # should it ever come back, it stops at its next end()
        if stuck.key in given_up:
            raise RuntimeError(f"internal error: image {stuck.key!r} was stuck again after it was recorded")
        given_up.add(stuck.key)
        on_stuck(stuck)
