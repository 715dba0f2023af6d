"""The exceptions imgtools raises.

Every error is an :class:`ImgtoolsError` and also a built-in exception, so callers can catch either.
Per-image problems are never raised out of a run: they become manifest rows with a reason.
All exceptions pickle, so they cross Dask process boundaries intact.
"""

from __future__ import annotations

__all__ = [
    "ImgtoolsError",
    "ConfigError",
    "SourceError",
    "DestinationError",
    "DecodeError",
    "UnsupportedError",
    "StorageError",
]


class ImgtoolsError(ValueError):
    """Base class of every imgtools error."""


class ConfigError(ImgtoolsError):
    """A bad argument or an inconsistent combination of options; the message names the value."""


class SourceError(ImgtoolsError, FileNotFoundError):
    """The SOURCE is missing, empty, or a manifest that cannot be read."""

    # made as an OSError is: ValueError.__new__ (first in the MRO) cannot make one, which is how tblib
    # (Dask's pickling of a task's error) makes it again on the client
    __new__ = FileNotFoundError.__new__


class DestinationError(ImgtoolsError, FileExistsError):
    """DEST holds a different job (other config or inputs) and ``overwrite`` was not given."""

    __new__ = FileExistsError.__new__


class DecodeError(ImgtoolsError):
    """One image cannot be decoded; its message becomes the manifest ``error`` of that row."""


class UnsupportedError(ImgtoolsError, NotImplementedError):
    """A valid request that this output form cannot serve (e.g. a variable size into a fixed array)."""



class StorageError(ImgtoolsError, OSError):
    """Reading or writing storage kept failing. ``transient`` errors (HTTP 429/5xx, dropped connections)
    were retried with backoff first; Dask retries the task once more as a whole."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient

    def __reduce__(self):
        return type(self), (str(self), self.transient)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
