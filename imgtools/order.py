"""The order of one training epoch in whole chunks: which rows each batch holds, for each rank, and which
DataLoader worker makes it. Pure NumPy; :mod:`imgtools.loaders` puts PyTorch around it.

Contract (for a given ``EpochPlan`` and ``epoch``):

1. The chunks that hold the rows are shuffled (``seed``, ``epoch``); the rows, chunk after chunk, form one
   sequence, cut into ``world_size`` equal contiguous shares (padded by wrapping round to the first rows, or
   cut short with ``drop_last``), so every rank gets the same number of rows and of batches (DDP never waits
   for a rank that has run out) and reads mostly its own chunks.
2. A rank's share is cut into windows of about ``window_chunks`` chunks (a whole number of batches); rows are
   shuffled within a window and the window is cut into batches.
3. The batches are dealt into ``streams`` contiguous segments and the canonical order takes one batch from
   each segment in turn. Worker ``w`` of ``W`` makes the canonical batches ``j`` with ``j % W == w``; as
   PyTorch's DataLoader takes batches from its workers in turn, the order it yields is the canonical one
   whatever ``W``; when ``W`` divides ``streams``, each worker reads only the chunks of its own segments.
4. Resuming after ``n`` batches yields exactly canonical batches ``n, n + 1, ...`` (worker ``w`` then makes
   ``n + w, n + w + W, ...``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .errors import ConfigError

__all__ = ["EpochPlan"]


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """How to cut ``rows`` (manifest rows, stored ``chunk`` to a chunk) into batches for one rank.

    Examples
    --------
    >>> plan = EpochPlan(rows=np.arange(10), chunk=4, batch_size=3, rank=1, world_size=2)
    >>> [b.tolist() for b in plan.batches(epoch=0)]
    [[5, 4, 6], [3, 7]]
    >>> sorted(sum((b.tolist() for r in (0, 1) for b in dataclasses.replace(plan, rank=r).batches(0)), []))
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    """

    rows: np.ndarray
    chunk: int
    batch_size: int
    seed: int = 0
    shuffle: bool = True
    rank: int = 0
    world_size: int = 1
    drop_last: bool = False
    window_chunks: int = 2
    streams: int = 12

    def __post_init__(self) -> None:
        for name in ("chunk", "batch_size", "world_size", "window_chunks", "streams"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} {getattr(self, name)!r} must be at least 1")
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"rank {self.rank!r} is not in 0..{self.world_size - 1}")
        if self.drop_last and len(self.rows) < self.world_size:
            raise ConfigError(f"{len(self.rows)} rows cannot be shared among {self.world_size} ranks")

    def share(self, epoch: int) -> np.ndarray:
        """This rank's rows for ``epoch``, in chunk order (chunks shuffled)."""
        rows = np.asarray(self.rows, np.int64)
        if not len(rows):
            return rows
        chunks = rows // self.chunk
        order = np.unique(chunks)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(order)
        rank_of = np.empty(int(order.max()) + 1, np.int64)
        rank_of[order] = np.arange(len(order))
        seq = rows[np.argsort(rank_of[chunks], kind="stable")]
        if self.drop_last:
            per = len(seq) // self.world_size
        else:
            per = -(-len(seq) // self.world_size)
            seq = np.resize(seq, per * self.world_size)  # wraps round to the first rows
        return seq[self.rank * per : (self.rank + 1) * per]

    def batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's batches for ``epoch``, in canonical order."""
        seq = self.share(epoch)
        window = self.batch_size * max(1, round(self.window_chunks * self.chunk / self.batch_size))
        rng = np.random.default_rng([self.seed, epoch, self.rank, 1])
        flat: list[np.ndarray] = []
        for start in range(0, len(seq), window):
            win = seq[start : start + window]
            if self.shuffle:
                win = rng.permutation(win)
            flat += [win[b : b + self.batch_size] for b in range(0, len(win), self.batch_size)]
        if self.drop_last and flat and len(flat[-1]) < self.batch_size:
            flat.pop()
        bounds = np.linspace(0, len(flat), min(self.streams, max(len(flat), 1)) + 1).astype(int)
        segments = [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        return [seg[t] for t in range(max(map(len, segments), default=0)) for seg in segments if t < len(seg)]

    def chunks_of(self, batch: np.ndarray) -> np.ndarray:
        """The chunks a batch reads."""
        return np.unique(np.asarray(batch) // self.chunk)
