"""Locations: a URL and its ``storage_options`` resolved once, at the edge, into a filesystem and a root
path that the stages take. A location pickles (fsspec filesystems do), so it travels to Dask workers and
PyTorch DataLoader workers as it is; nothing below the edge asks which backend it is on again.

Inputs are many URLs, not one folder (a manifest may name files on several filesystems): a
:class:`Resolver` turns each into a filesystem and a path, making each filesystem once per protocol.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

__all__ = ["Location", "Resolver"]


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


class Resolver:
    """URLs -> (filesystem, path) with one set of ``storage_options``: the filesystem of each protocol is
    made once (fsspec's ``url_to_fs`` costs some 70 us a call, a cost per image otherwise), later URLs of
    that protocol only have their protocol stripped. Chained URLs (``simplecache::gs://...``) and URLs
    that carry filesystem options themselves go through ``url_to_fs`` every time. A resolver pickles
    without its filesystems; each process makes its own.

    Examples
    --------
    >>> resolve = Resolver()
    >>> fs, path = resolve("memory://imgtools-doc/a.jpg")
    >>> path, resolve("memory://imgtools-doc/b.jpg")[0] is fs
    ('/imgtools-doc/a.jpg', True)
    """

    def __init__(self, storage_options: dict[str, Any] | None = None) -> None:
        self.storage_options: dict[str, Any] = dict(storage_options or {})
        self._made: dict[str, AbstractFileSystem] = {}

    @property
    def key(self) -> str:
        """A text that is equal for resolvers with equal options (for caches keyed by it)."""
        return json.dumps(self.storage_options, sort_keys=True, default=repr)

    def __call__(self, url: str) -> tuple[AbstractFileSystem, str]:
        url = str(url)
        protocol = url.split("://", 1)[0] if "://" in url else "file"
        fs = self._made.get(protocol)
        if fs is None or "::" in url or type(fs)._get_kwargs_from_urls(url):
            fs, path = url_to_fs(url, **self.storage_options)
            if "::" not in url:
                self._made.setdefault(protocol, fs)
            return fs, path
        return fs, fs._strip_protocol(url)

    def __getstate__(self) -> dict[str, Any]:
        return {"storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.storage_options, self._made = state["storage_options"], {}

    def __repr__(self) -> str:
        return f"Resolver({self.storage_options!r})"
