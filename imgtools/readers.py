"""Reading results back: ``open(dest)`` -> a dataset of arrays, labels, manifest, training batches and a
contact sheet, for every output form (zarr, npy, image files), local or in a bucket.

Contract: a :class:`Dataset` is a map-style dataset for PyTorch over the **ok** images only (``len(ds)`` counts
them, ``ds[j]`` is the ``j``-th ok image and ``ds.rows[j]`` its manifest row), so failed inputs never reach a
training loop; ``ds.view(failed=True)`` exposes every row. Pixels come from :mod:`imgtools.store` (one image
costs about one image; remote chunks cached on local disk), so a Dataset pickles into DataLoader workers and
re-opens its handles there."""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from . import kernels
from .chunkcache import BoundCache, DiskCache
from .config import OutputFormat, parse_size
from .errors import ConfigError, UnsupportedError
from .order import EpochPlan
from .pictures import save_png, thumbnail
from .schema import ok_mask
from .sinks import detect, manifest_token, read_manifest
from .sinks.zarr_sink import ZarrSink
from .store import PREFETCH, Reader, make_reader

__all__ = ["Dataset", "open"]

_LAYOUTS = ("NHWC", "NCHW")


def _disk_cache(cache: DiskCache | str | os.PathLike | bool | None) -> DiskCache | None:
    if cache is False:
        return None
    if cache is None or cache is True:
        return DiskCache()
    return cache if isinstance(cache, DiskCache) else DiskCache(cache)


class Dataset:
    """A finished imgtools output. Also a map-style dataset for PyTorch over its ok images
    (``len(ds)``, ``ds[j]`` -> ``(image, label)``, writable uint8 HWC arrays) without importing torch.

    Examples
    --------
    >>> ds = imgtools.open("out/sample.zarr")                      # doctest: +SKIP
    >>> loader = DataLoader(ds.view("64x64"), batch_size=256, shuffle=True, num_workers=8)  # doctest: +SKIP
    >>> for x, y in ds.batches("64x64", batch_size=256):           # doctest: +SKIP
    ...     pass
    """

    def __init__(self, dest: str, storage_options: dict[str, Any] | None = None,
                 cache: DiskCache | str | os.PathLike | bool | None = None):
        self.dest = str(dest)
        output = detect(self.dest, storage_options)
        self.location, info, self.config = output.location, output.info, output.config
        self.sizes: list[str] = list(info.sizes)
        self.label_names: list[str] = list(info.label_names)
        self.manifest: pd.DataFrame = read_manifest(self.location)  # one file, or a folder of parts
        self.labels: np.ndarray = self.manifest["label_id"].to_numpy(np.int32)
        self.ok: np.ndarray = ok_mask(self.manifest)
        disk = _disk_cache(cache)
        bound: BoundCache | None = None
        if disk is not None and not self.location.local:
            token = manifest_token(self.location) + json.dumps(info.to_attrs(), sort_keys=True)
            bound = disk.bind(self.location.fs.unstrip_protocol(self.location.root), token)
        #: channels of every image (1: L, 3: RGB, 4: RGBA): arrays are (..., H, W, channels)
        self.channels: int = int(self.config.channels)
        self.reader: Reader = make_reader(self.location, self.config.format, self.sizes if self.config.format.is_array
                                          else [], self.config.chunk, list(self.manifest["relpath"]), self.ok,
                                          channels=self.channels, disk=bound)
        #: the size ``ds[j]`` reads (the first one unless :meth:`view` says otherwise)
        self.size: str = self.sizes[0]
        #: manifest rows of the images ``ds[j]`` reads: the ok ones unless :meth:`view` says otherwise
        self.rows: np.ndarray = np.flatnonzero(self.ok)
        self.transform: Callable[[np.ndarray], Any] | None = None

    def __repr__(self) -> str:
        return (f"<imgtools.Dataset {self.dest}: {len(self.manifest)} images ({int(self.ok.sum())} ok), "
                f"sizes {', '.join(self.sizes)}, {len(self.label_names)} labels, {self.config.format.value}>")

    def view(self, size: str | None = None, failed: bool = False,
             transform: Callable[[np.ndarray], Any] | None = None) -> Dataset:
        """The same output, read at ``size``, over every row (``failed=True``: failed rows are zeros, or
        None for image files) or the ok ones, with ``transform`` applied to each image of ``ds[j]``.

        Examples
        --------
        >>> train = imgtools.open("out/sample.zarr").view("224x224",
        ...                                               transform=torchvision.transforms.ToTensor())  # doctest: +SKIP
        >>> DataLoader(train, batch_size=64, shuffle=True, num_workers=2)  # doctest: +SKIP
        """
        out = copy.copy(self)
        out.size = self._size(size)
        out.rows = np.arange(len(self.manifest)) if failed else np.flatnonzero(self.ok)
        out.transform = transform
        return out

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, j: int) -> tuple[Any, int]:
        j = int(j)
        if not -len(self) <= j < len(self):
            raise IndexError(f"index {j} is out of range for {len(self)} images")
        row = int(self.rows[j])
        img = self.reader.image(self.size, row)
        return (img if self.transform is None else self.transform(img)), int(self.labels[row])

    def __getitems__(self, js: Sequence[int]) -> list[tuple[Any, int]]:
        """Many items at once (PyTorch's DataLoader calls this for a batch): one read per chunk touched."""
        if not self.config.format.is_array:
            return [self[j] for j in js]
        rows = self.rows[np.asarray(js, np.int64)]
        imgs = self.reader.gather(self.size, rows)
        labels = self.labels[rows].tolist()
        if self.transform is not None:
            return [(self.transform(img), y) for img, y in zip(imgs, labels)]
        return list(zip(imgs, labels))

    def image(self, row: int, size: str | None = None) -> np.ndarray | None:
        """The image of manifest row ``row`` at ``size``, ok or not (zeros, or None for image files, where it
        failed)."""
        if not 0 <= row < len(self.manifest):
            raise IndexError(f"row {row} is out of range for {len(self.manifest)} rows")
        return self.reader.image(self._size(size), int(row))

    def _size(self, size: str | None) -> str:
        size = size or self.sizes[0]
        if size not in self.sizes:
            raise ConfigError(f"size {size!r} is not in {self.dest!r} (it has {', '.join(self.sizes)})")
        return size

    def _shape(self, size: str) -> tuple[int, int]:
        if self.config.mode.variable:
            raise UnsupportedError(f"size {size!r} has images of varying shape; read them with ds[i] or the files")
        s = parse_size(size)
        return s.height, s.width

    def images(self, size: str | None = None):
        """All images of one fixed size as a lazy dask array (N, H, W, C), chunked as stored."""
        import dask
        import dask.array as da

        size = self._size(size)
        h, w = self._shape(size)
        chunk, n = self.config.chunk, len(self.manifest)
        if self.config.format is OutputFormat.ZARR:
            return da.from_zarr(ZarrSink.open_group(self.location)[f"{size}/images"])
        read = self.reader.chunk_images if self.config.format.is_array else self._chunk
        blocks = [da.from_delayed(dask.delayed(read)(size, k), (self.reader.rows_of(k), h, w, self.channels),
                                   dtype=np.uint8)
                  for k in range(-(-n // chunk))]
        return da.concatenate(blocks)

    def _chunk(self, size: str, k: int) -> np.ndarray:
        """Chunk ``k`` of a fixed size as one array (zeros where an image failed)."""
        got = self.reader.chunk_images(size, k)
        if isinstance(got, np.ndarray):
            return got
        h, w = self._shape(size)
        return np.stack([np.zeros((h, w, self.channels), np.uint8) if a is None else a for a in got])

    def chunks(self, size: str | None = None, order: Sequence[int] | None = None,
               prefetch: int = PREFETCH) -> Iterator[tuple[int, np.ndarray]]:
        """``(k, images of chunk k)`` for the chunks in ``order`` (all, in order, by default), reading up to
        ``prefetch`` chunks ahead when the store is remote.

        Examples
        --------
        >>> for k, x in ds.chunks("64x64"):          # doctest: +SKIP
        ...     print(k, x.shape)
        """
        size = self._size(size)
        order = list(range(-(-len(self.manifest) // self.config.chunk))) if order is None else [int(k) for k in order]
        for pos, k in enumerate(order):
            if prefetch:
                self.reader.prefetch(size, order[pos + 1 : pos + 1 + prefetch])
            yield k, self._chunk(size, k)

    def stream(self, size: str | None = None, batch_size: int = 64, *, seed: int = 0, shuffle: bool = True,
               drop_last: bool = False, rank: int | None = None, world_size: int | None = None,
               window_chunks: int = 2, streams: int = 12, normalize: tuple[Any, Any] | bool | None = None,
               layout: str = "NHWC"):
        """A PyTorch ``IterableDataset`` of shuffled ``(x, y)`` batches that reads whole chunks, shares them
        equally among ranks and workers, and resumes mid-epoch: see :class:`imgtools.loaders.ChunkStream`
        for what each setting does (``rank`` and ``world_size`` default to torch.distributed's).

        Examples
        --------
        >>> stream = ds.stream("64x64", batch_size=64, seed=0)          # doctest: +SKIP
        >>> loader = DataLoader(stream, batch_size=None, num_workers=2)  # doctest: +SKIP
        """
        from .loaders import ChunkStream

        return ChunkStream(self.view(size), batch_size=batch_size, seed=seed, shuffle=shuffle, drop_last=drop_last,
                           rank=rank, world_size=world_size, window_chunks=window_chunks, streams=streams,
                           normalize=normalize, layout=layout)

    def batches(self, size: str | None = None, batch_size: int = 64, shuffle: bool = True, seed: int = 0,
                normalize: tuple[Any, Any] | bool | None = None, layout: str = "NHWC", drop_failed: bool = True,
                buffer_chunks: int = 4) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One epoch of ``(x, y)`` NumPy batches, reading whole chunks (in shuffled order, then shuffled
        within a buffer of ``buffer_chunks`` chunks). ``x`` is uint8, or float32 ``(x / 255 - mean) / std``
        with ``normalize=(mean, std)`` (a value per channel, or one for all; ``normalize=True``: the defaults
        for the output's channels, :data:`imgtools.kernels.NORMALIZE_DEFAULTS`); ``layout`` is ``NHWC`` or
        ``NCHW``. Every ok image comes exactly once.

        Examples
        --------
        >>> x, y = next(ds.batches("64x64", 32, normalize=((0.5,) * 3, (0.5,) * 3), layout="NCHW"))  # doctest: +SKIP
        >>> x.shape, x.dtype                                                                           # doctest: +SKIP
        ((32, 3, 64, 64), dtype('float32'))
        """
        size = self._size(size)
        self._shape(size)  # fixed sizes only
        if layout not in _LAYOUTS:
            raise ConfigError(f"layout {layout!r} is not NHWC or NCHW")
        rows = self.rows if drop_failed else np.arange(len(self.manifest))
        plan = EpochPlan(rows, self.config.chunk, batch_size, seed=seed, shuffle=shuffle, window_chunks=buffer_chunks,
                         streams=1)
        return self.view(size, failed=not drop_failed).read_batches(plan.batches(0), normalize, layout)

    def read_batches(self, batches: Sequence[np.ndarray], normalize: tuple[Any, Any] | bool | None = None,
                     layout: str = "NHWC", lookahead: int = 4) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(x, y)`` for each array of manifest rows in ``batches``, at this view's size, reading the chunks
        of the next ``lookahead`` batches ahead when the store is remote."""
        chunk = self.config.chunk
        for pos, rows in enumerate(batches):
            ahead = [np.unique(b // chunk) for b in batches[pos + 1 : pos + 1 + lookahead]]
            if ahead:
                self.reader.prefetch(self.size, dict.fromkeys(np.concatenate(ahead).tolist()))
            x = self.reader.gather(self.size, rows)
            yield self._finish(x, normalize, layout), self.labels[rows]

    @staticmethod
    def _finish(x: np.ndarray, normalize, layout: str) -> np.ndarray:
        if normalize is True:
            x = kernels.normalize(x)
        elif normalize is not None and normalize is not False:
            x = kernels.normalize(x, *normalize)
        return kernels.hwc_to_chw(x) if layout == "NCHW" else x

    def show(self, size: str | None = None, n: int = 64, seed: int = 0, out: str | None = None,
             thumb: int = 96) -> Image.Image:
        """A contact sheet: ``n`` random ok images (of the largest size unless ``size`` is given) with their
        labels under them (grey ones grey, RGBA ones over the white sheet), the failed inputs listed beside.
        Saved as PNG to ``out`` (a path or URL) when given.

        Examples
        --------
        >>> imgtools.open("out/sample.zarr").show(n=32, out="sheet.png")   # doctest: +SKIP
        """
        size = self._size(size or max(self.sizes, key=lambda k: int(re.sub(r"\D", "", k)) if self.config.mode.variable
                                       else parse_size(k).width * parse_size(k).height))
        ok = np.flatnonzero(self.ok)
        pick = np.sort(np.random.default_rng(seed).choice(ok, min(n, len(ok)), replace=False)) if len(ok) else ok
        cols = max(1, int(np.ceil(np.sqrt(max(len(pick), 1)))))
        rows = max(1, int(np.ceil(len(pick) / cols)))
        cell_h = thumb + 14
        failed = self.manifest[~self.ok]
        side_w = 360 if len(failed) else 0
        sheet = Image.new("RGB", (cols * thumb + side_w, max(rows * cell_h, 16 + 12 * min(len(failed), 40))), "white")
        draw = ImageDraw.Draw(sheet)
        for k, i in enumerate(pick):
            tile = thumbnail(self.reader.image(size, int(i)), thumb)
            x, y = (k % cols) * thumb, (k // cols) * cell_h
            # grey tiles as grey; RGBA ones over the white sheet, by their alpha
            sheet.paste(tile, (x + (thumb - tile.width) // 2, y + (thumb - tile.height) // 2),
                        tile if tile.mode == "RGBA" else None)
            label = self.manifest["label"].iloc[i]
            draw.text((x + 2, y + thumb), (str(label) if isinstance(label, str) else "-")[: thumb // 6], fill="black")
        if len(failed):
            x0 = cols * thumb + 8
            draw.text((x0, 2), f"{len(failed)} failed:", fill="red")
            for k, (rel, err) in enumerate(zip(failed["relpath"][:39], failed["error"][:39])):
                draw.text((x0, 16 + 12 * k), f"{rel[:28]}: {str(err)[:28]}", fill="black")
        if out is not None:
            save_png(sheet, out)
        return sheet


def open(dest: str, storage_options: dict[str, Any] | None = None,  # noqa: A001 - the API name
         cache: DiskCache | str | os.PathLike | bool | None = None) -> Dataset:
    """Open a finished imgtools output (zarr, npy or image files) at a path or URL.

    Chunks of a remote output are kept on local disk as they are read: ``cache`` is a
    :class:`~imgtools.chunkcache.DiskCache` (or its folder); the default is ``~/.cache/imgtools`` (or
    ``$IMGTOOLS_CACHE``), up to 20 GiB in all; ``False`` reads without it.

    Examples
    --------
    >>> ds = imgtools.open("out/sample.zarr")       # doctest: +SKIP
    >>> ds.images("64x64")                           # doctest: +SKIP
    dask.array<...>
    >>> remote = imgtools.open("gs://bucket/out.zarr",
    ...                        cache=DiskCache("/mnt/ssd/cache", max_bytes=100 << 30))  # doctest: +SKIP
    """
    return Dataset(dest, storage_options, cache)
