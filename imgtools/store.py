"""Reading a finished output's pixels back: one image, a few rows, or one whole chunk, for every layout.

Contract:

- **One image costs about one image.** Arrays stored as they are (npy parts, zarr chunks without a
  compressor, the default) are read by byte range: memory-mapped on local disk, one ranged
  request on a remote store. Compressed zarr chunks are decoded whole, once, and kept in a bounded per-process
  :class:`~imgtools.chunkcache.MemoryCache`.
- **Whole chunks for sequential reading.** :meth:`Reader.chunk` reads one chunk file in one request;
  :meth:`Reader.prefetch` starts the next ones concurrently (bounded) when the store is remote, and a remote
  chunk is kept on local disk (:class:`~imgtools.chunkcache.BoundCache`), so the second epoch reads local files.
- **Per-process handles.** File descriptors, the thread pool and the memory cache are made on first use in
  each process and dropped when the reader is pickled or the process forks (PyTorch DataLoader workers).
- **Arrays handed out are writable** and never views of a cache.
"""

from __future__ import annotations

import abc
import dataclasses
import io
import os
import posixpath
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

from . import retry
from .chunkcache import BoundCache, MemoryCache
from .config import OutputFormat, parse_size
from .location import Location

__all__ = ["Part", "Reader", "ArrayReader", "FileReader", "ArrayLayout", "ZarrLayout", "NpyLayout", "LAYOUTS",
           "make_reader"]

#: Remote chunks fetched ahead at most, per process.
PREFETCH = 8
#: Chunk files kept memory-mapped per process (local stores).
_MAX_MAPS = 256


@dataclasses.dataclass(frozen=True)
class Part:
    """Where one chunk of one size lives: a file (relative to the output), where its pixels start, how
    many image slots it holds, and whether the pixels are stored as they are (byte-addressable)."""

    relpath: str
    offset: int
    slots: int
    raw: bool


class ArrayLayout(abc.ABC):
    """How an array output names and encodes its chunk files (made from the output's location and sizes)."""

    def __init__(self, location: Location, sizes: Sequence[str], channels: int = 3):
        """The ``channels`` of the stored images; nothing else to set up by default (layouts that need the
        location or sizes override this)."""
        self.channels = int(channels)

    @abc.abstractmethod
    def part(self, size: str, k: int, rows: int) -> Part:
        """Chunk ``k`` of ``size``, holding ``rows`` images."""

    @abc.abstractmethod
    def decode(self, size: str, part: Part, data: bytes) -> np.ndarray:
        """The flat uint8 pixels of a whole chunk file."""


class NpyLayout(ArrayLayout):
    """``<size>/part-00000.npy``: a 128-byte header, then the pixels as they are."""

    def part(self, size: str, k: int, rows: int) -> Part:
        from .sinks.npy import NpySink

        shape = (rows,) + _pixel_shape(size, self.channels)
        return Part(NpySink.part(size, k), _npy_header_bytes(shape), rows, True)

    def decode(self, size: str, part: Part, data: bytes) -> np.ndarray:
        return np.frombuffer(data, np.uint8, offset=part.offset)


class ZarrLayout(ArrayLayout):
    """``<size>/images/c/<k>/0/0/0`` as zarr names it; pixels as they are without a compressor, else Blosc
    or Zstd (decoded with numcodecs, the codecs zarr itself uses)."""

    def __init__(self, location: Location, sizes: Sequence[str], channels: int = 3):
        import zarr

        super().__init__(location, sizes, channels)
        from .sinks.zarr_sink import ZarrSink

        group = ZarrSink.open_group(location, "r")
        self.meta = {size: group[f"{size}/images"].metadata for size in sizes}
        self.slots = {size: self.meta[size].chunk_grid.chunk_shape[0] for size in sizes}
        self.decoders: dict[str, Any] = {}
        for size, meta in self.meta.items():
            codecs = [c for c in meta.codecs if not isinstance(c, zarr.codecs.BytesCodec)]
            self.decoders[size] = _decoder(codecs) if codecs else None

    def part(self, size: str, k: int, rows: int) -> Part:
        key = self.meta[size].encode_chunk_key((k, 0, 0, 0))
        return Part(posixpath.join(size, "images", key), 0, self.slots[size], self.decoders[size] is None)

    def decode(self, size: str, part: Part, data: bytes) -> np.ndarray:
        decoder = self.decoders[size]
        return np.frombuffer(data if decoder is None else decoder.decode(data), np.uint8)


def _decoder(codecs: list[Any]):
    import numcodecs
    import zarr

    if len(codecs) == 1 and isinstance(codecs[0], zarr.codecs.BloscCodec):
        return numcodecs.Blosc()
    if len(codecs) == 1 and isinstance(codecs[0], zarr.codecs.ZstdCodec):
        return numcodecs.Zstd()
    from .errors import UnsupportedError

    raise UnsupportedError(f"zarr codecs {codecs!r} are not ones imgtools writes")


def _pixel_shape(size: str, channels: int = 3) -> tuple[int, int, int]:
    s = parse_size(size)
    return s.height, s.width, channels


def _npy_header_bytes(shape: tuple[int, ...]) -> int:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buf.tell()


class _Process:
    """What one process keeps: its filesystem, mapped files, a thread pool, decoded chunks, fetches in flight."""

    def __init__(self, fs, memory_bytes: int):
        self.pid = os.getpid()
        # the filesystem made again in this process: async ones (gcsfs, s3fs) refuse to run in a fork of the
        # process that made them, and fsspec's instance cache starts empty in every process
        self.fs = type(fs)(*fs.storage_args, **fs.storage_options)
        self.maps: dict[str, np.ndarray] = {}
        self.memory = MemoryCache(memory_bytes)
        self.pool: ThreadPoolExecutor | None = None
        self.inflight: dict[tuple[str, int], Future] = {}

    def close(self) -> None:
        self.maps.clear()


class Reader(abc.ABC):
    """Pixels of one output by manifest row. Made on the client; pickles without its per-process state."""

    def __init__(self, location: Location, chunk: int, n: int, disk: BoundCache | None = None,
                 memory_bytes: int = 256 << 20, policy: retry.RetryPolicy = retry.DEFAULT_POLICY, channels: int = 3):
        self.location = location
        #: channels of every image read (1: L, 3: RGB, 4: RGBA), as the output's config says
        self.channels = int(channels)
        self.chunk = chunk
        self.n = n
        self.disk = disk if not location.local else None
        self.memory_bytes = memory_bytes
        self.policy = policy
        self._p: _Process | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_p"] = None
        return state

    @property
    def proc(self) -> _Process:
        if self._p is None or self._p.pid != os.getpid():
            self._p = _Process(self.location.fs, self.memory_bytes)
        return self._p

    def close(self) -> None:
        """Close this process' files and threads (they are made again when needed)."""
        if self._p is not None and self._p.pid == os.getpid():
            self._p.close()
            if self._p.pool is not None:
                self._p.pool.shutdown(wait=False, cancel_futures=True)
        self._p = None

    def rows_of(self, k: int) -> int:
        """Images in chunk ``k``."""
        return min(self.chunk, self.n - k * self.chunk)

    @abc.abstractmethod
    def image(self, size: str, i: int) -> np.ndarray | None:
        """Image of row ``i`` (zeros, or None for image files, where it failed)."""

    @abc.abstractmethod
    def chunk_images(self, size: str, k: int) -> np.ndarray | list[np.ndarray | None]:
        """All images of chunk ``k``."""

    def gather(self, size: str, rows: Sequence[int]) -> np.ndarray:
        """Images of ``rows`` (any order) as one new (len(rows), H, W, C) array; fixed sizes only."""
        out = np.empty((len(rows),) + _pixel_shape(size, self.channels), np.uint8)
        for j, i in enumerate(rows):
            img = self.image(size, int(i))
            out[j] = 0 if img is None else img
        return out

    def prefetch(self, size: str, ks: Iterable[int]) -> None:  # noqa: B027 - optional hook: local stores read on demand
        """Start reading chunks ``ks`` in the background (remote stores only; bounded)."""

    def _call(self, fn, what: str):
        return retry.call(fn, f"reading {what} of {self.location.url!r}", self.policy)


class ArrayReader(Reader):
    """npy parts and zarr chunks."""

    def __init__(self, location: Location, layout: ArrayLayout, chunk: int, n: int, **kwargs: Any):
        super().__init__(location, chunk, n, **kwargs)
        self.layout = layout

    def part(self, size: str, k: int) -> Part:
        return self.layout.part(size, k, self.rows_of(k))

    # ---- one image, a few rows ---------------------------------------------------------------------
    def image(self, size: str, i: int) -> np.ndarray:
        return self.gather(size, [i])[0]

    def gather(self, size: str, rows: Sequence[int]) -> np.ndarray:
        shape = _pixel_shape(size, self.channels)
        nbytes = shape[0] * shape[1] * shape[2]
        out = np.empty((len(rows),) + shape, np.uint8)
        rows = np.asarray(rows, np.int64)
        chunks = rows // self.chunk
        for k in np.unique(chunks):
            where = np.flatnonzero(chunks == k)
            k = int(k)
            part = self.part(size, k)
            slots = rows[where] - k * self.chunk
            held = self._held(size, k)
            if held is not None:
                out[where] = held.reshape((-1,) + shape)[slots]
                continue
            local = self._local_path(part)
            if part.raw and local is not None:
                mapped = self._map(local, part, shape)
                out[where] = 0 if mapped is None else mapped[slots]
            elif part.raw and len(where) * 8 < part.slots and (size, k) not in self.proc.inflight:
                self._ranges(part, slots, nbytes, out, where)
            else:
                out[where] = self._whole(size, k).reshape((-1,) + shape)[slots]
        return out

    def _held(self, size: str, k: int) -> np.ndarray | None:
        return self.proc.memory.get((size, k))

    def _local_path(self, part: Part) -> str | None:
        if self.location.local:
            return self.location.path(part.relpath)
        return self.disk.local(part.relpath) if self.disk is not None else None

    def _map(self, path: str, part: Part, shape: tuple[int, ...]) -> np.ndarray | None:
        """The chunk file at ``path`` memory-mapped as (slots, H, W, C), kept open (None: zarr never wrote it,
        all fill value)."""
        maps = self.proc.maps
        mapped = maps.get(path)
        if mapped is None:
            try:
                mapped = np.memmap(path, np.uint8, "r", offset=part.offset, shape=(part.slots,) + shape)
            except FileNotFoundError:
                return None
            if len(maps) >= _MAX_MAPS:
                maps.pop(next(iter(maps)))
            maps[path] = mapped
        return mapped

    def _ranges(self, part: Part, slots: np.ndarray, nbytes: int, out: np.ndarray, where: np.ndarray) -> None:
        path = self.location.path(part.relpath)
        starts = [part.offset + int(s) * nbytes for s in slots]
        got = self._call(lambda: _cat_ranges(self.proc.fs, path, starts, nbytes), part.relpath)
        for j, blob in zip(where, got):
            out[j] = np.frombuffer(blob, np.uint8).reshape(out.shape[1:])

    # ---- whole chunks ------------------------------------------------------------------------------
    def chunk_images(self, size: str, k: int) -> np.ndarray:
        part = self.part(size, k)
        local = self._local_path(part)
        shape = _pixel_shape(size, self.channels)
        if part.raw and local is not None and self._held(size, k) is None:
            mapped = self._map(local, part, shape)
            rows = self.rows_of(k)
            return np.zeros((rows,) + shape, np.uint8) if mapped is None else np.array(mapped[:rows])
        return self._whole(size, k).reshape((-1,) + shape)[: self.rows_of(k)].copy()

    def _whole(self, size: str, k: int) -> np.ndarray:
        """Chunk ``k`` decoded (flat, read-only, kept in the memory cache)."""
        held = self._held(size, k)
        if held is not None:
            return held
        future = self.proc.inflight.get((size, k))
        if future is not None:
            return future.result()
        return self._fetch(size, k)

    def _fetch(self, size: str, k: int) -> np.ndarray:
        part = self.part(size, k)
        local = self._local_path(part)
        try:
            if local is not None:
                with open(local, "rb") as f:
                    data = f.read()
            else:
                data = self._call(lambda: self.proc.fs.cat_file(self.location.path(part.relpath)), part.relpath)
                if self.disk is not None:
                    self.disk.put(part.relpath, data)
            flat = self.layout.decode(size, part, data)
        except FileNotFoundError:
            flat = np.zeros(part.slots * int(np.prod(_pixel_shape(size, self.channels))), np.uint8)
        finally:
            self.proc.inflight.pop((size, k), None)
        self.proc.memory.put((size, k), flat)
        return flat

    def prefetch(self, size: str, ks: Iterable[int]) -> None:
        if self.location.local:
            return
        proc = self.proc
        if proc.pool is None:
            proc.pool = ThreadPoolExecutor(PREFETCH, thread_name_prefix="imgtools-prefetch")
        for k in ks:
            if len(proc.inflight) >= PREFETCH:
                break
            key = (size, int(k))
            if key in proc.inflight or self._held(*key) is not None:
                continue
            if self.disk is not None and self.disk.local(self.part(*key).relpath) is not None:
                continue
            proc.inflight[key] = proc.pool.submit(self._fetch, *key)


#: The Pillow mode of an image by its channels.
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


class FileReader(Reader):
    """Mirrored image files: one file per image, decoded with Pillow to the output's channels (H, W, C)."""

    def __init__(self, location: Location, relpaths: Sequence[str], ok: np.ndarray, fmt: OutputFormat, chunk: int,
                 **kwargs: Any):
        super().__init__(location, chunk, len(relpaths), **kwargs)
        self.relpaths = list(relpaths)
        self.ok = ok
        self.format = fmt

    def _relpath(self, size: str, i: int) -> str:
        from .sinks.files import output_relpath

        return posixpath.join(size, output_relpath(self.relpaths[i], self.format))

    def _read(self, size: str, rows: Sequence[int]) -> list[np.ndarray | None]:
        want = [i for i in rows if self.ok[i]]
        paths = [self.location.path(self._relpath(size, i)) for i in want]
        blobs = self._call(lambda: self.proc.fs.cat(paths, on_error="raise"), f"{len(paths)} files") if paths else {}
        out: list[np.ndarray | None] = []
        for i in rows:
            if not self.ok[i]:
                out.append(None)
                continue
            with Image.open(io.BytesIO(blobs[self.location.path(self._relpath(size, i))])) as img:
                arr = np.array(img.convert(_MODES[self.channels]))
            out.append(arr[:, :, None] if arr.ndim == 2 else arr)
        return out

    def image(self, size: str, i: int) -> np.ndarray | None:
        return self._read(size, [i])[0]

    def chunk_images(self, size: str, k: int) -> list[np.ndarray | None]:
        start = k * self.chunk
        return self._read(size, range(start, start + self.rows_of(k)))


def _cat_ranges(fs, path: str, starts: list[int], nbytes: int) -> list[bytes]:
    got = fs.cat_ranges([path] * len(starts), starts, [s + nbytes for s in starts], on_error="return")
    for blob in got:
        if isinstance(blob, BaseException):
            raise blob
    return got


#: The array layouts, by format (every other format is image files).
LAYOUTS: dict[OutputFormat, type[ArrayLayout]] = {OutputFormat.ZARR: ZarrLayout, OutputFormat.NPY: NpyLayout}


def make_reader(location: Location, fmt: OutputFormat, sizes: Sequence[str], chunk: int, relpaths: Sequence[str],
                ok: np.ndarray, channels: int = 3, **kwargs: Any) -> Reader:
    """The reader of an output of format ``fmt`` at ``location``.

    Examples
    --------
    >>> make_reader(Location.resolve("memory://none"), OutputFormat.PNG, ["8x8"], 4, ["a.png"], np.ones(1, bool)).n
    1
    """
    if fmt is OutputFormat.WEBDATASET:
        from .shards import ShardReader

        return ShardReader(location, ok, chunk, channels=channels, **kwargs)
    if fmt in LAYOUTS:
        return ArrayReader(location, LAYOUTS[fmt](location, sizes, channels), chunk, len(relpaths), channels=channels,
                           **kwargs)
    return FileReader(location, relpaths, ok, fmt, chunk, channels=channels, **kwargs)
