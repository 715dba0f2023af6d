"""The inputs of a run as the pipeline plans it: SOURCE's listing as parts in DEST (the one an interrupted
run left there, or listed now: :mod:`imgtools.listparts`), and its chunks, done and still to do, grouped
into tasks (:mod:`imgtools.plan`). A positional output without an append holds no input's row on the
client: its chunks done are the complete done markers, by number, and its tasks runs of chunk numbers;
appends, image-file outputs and compressed tars read through hold the rows (``items``). Nothing here
knows of Dask.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from .append import Extension, reuse_base
from .config import PresizeConfig
from .engine import with_failed
from .folders import Mapper
from .listparts import ListingParts, listing_request, part_lengths, read_listing, write_listing
from .location import Location
from .plan import MAX_TASKS, ChunkJob, group_runs, group_tasks, plan_chunks

__all__ = ["list_inputs", "RunInputs"]


def list_inputs(source: str | list[str], location: Location, config: PresizeConfig,
                storage_options: dict[str, Any] | None, masks: str | None, relist: bool = False,
                append: bool = False, mapper: Mapper | None = None) -> ListingParts:
    """SOURCE's listing as parts in DEST: the one an interrupted run of the same request left there (not
    with ``relist``, nor for an append, which compares SOURCE as it is now), or listed now (on the
    workers ``mapper`` maps over, when given)."""
    request = listing_request(source, config.labels, masks)
    found = None if relist or append else read_listing(location, request)
    if found is not None:
        return found
    return write_listing(source, location, config.labels, storage_options, masks, mapper=mapper)


class RunInputs:
    """The inputs of a run and its chunks: the listing's ``parts`` (rows in DEST), and ``items`` when the
    run holds every row (otherwise a chunk is done when its marker is complete, nothing else is read).

    Examples
    --------
    >>> inputs = RunInputs(list_inputs("photos/", sink.location, config, None, None), config.chunk)  # doctest: +SKIP
    >>> finished, todo = inputs.plan(sink, None)                                                     # doctest: +SKIP
    """

    def __init__(self, parts, chunk: int, items: pd.DataFrame | None = None, label_names=None, lengths=None):
        self.parts, self.chunk, self.items = parts, chunk, items
        self.n = len(parts) if items is None else len(items)
        self.chunks = math.ceil(self.n / chunk)
        self.label_names = parts.label_names if label_names is None else label_names
        self._lengths = lengths

    def rows_of(self, k: int) -> int:
        return min(self.chunk, self.n - k * self.chunk)

    def rows_done(self, finished: dict[int, pd.DataFrame | None]) -> int:
        return sum(self.rows_of(k) for k in finished)

    def plan(self, sink, extension: Extension | None) -> tuple[dict[int, pd.DataFrame | None], list[ChunkJob]]:
        """(finished chunks -> their rows, or None to be read from their markers; chunks still to do)."""
        if self.items is None:
            done = sink.done_chunks(self.rows_of)
            return dict.fromkeys(sorted(done)), [ChunkJob(k, None) for k in range(self.chunks) if k not in done]
        finished, todo = plan_chunks(self.items, self.chunk, sink.done_rows(), sink.positional)
        if extension is not None:  # the base rows of its last chunk are carried over, never read
            todo = reuse_base(todo, extension, self.chunk)
        return finished, _with_recorded_timeouts(todo, sink.ledger.all_timeouts())  # a resumed run never retries them

    def reused(self, todo: list[ChunkJob]) -> bool:
        """Whether some chunk still to do reuses rows an earlier run finished."""
        return any(job.reuse is not None for job in todo)

    def tasks(self, todo: list[ChunkJob]) -> list[list[ChunkJob]]:
        if self.items is None:
            return group_runs(todo, MAX_TASKS)
        return group_tasks(todo, self.items, self.chunk)

    def lengths(self, location) -> Iterator[np.ndarray]:
        """The listed length of every row, part after part (read from the listing's parts when the run
        holds no rows)."""
        if self._lengths is not None:
            return iter([self._lengths])
        if self.items is not None:
            return iter([self.items["bytes"].to_numpy()])
        return part_lengths(location, self.parts)


def _with_recorded_timeouts(todo: list[ChunkJob], records: dict[int, dict[str, str]]) -> list[ChunkJob]:
    """The jobs with the images an earlier run recorded past the time limit (by relpath, whatever chunk they
    were in) among their reused rows."""
    if not records:
        return todo
    reasons = {rel: why for found in records.values() for rel, why in found.items()}
    return [job._replace(reuse=with_failed(job.reuse, {r: reasons[r] for r in job.items["relpath"] if r in reasons}))
            for job in todo]
