"""Planning a run: the listed inputs cut into chunks (done or still to do), chunks grouped into tasks, and
what a run would write, for ``presize --dry-run``.

Chunk ``k`` is always inputs ``k * chunk`` to ``(k + 1) * chunk - 1``, however the run is split, so the
output is the same whatever the number of tasks. Consecutive chunks share a task when a compressed tar
is read through from one to the next, and when there would be more than :data:`MAX_TASKS` tasks (the
scheduler's cost grows with the task count, not with the images). Nothing here knows of Dask.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import pandas as pd

from .config import OutputFormat, PresizeConfig
from .engine import manifest_frame, result_columns
from .schema import final_mask
from .sources import stream_group

__all__ = ["ChunkJob", "plan_chunks", "group_tasks", "group_runs", "chunks_per_task", "task_count", "RunPlan",
           "estimate_bytes", "MAX_TASKS", "FEW_TASKS", "CHUNKS_PER_TASK"]

#: A run never has many more tasks than this: chunks are grouped (100M images of chunk 256 make 390,625
#: chunks but 20,000 tasks), which keeps the task graph and the scheduler's work small.
MAX_TASKS = 20_000
#: Up to this many chunks, a task is one chunk (progress moves chunk by chunk); a run of more has tasks of
#: several chunks, at least this many tasks and at most one per :data:`CHUNKS_PER_TASK` chunks beyond it: a
#: task costs the scheduler (in the client's process on a local cluster) some 20 KB whatever its size
#: (benchmarks/RESULTS.md, scaling), and 300,000 tiny images made 1,172 tasks of a tenth of a second.
FEW_TASKS = 256
CHUNKS_PER_TASK = 8


def chunks_per_task(chunks: int, max_tasks: int = MAX_TASKS) -> int:
    """How many consecutive chunks a task takes in a run of ``chunks`` chunks (see :data:`FEW_TASKS`).

    Examples
    --------
    >>> chunks_per_task(118), chunks_per_task(1172), chunks_per_task(390_625)
    (1, 5, 20)
    """
    tasks = min(chunks, max(min(FEW_TASKS, max_tasks), min(max_tasks, math.ceil(chunks / CHUNKS_PER_TASK))))
    return max(1, math.ceil(chunks / max(1, tasks)))
#: Bytes a pixel of an image file takes, roughly, by output format (photographs; JPEG and WebP at the
#: default quality): the dry run's estimate. Arrays are exact (uncompressed).
_BYTES_PER_PIXEL = {OutputFormat.JPEG: 0.3, OutputFormat.WEBP: 0.2, OutputFormat.PNG: 1.6}


class ChunkJob(NamedTuple):
    """One chunk still to do: its number, its inputs (None in a task sent to a cluster: the worker reads
    them from the listing in DEST), and rows an earlier run finished that it reuses."""

    index: int
    items: pd.DataFrame | None
    reuse: pd.DataFrame | None = None


def plan_chunks(items: pd.DataFrame, chunk: int, done: pd.DataFrame,
                positional: bool) -> tuple[dict[int, pd.DataFrame], list[ChunkJob]]:
    """Split the inputs into chunks: those an earlier run finished (their manifest rows rebuilt from the
    listing and the done markers' results, by chunk number) and those still to do.

    ``done`` holds the markers' rows with a ``chunk`` column (:meth:`~imgtools.sinks.base.Sink.done_rows`).
    ``positional`` outputs (arrays) trust a marker whose rows are the chunk's, in order; image-file outputs
    also reuse, image by image, the ok and skipped rows of earlier runs whatever chunk they were in (failed
    ones are tried again).

    Examples
    --------
    >>> items = pd.DataFrame({"index": range(5), "relpath": list("abcde")})
    >>> finished, todo = plan_chunks(items, 2, pd.DataFrame({"chunk": [], "relpath": []}), positional=True)
    >>> finished, [(job.index, len(job.items)) for job in todo]
    ({}, [(0, 2), (1, 2), (2, 1)])
    """
    markers = {int(c): g for c, g in done.groupby("chunk")}
    reusable = None if positional or done.empty else done[final_mask(done)]  # failures are retried, skips kept
    parts: dict[int, pd.DataFrame] = {}
    todo: list[ChunkJob] = []
    for i, start in enumerate(range(0, len(items), chunk)):
        part = items.iloc[start : start + chunk]
        marker = markers.get(i)
        if (marker is not None and len(marker) == len(part)
                and (marker["relpath"].to_numpy() == part["relpath"].to_numpy()).all()
                and (positional or final_mask(marker).all())):
            # the marker's rows are the chunk's, in order: take them by position (a relpath may repeat)
            parts[i] = manifest_frame(part.assign(**result_columns(marker)))
            continue
        reuse = None if reusable is None else reusable[reusable["relpath"].isin(part["relpath"])]
        todo.append(ChunkJob(i, part, None if reuse is None or reuse.empty else reuse))
    return parts, todo


def group_tasks(todo: list[ChunkJob], items: pd.DataFrame, chunk: int,
                max_tasks: int = MAX_TASKS) -> list[list[ChunkJob]]:
    """Chunks grouped into tasks, in order. One chunk a task, except that

    - a chunk that goes on reading the compressed tar its predecessor ended in joins that task, when
      reaching its first member afresh would mean decompressing at least a chunk's worth of members
      before it (so a big ``.tar.gz`` is decompressed once, in order, and small ones still run side by side);
    - with more than :data:`FEW_TASKS` chunks, runs of consecutive chunks make one task
      (:func:`chunks_per_task`), so that there are at most about ``max_tasks``.

    Examples
    --------
    >>> items = pd.DataFrame({"index": range(10), "origin": [f"{i}.jpg" for i in range(10)]})
    >>> todo = [ChunkJob(k, items.iloc[k * 2 : k * 2 + 2]) for k in range(5)]
    >>> [[job.index for job in task] for task in group_tasks(todo, items, 2, max_tasks=2)]
    [[0, 1, 2], [3, 4]]
    """
    starts = functools.cache(lambda: _stream_starts(items))  # found only when a compressed tar needs it
    per_task = chunks_per_task(len(todo), max_tasks)
    tasks: list[list[ChunkJob]] = []
    last = None
    for job in todo:
        part = job.items
        first = stream_group(part["origin"].iloc[0])
        follows = (tasks and first is not None and first == last
                   and int(part["index"].iloc[0]) - starts()[first] >= chunk)
        if follows or (tasks and len(tasks[-1]) < per_task):
            tasks[-1].append(job)
        else:
            tasks.append([job])
        last = stream_group(part["origin"].iloc[-1])
    return tasks


def group_runs(todo: list[ChunkJob], max_tasks: int = MAX_TASKS) -> list[list[ChunkJob]]:
    """Chunks grouped into tasks of consecutive chunks (:func:`chunks_per_task`), in order, at most about
    ``max_tasks`` tasks (inputs that read no compressed tar: see :func:`group_tasks` for those).

    Examples
    --------
    >>> [[job.index for job in task] for task in group_runs([ChunkJob(k, None) for k in range(5)], max_tasks=2)]
    [[0, 1, 2], [3, 4]]
    """
    per_task = chunks_per_task(len(todo), max_tasks)
    return [todo[i : i + per_task] for i in range(0, len(todo), per_task)]


def task_count(chunks: int, max_tasks: int = MAX_TASKS) -> int:
    """How many tasks :func:`group_tasks` makes of ``chunks`` chunks that read no compressed tar.

    Examples
    --------
    >>> task_count(100), task_count(390_625)
    (100, 19532)
    """
    return math.ceil(chunks / chunks_per_task(chunks, max_tasks))


def _stream_starts(items: pd.DataFrame) -> dict[str, int]:
    """stream group (see :func:`~imgtools.sources.stream_group`) -> listing index of its first input."""
    starts: dict[str, int] = {}
    for index, origin in zip(items["index"], items["origin"]):
        group = stream_group(origin)
        if group is not None:
            starts.setdefault(group, int(index))
    return starts


def estimate_bytes(config: PresizeConfig, n: int) -> dict[str, int]:
    """Bytes the output of ``n`` images takes, by size key: exact for uncompressed arrays (an upper bound
    when compressed), an estimate for image files; the sizes of ``shortest`` / ``longest`` are taken as
    squares of the side.

    Examples
    --------
    >>> estimate_bytes(PresizeConfig.build(sizes=[64]), 1000)
    {'64x64': 12288000}
    """
    channels = int(config.channels)
    per_pixel = channels if config.format.is_array else _BYTES_PER_PIXEL[config.image_format]
    masks = 1 if config.masks else 0
    return {key: int(n * size.width * size.height * (per_pixel + masks))
            for key, size in zip(config.size_keys, config.sizes)}


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What ``presize`` would do, found without writing anything (``--dry-run``): the inputs and labels
    listed, the chunks (and how many an earlier run in DEST finished), the tasks, and the output's size."""

    source: str
    dest: str
    inputs: int
    label_names: tuple[str, ...]
    chunk: int
    chunks: int
    chunks_done: int
    tasks: int
    output_bytes: dict[str, int]
    estimated: bool  #: the output bytes are an estimate (image files, compressed arrays), not exact

    def __str__(self) -> str:
        labels = ", ".join(self.label_names[:8]) + (", ..." if len(self.label_names) > 8 else "")
        sizes = ", ".join(f"{key} {_human(b)}" for key, b in self.output_bytes.items())
        total = _human(sum(self.output_bytes.values()))
        return "\n".join([
            f"dry run: {self.source} -> {self.dest} (nothing written)",
            f"  inputs: {self.inputs}",
            f"  labels: {len(self.label_names)}" + (f" ({labels})" if labels else ""),
            f"  chunks: {self.chunks} of {self.chunk} images, {self.chunks_done} done by an earlier run",
            f"  tasks:  {self.tasks}",
            f"  output: {'about ' if self.estimated else ''}{total} ({sizes})",
        ])


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover - the loop returns at TB
