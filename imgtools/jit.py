"""How imgtools makes Numba functions: on their first call, cached on disk, and without SciPy's linear algebra.

Importing this module imports no Numba. :func:`jit` makes a function a Numba function on its first call,
which compiles it for the argument types of that call or loads it from the on-disk cache (``cache=True``),
so a process pays only for the kernels it runs, and a machine compiles each of them once. Where that cache
lives is decided when ``imgtools`` is imported (``imgtools._numba_cache_dir``): the package's
``__pycache__`` when it is writable (Numba's default), else ``$NUMBA_CACHE_DIR`` pointed at
``$XDG_CACHE_HOME/imgtools/numba`` (``~/.cache``), or at a per-user folder in the temp dir, so a read-only
site-packages still compiles once. :func:`import_numba` is how every module here imports Numba (see it for
the 0.2 s it saves each process).
"""

from __future__ import annotations

import functools
import importlib.util
import pathlib
import sys
import threading
from collections.abc import Callable
from types import ModuleType

__all__ = ["jit", "import_numba"]


def import_numba() -> ModuleType:
    """Numba, imported without its import of SciPy's linear algebra (0.2 s of every process's first kernel).

    On the first compile or cache load Numba imports ``numba.np.arraymath``, which imports
    ``scipy.linalg.cython_blas`` (all of ``scipy.linalg``, when SciPy is installed) only to note whether
    BLAS is there; none of imgtools' kernels uses BLAS. This imports that module first with the check
    deferred and records the same answer from whether SciPy's ``cython_blas`` is installed; functions that
    do use BLAS (``np.dot`` in a jitted function) still import SciPy, and run Numba's check, when they are
    compiled, as before. Thread-safe; a no-op once ``numba.np.arraymath`` is imported.

    Examples
    --------
    >>> import_numba().__name__
    'numba'
    """
    import numba

    with _NUMBA_IMPORT:  # the patch below is process-wide: one thread at a time, and only once
        if "numba.np.arraymath" in sys.modules:
            return numba
        try:
            from numba.np import linalg
        except ImportError:  # pragma: no cover - another Numba's layout: its own import, as it is
            return numba
        check = linalg.ensure_blas
        linalg.ensure_blas = _deferred
        _deferred.called = False
        try:
            from numba.np import arraymath
        finally:
            linalg.ensure_blas = check
        if getattr(arraymath, "ensure_blas", None) is _deferred:
            arraymath.ensure_blas = check
        if _deferred.called and hasattr(arraymath, "_HAVE_BLAS"):  # it asked while importing: our answer
            arraymath._HAVE_BLAS = _scipy_blas_installed()
    return numba


_NUMBA_IMPORT = threading.Lock()


def _deferred() -> None:
    """Stands in for Numba's BLAS check while ``numba.np.arraymath`` is imported (see :func:`import_numba`)."""
    _deferred.called = True


_deferred.called = False


def _scipy_blas_installed() -> bool:
    """Whether SciPy's ``scipy.linalg.cython_blas`` is installed, found without importing ``scipy.linalg``
    (what Numba's own check imports)."""
    spec = importlib.util.find_spec("scipy")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    return any(next(pathlib.Path(folder, "linalg").glob("cython_blas*"), None) is not None for folder in folders)


def jit(func: Callable | None = None, **options) -> Callable:
    """``numba.njit(cache=True, nogil=True, **options)``, applied on the function's first call, not at import.

    The stand-in replaces itself in its module's namespace with the Numba dispatcher on that call, so
    calls from module code reach the dispatcher directly from then on; a reference taken before keeps
    working through the stand-in (``.dispatcher`` holds the dispatcher once made).

    Examples
    --------
    >>> import numpy as np
    >>> import imgtools.kernels as k
    >>> _ = k.u16_to_u8(np.zeros(1, np.uint16))  # the first call made the dispatcher
    >>> type(k._u16_to_u8).__name__
    'CPUDispatcher'
    """
    if func is None:
        return functools.partial(jit, **options)
    namespace = sys.modules[func.__module__].__dict__ if func.__module__ in sys.modules else None

    @functools.wraps(func)
    def first_call(*args):
        dispatcher = first_call.dispatcher
        if dispatcher is None:
            numba = import_numba()
            dispatcher = first_call.dispatcher = numba.njit(cache=True, nogil=True, **options)(func)
            if namespace is not None and namespace.get(func.__name__) is first_call:
                namespace[func.__name__] = dispatcher
        return dispatcher(*args)

    first_call.dispatcher = None
    return first_call
