"""Locations: a URL and its ``storage_options`` resolved once, at the edge, into a filesystem and a root
path that the stages take. A location pickles (fsspec filesystems do), so it travels to Dask workers and
PyTorch DataLoader workers as it is; nothing below the edge asks which backend it is on again."""

from __future__ import annotations

import dataclasses
import posixpath
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

__all__ = ["Location"]


@dataclasses.dataclass(frozen=True)
class Location:
    """A folder on some filesystem: ``fs`` and ``root`` (without the protocol), and the ``url`` it came from.

    Examples
    --------
    >>> loc = Location.resolve("memory://imgtools-doc/out")
    >>> loc.path("64x64", "part-00000.npy"), loc.local
    ('/imgtools-doc/out/64x64/part-00000.npy', False)
    """

    url: str
    fs: AbstractFileSystem
    root: str
    storage_options: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)

    @classmethod
    def resolve(cls, url: str, storage_options: dict[str, Any] | None = None) -> Location:
        """Resolve ``url`` with fsspec, once."""
        options = dict(storage_options or {})
        fs, root = url_to_fs(str(url), **options)
        return cls(url=str(url), fs=fs, root=root.rstrip("/") or root, storage_options=options)

    def path(self, *parts: str) -> str:
        """The path of ``parts`` under the root, as the filesystem names it."""
        return posixpath.join(self.root, *parts)

    @property
    def local(self) -> bool:
        """Whether the files are on this machine's disk (memory-mappable, no requests)."""
        return isinstance(self.fs, LocalFileSystem)
