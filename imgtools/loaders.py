"""PyTorch in chunk order: :class:`ChunkStream`, an ``IterableDataset`` of shuffled batches that reads whole
chunks, and :class:`StreamLoader`, a ``DataLoader`` that remembers how far an epoch got.

The order is :class:`~imgtools.order.EpochPlan`'s: deterministic for ``(seed, epoch)`` whatever the number
of DataLoader workers, equal shares for every distributed rank, resumable mid-epoch. This module imports
torch; nothing else in imgtools does.

Conventions (those of Mosaic streaming and LitData): call :meth:`ChunkStream.set_epoch` before each epoch
(as with ``DistributedSampler``; it also clears a resume point); ``state_dict()`` / ``load_state_dict()``
on the loader (or on the stream, given the number of batches consumed) resume an epoch where it stopped.
The epoch and the resume point live in memory shared with the DataLoader's workers, so persistent workers
follow them too.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .errors import ConfigError
from .order import EpochPlan

if TYPE_CHECKING:
    from .readers import Dataset

__all__ = ["ChunkStream", "StreamLoader"]

#: Batches a worker looks ahead to start reading their chunks (remote stores).
LOOKAHEAD = 4


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ChunkStream(IterableDataset):
    """Shuffled ``(x, y)`` batches of one size of a :class:`~imgtools.readers.Dataset` (its ok images),
    read in whole chunks. Give it to ``DataLoader(stream, batch_size=None, num_workers=N)`` or use
    :meth:`loader`. ``x`` is uint8 NHWC (C: the output's channels), or float32 ``(x / 255 - mean) / std`` with
    ``normalize`` (``True``: the defaults for C, :data:`imgtools.kernels.NORMALIZE_DEFAULTS`), in
    ``layout`` NHWC or NCHW; ``y`` is int64 (-1 where there is no label).

    Parameters
    ----------
    dataset : Dataset
        The view to read (size and rows: ``ds.view(size)``; :meth:`Dataset.stream` makes this).
    batch_size : int
    seed, shuffle, drop_last, window_chunks, streams
        See :class:`~imgtools.order.EpochPlan`.
    rank, world_size : int, optional
        This process' place among distributed ranks; from ``torch.distributed`` when it is initialised.

    Examples
    --------
    >>> stream = imgtools.open("out/sample.zarr").stream("64x64", batch_size=64, seed=0)   # doctest: +SKIP
    >>> loader = stream.loader(num_workers=2)                                            # doctest: +SKIP
    >>> for epoch in range(10):                                                          # doctest: +SKIP
    ...     stream.set_epoch(epoch)
    ...     for x, y in loader:
    ...         ...
    """

    def __init__(self, dataset: Dataset, batch_size: int = 64, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = False, rank: int | None = None, world_size: int | None = None,
                 window_chunks: int = 2, streams: int = 12, normalize: tuple[Any, Any] | bool | None = None,
                 layout: str = "NHWC"):
        if not dataset.config.format.is_array:
            raise ConfigError(f"a stream reads zarr or npy outputs; {dataset.dest!r} holds "
                              f"{dataset.config.format.value} files (use the Dataset itself)")
        if layout not in ("NHWC", "NCHW"):
            raise ConfigError(f"layout {layout!r} is not NHWC or NCHW")
        if (rank is None) != (world_size is None):
            raise ConfigError("give rank and world_size together, or neither")
        if rank is None:
            rank, world_size = _dist()
        self.dataset = dataset
        self.plan = EpochPlan(rows=dataset.rows, chunk=dataset.config.chunk, batch_size=int(batch_size),
                              seed=int(seed), shuffle=shuffle, rank=int(rank), world_size=int(world_size),
                              drop_last=drop_last, window_chunks=int(window_chunks), streams=int(streams))
        self.normalize = normalize
        self.layout = layout
        # epoch and resume point, in memory shared with DataLoader workers (persistent ones read it anew
        # at each epoch)
        self._where: Any = multiprocessing.Array("q", [0, 0], lock=False)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if multiprocessing.context.get_spawning_popen() is None:  # a plain pickle, not a worker's start
            state["_where"] = list(self._where)
        return state

    @property
    def epoch(self) -> int:
        """The epoch the next iteration reads."""
        return int(self._where[0])

    @property
    def skip(self) -> int:
        """Canonical batches of this epoch already consumed (a resume point)."""
        return int(self._where[1])

    def __len__(self) -> int:
        """Batches per epoch on this rank (the same on every rank)."""
        return len(self.plan.batches(self.epoch))

    def set_epoch(self, epoch: int) -> None:
        """Read epoch ``epoch`` next, from its start."""
        self._where[:] = [int(epoch), 0]

    def state_dict(self, batches_seen: int) -> dict[str, Any]:
        """Where this epoch is after ``batches_seen`` more batches (counted from the last resume point)."""
        return {"epoch": self.epoch, "batches": self.skip + int(batches_seen), **self._identity()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`: the next iteration yields exactly the rest of that epoch.

        Raises
        ------
        ConfigError
            The state was saved with another seed, batch size, rank or world size.
        """
        for key, value in self._identity().items():
            if state.get(key) != value:
                raise ConfigError(f"state has {key} {state.get(key)!r}, this stream {value!r}")
        self._where[:] = [int(state["epoch"]), int(state["batches"])]

    def _identity(self) -> dict[str, Any]:
        p = self.plan
        return {"seed": p.seed, "batch_size": p.batch_size, "rank": p.rank, "world_size": p.world_size,
                "rows": len(p.rows)}

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, skip = self.epoch, self.skip
        batches = self.plan.batches(epoch)
        # the DataLoader takes batches from workers 0, 1, ... in turn: worker w makes skip + w, skip + w + W, ...
        mine = [batches[j] for j in range(skip + worker, len(batches), workers)]
        for x, y in self.dataset.read_batches(mine, self.normalize, self.layout, LOOKAHEAD):
            yield x, y.astype(np.int64)

    def loader(self, num_workers: int = 0, **options: Any) -> StreamLoader:
        """A :class:`StreamLoader` over this stream (``batch_size=None``: the stream makes the batches).

        Reading a chunk costs about a memory copy, and remote chunks are fetched by threads, so worker
        processes add start-up and a copy of every batch between processes: use them (best persistent)
        when the batches are normalised or the store compressed, not to read faster."""
        return StreamLoader(self, num_workers=num_workers, **options)


class StreamLoader(DataLoader):
    """A ``DataLoader`` over a :class:`ChunkStream` that counts the batches it has handed out, so that
    ``state_dict()`` saves the place in the epoch and ``load_state_dict()`` resumes there.

    Examples
    --------
    >>> loader = ds.stream("64x64", 64).loader(num_workers=2)        # doctest: +SKIP
    >>> state = loader.state_dict()                                  # doctest: +SKIP
    >>> loader.load_state_dict(state)                                # doctest: +SKIP
    """

    def __init__(self, stream: ChunkStream, **options: Any):
        options.setdefault("batch_size", None)
        super().__init__(stream, **options)
        self.stream = stream
        self._seen = 0

    def __iter__(self):
        self._seen = 0
        for batch in super().__iter__():
            self._seen += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """The stream's place: its epoch and the batches of it handed out."""
        return self.stream.state_dict(self._seen)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume the stream where ``state`` was saved."""
        self.stream.load_state_dict(state)
        self._seen = 0

