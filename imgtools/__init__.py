"""imgtools: presize image datasets for machine learning, at any scale, from a notebook or a shell.

The names below are imported on first use (PEP 562), so ``import imgtools`` and the ``imgtools`` command
start without pandas, zarr, Dask or Numba; each comes in with the first function that needs it.

Examples
--------
>>> import imgtools
>>> report = imgtools.presize("photos/", "photos.zarr", sizes=[64, 224], mode="crop")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import types
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .config import OutputFormat, PresizeConfig, ResizeMode, Size
    from .errors import ConfigError, DecodeError, DestinationError, ImgtoolsError, SourceError, UnsupportedError
    from .inspect import InspectReport, inspect
    from .pipeline import PresizeReport, dry_run, presize
    from .plan import RunPlan
    from .readers import Dataset, open  # noqa: A004
    from .spark import from_array, read_images, to_array

__all__ = [
    "__version__",
    "presize",
    "dry_run",
    "RunPlan",
    "inspect",
    "InspectReport",
    "open",
    "Dataset",
    "read_images",
    "to_array",
    "from_array",
    "PresizeReport",
    "PresizeConfig",
    "ResizeMode",
    "OutputFormat",
    "Size",
    "ImgtoolsError",
    "ConfigError",
    "SourceError",
    "DestinationError",
    "DecodeError",
    "UnsupportedError",
]

#: public name -> the submodule that defines it
_HOME = {
    "presize": "pipeline", "PresizeReport": "pipeline", "dry_run": "pipeline", "RunPlan": "plan",
    "inspect": "inspect", "InspectReport": "inspect",
    "open": "readers", "Dataset": "readers",
    "read_images": "spark", "to_array": "spark", "from_array": "spark",
    "PresizeConfig": "config", "ResizeMode": "config", "OutputFormat": "config", "Size": "config",
    "ImgtoolsError": "errors", "ConfigError": "errors", "SourceError": "errors", "DestinationError": "errors",
    "DecodeError": "errors", "UnsupportedError": "errors",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """``imgtools.inspect`` is the function, as when it was imported eagerly: importing the submodule of
    that name (``from imgtools.inspect import ...``) must not put the module in its place."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _HOME.get(name) == name:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def _writable(path: str) -> bool:
    """True when ``path`` is (or can be made) a folder this process can create files in; Numba's own test."""
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return False
    return True


def _numba_cache_dir() -> str | None:
    """Where Numba caches the kernels, decided before any of them is made: ``$NUMBA_CACHE_DIR`` when set;
    else None (Numba's default, the package's ``__pycache__``) when that is writable; else, for a read-only
    site-packages, ``$NUMBA_CACHE_DIR`` is set to ``$XDG_CACHE_HOME/imgtools/numba`` (``~/.cache``) or, when
    that is not writable either, to ``imgtools-numba-<uid>`` in the temp dir; worker processes inherit it.
    (Left alone, Numba would fall back to ``~/.cache/numba`` and, without it, fail at import.)

    Examples
    --------
    >>> _numba_cache_dir() == (os.environ.get("NUMBA_CACHE_DIR") or None)
    True
    """
    chosen = os.environ.get("NUMBA_CACHE_DIR")
    if chosen:
        return chosen
    if _writable(os.path.join(os.path.dirname(os.path.abspath(__file__)), "__pycache__")):
        return None
    user = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "imgtools", "numba")
    getuid = getattr(os, "getuid", None)
    temp = os.path.join(tempfile.gettempdir(), f"imgtools-numba-{getuid() if getuid else 'user'}")
    for candidate in (user, temp):
        if _writable(candidate):
            os.environ["NUMBA_CACHE_DIR"] = candidate
            if "numba" in sys.modules:  # already imported: its config read the environment then
                sys.modules["numba"].config.CACHE_DIR = candidate
            return candidate
    return None


_numba_cache_dir()
