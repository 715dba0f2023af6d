"""Reading results back: ``open(dest)`` -> a dataset of arrays, labels, manifest, training batches and a
contact sheet, for every output form (zarr, npy, image files), local or in a bucket.

Contract: a :class:`Dataset` is a map-style dataset for PyTorch over the **ok** images only (``len(ds)`` counts
them, ``ds[j]`` is the ``j``-th ok image and ``ds.rows[j]`` its manifest row), so failed inputs never reach a
training loop; ``ds.view(failed=True)`` exposes every row. Pixels come from :mod:`imgtools.store` (one image
costs about one image; remote chunks cached on local disk), so a Dataset pickles into DataLoader workers and
re-opens its handles there."""

from __future__ import annotations

import copy
import fnmatch
import io
import json
import os
import posixpath
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image, ImageDraw

from . import kernels
from .chunkcache import BoundCache, DiskCache
from .config import OutputFormat, PresizeConfig, parse_size
from .errors import ConfigError, SourceError, UnsupportedError
from .location import Location
from .order import EpochPlan
from .sinks import MANIFEST
from .sinks.base import ATTRS_FILE
from .sinks.zarr_sink import ZarrSink
from .store import PREFETCH, Reader, make_reader

__all__ = ["Dataset", "open", "save_png", "read_images", "to_array", "from_array", "IMAGE_SCHEMA", "OCV_TYPES"]

_LAYOUTS = ("NHWC", "NCHW")


def read_attrs(location: Location) -> dict[str, Any] | None:
    """The ``imgtools`` attributes of a finished output at ``location`` (zarr keeps them in the group's
    ``zarr.json``, the other forms in ``imgtools.json``), or None when it is not one."""
    for name, pick in ((ATTRS_FILE, lambda d: d), ("zarr.json", lambda d: d.get("attributes") or {})):
        try:
            attrs = pick(json.loads(location.fs.cat_file(location.path(name))))
        except (FileNotFoundError, ValueError):
            continue
        if isinstance(attrs, dict) and "imgtools" in attrs:
            return attrs["imgtools"]
    return None


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
        self.location = Location.resolve(self.dest, storage_options)
        info = read_attrs(self.location)
        manifest_path = self.location.path(MANIFEST)
        if info is None or not self.location.fs.exists(manifest_path):
            raise SourceError(f"DEST {self.dest!r} is not a complete imgtools output (no manifest and attributes)")
        self.config = PresizeConfig.from_dict(info["config"])
        self.sizes: list[str] = list(info["sizes"])
        self.label_names: list[str] = list(info["label_names"])
        with self.location.fs.open(manifest_path, "rb") as f:
            self.manifest: pd.DataFrame = pd.read_parquet(f)
        self.labels: np.ndarray = self.manifest["label_id"].to_numpy(np.int32)
        self.ok: np.ndarray = (self.manifest["status"] == "ok").to_numpy()
        disk = _disk_cache(cache)
        bound: BoundCache | None = None
        if disk is not None and not self.location.local:
            token = self.location.fs.ukey(manifest_path) + json.dumps(info, sort_keys=True)
            bound = disk.bind(self.location.fs.unstrip_protocol(self.location.root), token)
        self.reader: Reader = make_reader(self.location, self.config.format, self.sizes if self.config.format.is_array
                                          else [], self.config.chunk, list(self.manifest["relpath"]), self.ok,
                                          disk=bound)
        #: the size ``ds[j]`` reads (the first one unless :meth:`view` says otherwise)
        self.size: str = self.sizes[0]
        #: manifest rows of the images ``ds[j]`` reads: the ok ones unless :meth:`view` says otherwise
        self.rows: np.ndarray = np.flatnonzero(self.ok)
        self.transform: Callable[[np.ndarray], Any] | None = None

    def __repr__(self) -> str:
        return (f"<imgtools.Dataset {self.dest}: {len(self.manifest)} images ({int(self.ok.sum())} ok), "
                f"sizes {', '.join(self.sizes)}, {len(self.label_names)} labels, {self.config.format.value}>")

    def view(self, size: str | None = None, failed: bool = False,
             transform: Callable[[np.ndarray], Any] | None = None) -> "Dataset":
        """The same output, read at ``size``, over every row (``failed=True``: failed rows are zeros, or
        None for image files) or the ok ones, with ``transform`` applied to each image of ``ds[j]``.

        Examples
        --------
        >>> train = imgtools.open("out/sample.zarr").view("224x224", transform=torchvision.transforms.ToTensor())  # doctest: +SKIP
        >>> DataLoader(train, batch_size=64, shuffle=True, num_workers=2)                                        # doctest: +SKIP
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
        """All images of one fixed size as a lazy dask array (N, H, W, 3), chunked as stored."""
        import dask
        import dask.array as da

        size = self._size(size)
        h, w = self._shape(size)
        chunk, n = self.config.chunk, len(self.manifest)
        if self.config.format is OutputFormat.ZARR:
            return da.from_zarr(ZarrSink.open_group(self.location)[f"{size}/images"])
        read = self.reader.chunk_images if self.config.format.is_array else self._chunk
        blocks = [da.from_delayed(dask.delayed(read)(size, k), (self.reader.rows_of(k), h, w, 3), dtype=np.uint8)
                  for k in range(-(-n // chunk))]
        return da.concatenate(blocks)

    def _chunk(self, size: str, k: int) -> np.ndarray:
        """Chunk ``k`` of a fixed size as one array (zeros where an image failed)."""
        got = self.reader.chunk_images(size, k)
        if isinstance(got, np.ndarray):
            return got
        h, w = self._shape(size)
        return np.stack([np.zeros((h, w, 3), np.uint8) if a is None else a for a in got])

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

    def stream(self, size: str | None = None, batch_size: int = 64, **options: Any):
        """A PyTorch ``IterableDataset`` of shuffled ``(x, y)`` batches that reads whole chunks, shares them
        equally among ranks and workers, and resumes mid-epoch: see :class:`imgtools.loaders.ChunkStream`.

        Examples
        --------
        >>> stream = ds.stream("64x64", batch_size=64, seed=0)          # doctest: +SKIP
        >>> loader = DataLoader(stream, batch_size=None, num_workers=2)  # doctest: +SKIP
        """
        from .loaders import ChunkStream

        return ChunkStream(self.view(size), batch_size=batch_size, **options)

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
        self._shape(size)  # fixed sizes only
        if layout not in _LAYOUTS:
            raise ConfigError(f"layout {layout!r} is not NHWC or NCHW")
        rows = self.rows if drop_failed else np.arange(len(self.manifest))
        plan = EpochPlan(rows, self.config.chunk, batch_size, seed=seed, shuffle=shuffle, window_chunks=buffer_chunks,
                         streams=1)
        return self.view(size, failed=not drop_failed).read_batches(plan.batches(0), normalize, layout)

    def read_batches(self, batches: Sequence[np.ndarray], normalize: tuple[Any, Any] | None = None,
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
        size = self._size(size or max(self.sizes, key=lambda k: int(re.sub(r"\D", "", k)) if self.config.mode.variable
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
            img = self.reader.image(size, int(i))
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
            save_png(sheet, out)
        return sheet


def save_png(image: Image.Image, url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Write ``image`` as a PNG to a path or URL, making its folder when missing.

    Examples
    --------
    >>> save_png(Image.new("RGB", (4, 4)), "memory://imgtools-doc/sheet.png")
    """
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(str(url), **dict(storage_options or {}))
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    fs.pipe_file(path, buf.getvalue())


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
    >>> remote = imgtools.open("gs://bucket/out.zarr", cache=DiskCache("/mnt/ssd/cache", max_bytes=100 << 30))  # doctest: +SKIP
    """
    return Dataset(dest, storage_options, cache)


#: Spark's image schema columns, in order.
IMAGE_SCHEMA = ["origin", "height", "width", "nChannels", "mode", "data"]
#: OpenCV type codes by channel count, as Spark's image data source writes them.
OCV_TYPES = {1: 0, 3: 16, 4: 24}


def to_array(row: Any) -> np.ndarray:
    """The (height, width, nChannels) uint8 array of a Spark-style image row (channel order as stored).

    Examples
    --------
    >>> to_array(from_array(np.arange(12, dtype=np.uint8).reshape(2, 2, 3))).shape
    (2, 2, 3)
    """
    if row["nChannels"] < 1:
        raise ValueError(f"row of {row['origin']!r} holds no image (it could not be decoded)")
    return np.frombuffer(row["data"], np.uint8).reshape(row["height"], row["width"], row["nChannels"]).copy()


def from_array(arr: np.ndarray, origin: str = "") -> dict[str, Any]:
    """A Spark-style image row from an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 array, bytes as given.

    Examples
    --------
    >>> from_array(np.zeros((2, 3), np.uint8))["mode"]
    0
    """
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in OCV_TYPES:
        raise ValueError(f"array of {arr.dtype} {arr.shape} is not uint8 with 1, 3 or 4 channels")
    h, w, c = arr.shape
    return {"origin": origin, "height": h, "width": w, "nChannels": c, "mode": OCV_TYPES[c],
            "data": np.ascontiguousarray(arr).tobytes()}


def _partition_columns(relpath: str) -> dict[str, str]:
    """``key=value`` folder names (a key that is a schema column is left out)."""
    pairs = (part.split("=", 1) for part in relpath.split("/")[:-1] if "=" in part)
    return {k: v for k, v in pairs if k not in IMAGE_SCHEMA}


def _image_rows(items: pd.DataFrame, config: PresizeConfig, channel_order: str, drop_invalid: bool,
                keys: list[str], storage_options: dict[str, Any] | None) -> pd.DataFrame:
    from .decode import decode_native
    from .errors import DecodeError
    from .archives import closing_streams
    from .sources import read_bytes

    rows = []
    with closing_streams():
        got = read_bytes(list(items["origin"]), storage_options)
    for origin, relpath, raw in zip(items["origin"], items["relpath"], got):
        try:
            if isinstance(raw, BaseException):
                raise DecodeError(str(raw))
            arr = decode_native(raw, config)
        except DecodeError:
            if drop_invalid:
                continue
            row = {"origin": origin, "height": -1, "width": -1, "nChannels": -1, "mode": -1, "data": b""}
        else:
            if channel_order == "BGR" and arr.shape[2] >= 3:
                arr = arr[:, :, [2, 1, 0, 3][: arr.shape[2]]]
            row = from_array(arr, origin)
        row.update({k: _partition_columns(relpath).get(k) for k in keys})
        rows.append(row)
    return _image_frame(rows, keys)


def _image_frame(rows: list[dict[str, Any]], keys: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=IMAGE_SCHEMA + keys)
    for col in ("height", "width", "nChannels", "mode"):
        frame[col] = frame[col].astype("int32")
    frame["origin"] = frame["origin"].astype("string")
    frame["data"] = frame["data"].astype(pd.ArrowDtype(pa.binary()))  # bytes, never taken for text
    for k in keys:
        frame[k] = frame[k].astype("string")
    return frame


def read_images(source: str, recursive: bool = True, drop_invalid: bool = True, sample_ratio: float = 1.0,
                seed: int = 0, npartitions: int | None = None, channel_order: str = "RGB",
                storage_options: dict[str, Any] | None = None, path_glob_filter: str | None = None):
    """Images as a Dask DataFrame with Spark's image schema: ``origin``, ``height``, ``width``,
    ``nChannels`` (1, 3 or 4, as decoded), ``mode`` (OpenCV type: 0, 16, 24; -1 when invalid), ``data``
    (row-major bytes; ``channel_order="BGR"`` gives Spark's own BGR(A) order byte for byte), plus one text
    column per ``key=value`` folder name. As Spark's image source, every file is listed (hidden ones
    aside), image or not: undecodable files are dropped, or with ``drop_invalid=False`` kept as rows of -1
    and empty data; ``path_glob_filter`` (Spark's ``pathGlobFilter``, e.g. ``"*.png"``) keeps only the files
    whose name matches. Images are upright (EXIF orientation applied).

    Examples
    --------
    >>> df = imgtools.read_images("photos/", channel_order="BGR")     # doctest: +SKIP
    >>> to_array(df.head(1).iloc[0]).shape                              # doctest: +SKIP
    (375, 500, 3)
    """
    import dask
    import dask.dataframe as dd

    from .config import LabelSource
    from .sources import list_source

    if channel_order not in ("RGB", "BGR"):
        raise ConfigError(f"channel_order {channel_order!r} is not RGB or BGR")
    if not 0.0 < sample_ratio <= 1.0:
        raise ConfigError(f"sample_ratio {sample_ratio!r} must be in (0, 1]")
    items = list_source(source, LabelSource.NONE, storage_options, every_file=True).items
    if path_glob_filter is not None:
        items = items[[fnmatch.fnmatchcase(posixpath.basename(rel), path_glob_filter) for rel in items["relpath"]]]
    if not recursive:
        items = items[~items["relpath"].str.contains("/")]
    if sample_ratio < 1.0:
        items = items[np.random.default_rng(seed).random(len(items)) < sample_ratio]
    keys = sorted({k for rel in items["relpath"] for k in _partition_columns(rel)})
    config = PresizeConfig()
    n = max(1, min(len(items), npartitions or -(-len(items) // 256)))
    bounds = np.linspace(0, len(items), n + 1).astype(int)
    parts = [dask.delayed(_image_rows)(items.iloc[a:b], config, channel_order, drop_invalid, keys, storage_options)
             for a, b in zip(bounds[:-1], bounds[1:])]
    return dd.from_delayed(parts, meta=_image_frame([], keys), verify_meta=False)
