"""glibc's allocator in worker processes: keep its adaptive mmap threshold.

Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (``distributed.nanny.pre-spawn-environ``).
Setting any malloc tunable freezes glibc's mmap threshold at 128 KiB, so every buffer of a decoded or
resized image (a 500x375 photo is 560 KB) is a fresh ``mmap``: page faults and zeroing on each
allocation, measured here at 40-60% more time per image. imgtools' own local clusters start workers
without that variable; on other clusters :func:`tune_allocator` raises the threshold inside the worker.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["WORKER_ENV_OVERRIDES", "tune_allocator"]

#: Dask config for the nanny of a local cluster: leave glibc's adaptive thresholds alone.
WORKER_ENV_OVERRIDES = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for the adaptive threshold on 64-bit
_done = False


def tune_allocator() -> bool:
    """In a process started with a fixed malloc threshold (``MALLOC_TRIM_THRESHOLD_`` set), serve
    buffers under 32 MiB from the heap and trim it only past 64 MiB free, as glibc's adaptive default
    would. Once per process; True when it changed the settings.

    Examples
    --------
    >>> isinstance(tune_allocator(), bool)
    True
    """
    global _done
    if _done or "MALLOC_TRIM_THRESHOLD_" not in os.environ or not sys.platform.startswith("linux"):
        return False
    _done = True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD))
