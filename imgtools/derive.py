"""derive(): smaller sizes from a stored size, as Dask array work, without decoding again.

A Gaussian anti-alias prefilter (``dask_image.ndfilters``, sigma = 0.25 / scale per axis, as in the
presizing recipe), then linear resampling of each chunk; the new arrays are added to the same store and
listed in its attributes. Label masks, when the output has them, are resampled nearest-neighbour. Works on
zarr and npy outputs of any channels (1, 3, 4): the new sizes keep them; RGBA is filtered and resampled
premultiplied by its alpha, as presize resizes it. It holds the run lock of DEST while it works (as presize does; see
:mod:`imgtools.sinks.lock`): a DEST another run writes is refused, and a derive whose lock was taken over
does not list its sizes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask_image.ndfilters import gaussian_filter

from .cluster import Placement, where_to_run
from .config import Size, parse_size
from .errors import ConfigError, SourceError
from .schema import OutputInfo
from .sinks import Sink, detect, read_info
from .sinks.lock import RunLock

__all__ = ["derive", "DeriveReport", "resample_block", "nearest_block", "premultiply_block"]


@dataclasses.dataclass(frozen=True)
class DeriveReport:
    """Sizes made, from which, how many images, and how fast."""

    dest: str
    source_size: str
    sizes: tuple[str, ...]
    images: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images * len(self.sizes) / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        return (f"derived {', '.join(self.sizes)} from {self.source_size} for {self.images} images in "
                f"{self.seconds:.1f} s ({self.images_per_second:.0f} images/s) -> {self.dest}")


def premultiply_block(block: np.ndarray) -> np.ndarray:
    """An (n, H, W, 4) RGBA float block with its colour multiplied by its alpha (``c * a / 255``).

    Examples
    --------
    >>> premultiply_block(np.array([[[[200.0, 100.0, 0.0, 51.0]]]], np.float32))[0, 0, 0].tolist()
    [40.0, 20.0, 0.0, 51.0]
    """
    out = block.astype(np.float32, copy=True)
    out[..., :3] *= out[..., 3:] / np.float32(255)
    return out


def resample_block(block: np.ndarray, height: int, width: int, premultiplied: bool = False) -> np.ndarray:
    """Linear resampling of an (n, H, W, C) float block to (n, height, width, C) uint8 (pixel-edge aligned);
    a ``premultiplied`` RGBA block (see :func:`premultiply_block`) is divided by its alpha again.

    Examples
    --------
    >>> resample_block(np.full((1, 8, 8, 3), 200.0, np.float32), 4, 4)[0, 0, 0].tolist()
    [200, 200, 200]
    """
    from scipy import ndimage

    zoom = (1.0, height / block.shape[1], width / block.shape[2], 1.0)
    out = ndimage.zoom(block, zoom, order=1, grid_mode=True, mode="nearest", prefilter=False)
    if premultiplied:
        alpha = out[..., 3:]
        with np.errstate(divide="ignore", invalid="ignore"):
            out[..., :3] = np.where(alpha > 0, out[..., :3] * np.float32(255) / alpha, 0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def nearest_block(block: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resampling of an (n, H, W) label block to (n, height, width), pixel centres aligned.

    Examples
    --------
    >>> nearest_block(np.arange(16, dtype=np.uint8).reshape(1, 4, 4), 2, 2).tolist()
    [[[5, 7], [13, 15]]]
    """
    rows = np.minimum(((np.arange(height) + 0.5) * block.shape[1] / height).astype(int), block.shape[1] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * block.shape[2] / width).astype(int), block.shape[2] - 1)
    return block[:, rows][:, :, cols]


def _check(source: Size, target: Size, key: str) -> None:
    if target.width > source.width or target.height > source.height:
        raise ConfigError(f"size {key!r} is not smaller than {source.width}x{source.height}")
    if abs(target.width * source.height - target.height * source.width) > max(source.width, source.height):
        raise ConfigError(f"size {key!r} has another aspect ratio than {source.width}x{source.height}")


def derive(
    dest: str,
    source_size: str,
    sizes: Iterable[int | str],
    *,
    client: Any = None,
    scheduler: str | None = None,
    workers: int | None = None,
    storage_options: dict[str, Any] | None = None,
) -> DeriveReport:
    """Add smaller sizes to a presized zarr or npy output, computed from ``source_size`` (e.g. ``224x224``).

    ``client``, ``scheduler`` and ``workers`` choose where, as for :func:`imgtools.presize` (see
    :func:`imgtools.cluster.where_to_run`); each chunk of images is one task.

    Examples
    --------
    >>> derive("photos.zarr", "224x224", [112, 64])          # doctest: +SKIP
    """
    with where_to_run(client, scheduler, workers) as where:  # a named scheduler is reached before DEST is read
        return _derive(dest, source_size, sizes, where, storage_options)


def _derive(dest: str, source_size: str, sizes: Iterable[int | str], where: Placement,
            storage_options: dict[str, Any] | None) -> DeriveReport:
    """derive() once where it runs is decided."""
    started = time.perf_counter()
    info, sink = _open(dest, storage_options)
    with sink.ledger.lock.hold() as lock:  # refuses a DEST another run writes; heartbeats while this one works
        info = _reread(sink, info)
        return _derive_locked(info, sink, source_size, sizes, where, lock, started)


def _reread(sink: Sink, info: OutputInfo) -> OutputInfo:
    """The attributes as they are now that DEST is locked (another derive may have added sizes)."""
    sink.location.fs.invalidate_cache(sink.location.root)
    return read_info(sink.location) or info


def _derive_locked(info: OutputInfo, sink: Sink, source_size: str, sizes: Iterable[int | str], where: Placement,
                   lock: RunLock, started: float) -> DeriveReport:
    """derive() once DEST is locked for this run."""
    dest, config = sink.url, sink.config
    if source_size not in info.sizes:
        raise ConfigError(f"size {source_size!r} is not in {dest!r} (it has {', '.join(info.sizes)})")
    src = parse_size(source_size)
    targets = [parse_size(s) for s in sizes]
    keys = [t.key(config.mode) for t in targets]
    for t, key in zip(targets, keys):
        _check(src, t, key)
        if key in info.sizes:
            raise ConfigError(f"size {key!r} is already in {dest!r}")
    channels = int(config.channels)
    images = _load(sink, source_size, src, info.n, channels=channels)
    alpha = channels == 4  # filtered premultiplied, so transparent pixels' colour never bleeds
    pixels = images.astype(np.float32)
    if alpha:
        pixels = pixels.map_blocks(premultiply_block, dtype=np.float32)
    writes = []
    for t, key in zip(targets, keys):
        sigma = (0.0, 0.25 * src.height / t.height, 0.25 * src.width / t.width, 0.0)
        smooth = gaussian_filter(pixels, sigma=sigma, mode="nearest")
        out = smooth.map_blocks(resample_block, t.height, t.width, alpha, dtype=np.uint8,
                                chunks=(images.chunks[0], (t.height,), (t.width,), (channels,)))
        writes.append(_store(sink, key, t, out))
        if config.masks:  # labels stay labels: nearest neighbour, no prefilter
            masks = _load(sink, source_size, src, info.n, masks=True)
            small = masks.map_blocks(nearest_block, t.height, t.width, dtype=np.uint8,
                                     chunks=(masks.chunks[0], (t.height,), (t.width,)))
            writes.append(_store(sink, key, t, small, masks=True))
    with where.client(images.numblocks[0]) as dask_client:  # one task per chunk of images
        if dask_client is None:
            dask.compute(writes, scheduler="synchronous")
        else:
            dask_client.compute(writes, sync=True)
    lock.verify()  # not taken over while the arrays were written: list them
    made = {k: {"from": source_size, "sigma": "0.25/scale"} for k in keys}
    sink.write_attrs(dataclasses.replace(info, sizes=info.sizes + keys, derived={**info.derived, **made}).to_attrs())
    return DeriveReport(dest=sink.url, source_size=source_size, sizes=tuple(keys), images=info.n,
                        seconds=time.perf_counter() - started)


def _open(dest: str, storage_options) -> tuple[OutputInfo, Sink]:
    try:
        output = detect(dest, storage_options)
    except SourceError:
        output = None
    if output is None or not output.config.format.is_array:
        raise SourceError(f"DEST {dest!r} is not a complete zarr or npy output of imgtools presize")
    return output.info, output.sink


def _load(sink: Sink, key: str, size: Size, n: int, masks: bool = False, channels: int = 3) -> da.Array:
    chunk = sink.config.chunk
    tail = (size.height, size.width) + (() if masks else (channels,))
    parts = [da.from_delayed(dask.delayed(sink.read_part)(key, i, masks), (min(chunk, n - start),) + tail,
                             dtype=np.uint8)
             for i, start in enumerate(range(0, n, chunk))]
    return da.concatenate(parts)


def _store(sink: Sink, key: str, size: Size, out: da.Array, masks: bool = False):
    sink.create_size(key, out.shape[0], size, masks=masks)
    return [dask.delayed(sink.write_part)(key, i, block, masks) for i, block in enumerate(out.to_delayed().ravel())]
