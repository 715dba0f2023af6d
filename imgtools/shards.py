"""Reading WebDataset shards back (the output of :mod:`imgtools.sinks.webdataset`) for :mod:`imgtools.store`.

Contract: one image costs its tar member, read as one byte range, once the shard's member table is known;
the table comes from the tar headers alone (the data between them is skipped, not read) and is kept per
process. A whole chunk is its shard, read in one request (kept on local disk when the output is remote, as
array chunks are). Failed and skipped rows have no member: they read as None, as image files do.
"""

from __future__ import annotations

import io
import posixpath
from typing import Any

import numpy as np
from PIL import Image

from .errors import SourceError
from .location import Location
from .sinks.webdataset import sample_key, shard_members, shard_relpath
from .store import Reader

__all__ = ["ShardReader"]

#: The extensions of a sample's image member.
_IMAGE_EXTENSIONS = ("jpg", "png", "webp")


#: Pillow modes by channels.
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def _decode(data: bytes, channels: int) -> np.ndarray:
    """An image member as (H, W, channels) uint8 (a WebP of opaque RGBA is stored as RGB: alpha 255 again)."""
    with Image.open(io.BytesIO(data)) as img:
        arr = np.array(img.convert(_MODES[channels]))
    return arr[:, :, None] if arr.ndim == 2 else arr


def _image_members(members) -> dict[str, tuple[int, int]]:
    """``key -> (offset, length)`` of each sample's image member."""
    out = {}
    for name, offset, length in members:
        key, _, ext = posixpath.basename(name).partition(".")
        if ext in _IMAGE_EXTENSIONS:
            out[key] = (offset, length)
    return out


class ShardReader(Reader):
    """The images of a WebDataset output by manifest row, decoded with Pillow to the output's channels
    (H, W, C).

    Examples
    --------
    >>> ShardReader(Location.resolve("memory://none"), np.zeros(3, bool), 2).image("8x8", 1) is None
    True
    """

    def __init__(self, location: Location, ok: np.ndarray, chunk: int, **kwargs: Any):
        super().__init__(location, chunk, len(ok), **kwargs)
        self.ok = np.asarray(ok, bool)
        self._tables: dict[tuple[str, int], dict[str, tuple[int, int]]] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_tables"] = {}
        return state

    def _shard(self, size: str, k: int) -> str:
        return shard_relpath(size, k)

    def _local_path(self, relpath: str) -> str | None:
        if self.location.local:
            return self.location.path(relpath)
        return self.disk.local(relpath) if self.disk is not None else None

    def _table(self, size: str, k: int) -> dict[str, tuple[int, int]]:
        """The image members of shard ``k`` of ``size`` (read from its headers once per process)."""
        table = self._tables.get((size, k))
        if table is None:
            relpath = self._shard(size, k)
            local = self._local_path(relpath)

            def scan():
                with (open(local, "rb") if local is not None  # noqa: SIM115 - closed by the with
                      else self.proc.fs.open(self.location.path(relpath), "rb")) as f:
                    return _image_members(shard_members(f))

            table = self._tables[(size, k)] = self._call(scan, relpath)
        return table

    def _member(self, size: str, i: int) -> tuple[str, int, int]:
        k = i // self.chunk
        try:
            offset, length = self._table(size, k)[sample_key(i)]
        except KeyError:
            raise SourceError(f"row {i} is ok in the manifest of {self.location.url!r} but not in "
                              f"{self._shard(size, k)}: the output is damaged") from None
        return self._shard(size, k), offset, length

    def image(self, size: str, i: int) -> np.ndarray | None:
        if not self.ok[i]:
            return None
        relpath, offset, length = self._member(size, i)
        local = self._local_path(relpath)
        if local is not None:
            with open(local, "rb") as f:
                f.seek(offset)
                return _decode(f.read(length), self.channels)
        path = self.location.path(relpath)
        data = self._call(lambda: self.proc.fs.cat_file(path, offset, offset + length), relpath)
        return _decode(data, self.channels)

    def chunk_images(self, size: str, k: int) -> list[np.ndarray | None]:
        relpath = self._shard(size, k)
        rows = range(k * self.chunk, k * self.chunk + self.rows_of(k))
        if not self.ok[rows.start : rows.stop].any():
            return [None] * len(rows)
        local = self._local_path(relpath)
        if local is not None:
            with open(local, "rb") as f:
                data = f.read()
        else:
            data = self._call(lambda: self.proc.fs.cat_file(self.location.path(relpath)), relpath)
            if self.disk is not None:
                self.disk.put(relpath, data)
        table = _image_members(shard_members(io.BytesIO(data)))
        self._tables[(size, k)] = table
        out: list[np.ndarray | None] = []
        for i in rows:
            if not self.ok[i]:
                out.append(None)
                continue
            offset, length = table[sample_key(i)]
            out.append(_decode(data[offset : offset + length], self.channels))
        return out
