"""Reading results back: ``open(dest)`` -> a dataset of arrays, labels, manifest, training batches and a
contact sheet, for every output form (zarr, npy, image files)."""

from __future__ import annotations

import io
import posixpath
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from . import kernels
from .config import PresizeConfig, parse_size
from .errors import ConfigError, SourceError, UnsupportedError
from .sinks import MANIFEST, NpySink, ZarrSink, make_sink
from .sinks.files import output_relpath

__all__ = ["Dataset", "open"]

_LAYOUTS = ("NHWC", "NCHW")


class Dataset:
    """A finished imgtools output. Also a map-style dataset for PyTorch (``len(ds)``, ``ds[i]`` ->
    ``(image, label)``) without importing torch.

    Examples
    --------
    >>> ds = imgtools.open("out/sample.zarr")                      # doctest: +SKIP
    >>> for x, y in ds.batches("64x64", batch_size=256):           # doctest: +SKIP
    ...     pass
    """

    def __init__(self, dest: str, storage_options: dict[str, Any] | None = None):
        self.dest = str(dest)
        for fmt in ("zarr", "npy", "jpeg"):
            probe = make_sink(self.dest, PresizeConfig.build(format=fmt), storage_options)
            attrs = probe.read_attrs()
            if attrs and "imgtools" in attrs and probe.fs.exists(probe.path(MANIFEST)):
                break
        else:
            raise SourceError(f"DEST {self.dest!r} is not a complete imgtools output (no manifest and attributes)")
        info = attrs["imgtools"]
        self.config = PresizeConfig.from_dict(info["config"])
        self.sink = make_sink(self.dest, self.config, storage_options)
        self.sizes: list[str] = list(info["sizes"])
        self.label_names: list[str] = list(info["label_names"])
        with self.sink.fs.open(self.sink.path(MANIFEST), "rb") as f:
            self.manifest: pd.DataFrame = pd.read_parquet(f)
        self.labels: np.ndarray = self.manifest["label_id"].to_numpy(np.int32)
        self.ok: np.ndarray = (self.manifest["status"] == "ok").to_numpy()

    def __repr__(self) -> str:
        return (f"<imgtools.Dataset {self.dest}: {len(self)} images ({int(self.ok.sum())} ok), "
                f"sizes {', '.join(self.sizes)}, {len(self.label_names)} labels, {self.config.format.value}>")

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} is out of range for {len(self)} images")
        i %= len(self)
        return self._read(self.sizes[0], i, i + 1)[0], int(self.labels[i])

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

    def _read(self, size: str, start: int, stop: int) -> np.ndarray | list[np.ndarray]:
        """Images ``start:stop`` of one size (zeros, or None for files, where an image failed)."""
        if isinstance(self.sink, ZarrSink):
            return self.sink.group("r")[f"{size}/images"][start:stop]
        if isinstance(self.sink, NpySink):
            chunk = self.config.chunk
            parts = [self.sink.read_part(size, k) for k in range(start // chunk, (stop - 1) // chunk + 1)]
            base = (start // chunk) * chunk
            return np.concatenate(parts)[start - base : stop - base]
        out = []
        for rel, ok in zip(self.manifest["relpath"].iloc[start:stop], self.ok[start:stop]):
            if not ok:
                out.append(None)
                continue
            with self.sink.fs.open(self.sink.path(size, output_relpath(rel, self.config.format)), "rb") as f:
                out.append(np.asarray(Image.open(io.BytesIO(f.read())).convert("RGB")))
        return out

    def images(self, size: str | None = None):
        """All images of one fixed size as a lazy dask array (N, H, W, 3), chunked as stored."""
        import dask
        import dask.array as da

        size = self._size(size)
        if isinstance(self.sink, ZarrSink):
            return da.from_zarr(self.sink.group("r")[f"{size}/images"])
        h, w = self._shape(size)
        chunk, n = self.config.chunk, len(self)
        blocks = [da.from_delayed(dask.delayed(self._fixed)(size, s, min(s + chunk, n)), (min(chunk, n - s), h, w, 3),
                                  dtype=np.uint8) for s in range(0, n, chunk)]
        return da.concatenate(blocks)

    def _fixed(self, size: str, start: int, stop: int) -> np.ndarray:
        got = self._read(size, start, stop)
        if isinstance(got, np.ndarray):
            return got
        h, w = self._shape(size)
        return np.stack([np.zeros((h, w, 3), np.uint8) if a is None else a for a in got])

    def batches(self, size: str | None = None, batch_size: int = 64, shuffle: bool = True, seed: int = 0,
                normalize: tuple[Any, Any] | None = None, layout: str = "NHWC", drop_failed: bool = True,
                buffer_chunks: int = 4) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One epoch of ``(x, y)`` NumPy batches, reading whole chunks (in shuffled order, then shuffled
        within a buffer of ``buffer_chunks`` chunks). ``x`` is uint8, or float32 ``(x / 255 - mean) / std``
        with ``normalize=(mean, std)``; ``layout`` is ``NHWC`` or ``NCHW``. Every ok image comes exactly once.

        Examples
        --------
        >>> x, y = next(ds.batches("64x64", 32, normalize=((0.5,) * 3, (0.5,) * 3), layout="NCHW"))  # doctest: +SKIP
        >>> x.shape, x.dtype                                                                           # doctest: +SKIP
        ((32, 3, 64, 64), dtype('float32'))
        """
        size = self._size(size)
        if layout not in _LAYOUTS:
            raise ConfigError(f"layout {layout!r} is not NHWC or NCHW")
        if batch_size < 1:
            raise ConfigError(f"batch_size {batch_size!r} must be at least 1")
        rng = np.random.default_rng(seed)
        chunk, n = self.config.chunk, len(self)
        order = np.arange(0, n, chunk)
        if shuffle:
            rng.shuffle(order)
        pending_x: list[np.ndarray] = []
        pending_i: list[np.ndarray] = []
        for group in range(0, len(order), buffer_chunks):
            xs, idx = [], []
            for start in order[group : group + buffer_chunks]:
                stop = min(start + chunk, n)
                keep = np.arange(start, stop)[self.ok[start:stop]] if drop_failed else np.arange(start, stop)
                xs.append(self._fixed(size, start, stop)[keep - start])
                idx.append(keep)
            x, i = np.concatenate(xs), np.concatenate(idx)
            if shuffle:
                perm = rng.permutation(len(i))
                x, i = x[perm], i[perm]
            pending_x.append(x)
            pending_i.append(i)
            x, i = np.concatenate(pending_x), np.concatenate(pending_i)
            full = len(i) // batch_size * batch_size
            for b in range(0, full, batch_size):
                yield self._finish(x[b : b + batch_size], normalize, layout), self.labels[i[b : b + batch_size]]
            pending_x, pending_i = [x[full:]], [i[full:]]
        x, i = np.concatenate(pending_x), np.concatenate(pending_i)
        if len(i):
            yield self._finish(x, normalize, layout), self.labels[i]

    @staticmethod
    def _finish(x: np.ndarray, normalize, layout: str) -> np.ndarray:
        if normalize is not None:
            x = kernels.normalize(x, *normalize)
        return kernels.hwc_to_chw(x) if layout == "NCHW" else x

    def show(self, size: str | None = None, n: int = 64, seed: int = 0, out: str | None = None,
             thumb: int = 96) -> Image.Image:
        """A contact sheet: ``n`` random ok images (of the largest size unless ``size`` is given) with their
        labels under them, the failed inputs listed beside. Saved as PNG to ``out`` (a path or URL) when given.

        Examples
        --------
        >>> imgtools.open("out/sample.zarr").show(n=32, out="sheet.png")   # doctest: +SKIP
        """
        size = self._size(size or max(self.sizes, key=lambda k: len(k) if self.config.mode.variable
                                       else parse_size(k).width * parse_size(k).height))
        ok = np.flatnonzero(self.ok)
        pick = np.sort(np.random.default_rng(seed).choice(ok, min(n, len(ok)), replace=False)) if len(ok) else ok
        cols = max(1, int(np.ceil(np.sqrt(max(len(pick), 1)))))
        rows = max(1, int(np.ceil(len(pick) / cols)))
        cell_h = thumb + 14
        failed = self.manifest[~self.manifest["status"].eq("ok")]
        side_w = 360 if len(failed) else 0
        sheet = Image.new("RGB", (cols * thumb + side_w, max(rows * cell_h, 16 + 12 * min(len(failed), 40))), "white")
        draw = ImageDraw.Draw(sheet)
        for k, i in enumerate(pick):
            img = self._read(size, int(i), int(i) + 1)[0]
            tile = Image.fromarray(img)
            tile.thumbnail((thumb, thumb))
            x, y = (k % cols) * thumb, (k // cols) * cell_h
            sheet.paste(tile, (x + (thumb - tile.width) // 2, y + (thumb - tile.height) // 2))
            label = self.manifest["label"].iloc[i]
            draw.text((x + 2, y + thumb), (str(label) if isinstance(label, str) else "-")[: thumb // 6], fill="black")
        if len(failed):
            x0 = cols * thumb + 8
            draw.text((x0, 2), f"{len(failed)} failed:", fill="red")
            for k, (rel, err) in enumerate(zip(failed["relpath"][:39], failed["error"][:39])):
                draw.text((x0, 16 + 12 * k), f"{rel[:28]}: {str(err)[:28]}", fill="black")
        if out is not None:
            from fsspec.core import url_to_fs

            fs, path = url_to_fs(str(out))
            parent = posixpath.dirname(path)
            if parent:
                fs.makedirs(parent, exist_ok=True)
            buf = io.BytesIO()
            sheet.save(buf, "PNG")
            fs.pipe_file(path, buf.getvalue())
        return sheet


def open(dest: str, storage_options: dict[str, Any] | None = None) -> Dataset:  # noqa: A001 - the API name
    """Open a finished imgtools output (zarr, npy or image files) at a path or URL.

    Examples
    --------
    >>> ds = imgtools.open("out/sample.zarr")       # doctest: +SKIP
    >>> ds.images("64x64")                           # doctest: +SKIP
    dask.array<...>
    """
    return Dataset(dest, storage_options)
