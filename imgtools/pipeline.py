"""presize(): list, partition into whole chunks on a Dask bag, run, gather the manifest, report.

The only stage that knows of Dask. Each partition of the bag is one chunk of inputs; a worker reads,
decodes, resizes and writes its chunk itself, and only manifest rows come back to the client.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from ._version import __version__
from .append import Extension, plan_append, record_lengths
from .cluster import Placement, dashboard_link, where_to_run
from .config import Compression, PresizeConfig, Size
from .engine import give_up, process_one, run_chunk, with_failed
from .errors import ConfigError
from .inputs import RunInputs, list_inputs
from .listparts import chunk_rows, drop_listing, load_listing, write_rows
from .location import Location
from .memory import tune_allocator
from .plan import ChunkJob, RunPlan, estimate_bytes, group_tasks, plan_chunks, task_count
from .schema import ManifestTally, OutputInfo, Status
from .sinks import ManifestRows, make_sink
from .sources import PAIRED_COLUMNS, list_source, read_bytes, reading, source_columns, spans_of, summarize_source
from .watchdog import Watch, run_watched

__all__ = ["presize", "dry_run", "PresizeReport"]


@dataclasses.dataclass(frozen=True)
class PresizeReport:
    """The outcome of a run: counts, time, where the result is, and the failures (``origin``, ``error``).
    ``ok + failed + skipped == total``; ``skipped`` images fell outside ``min_side`` / ``max_aspect`` (their
    reasons are in the manifest, not in ``failures``)."""

    dest: str
    total: int
    ok: int
    failed: int
    skipped: int
    seconds: float
    chunks_done: int
    chunks_resumed: int
    processed: int
    sizes: tuple[str, ...]
    failures: pd.DataFrame
    #: with ``append``: how many inputs were appended (None: not an append), and the origins of the inputs
    #: DEST holds that changed or vanished since (kept as they were, with ``allow_changed``)
    appended: int | None = None
    changed: tuple[str, ...] = ()
    vanished: tuple[str, ...] = ()

    @property
    def images_per_second(self) -> float:
        """Images processed in this run per second of wall time (resumed ones excluded)."""
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        stale = (f"; {len(self.changed)} changed and {len(self.vanished)} vanished inputs kept as they were"
                 if self.changed or self.vanished else "")
        if self.appended == 0:
            return f"nothing new to append: {self.total} images in {self.dest} already{stale}"
        resumed = f", {self.chunks_resumed} chunks resumed" if self.chunks_resumed else ""
        resumed += f", {self.appended} appended{stale}" if self.appended else ""
        return (f"{self.total} images: {self.ok} ok, {self.failed} failed, {self.skipped} skipped; "
                f"{self.processed} processed in "
                f"{self.seconds:.1f} s ({self.images_per_second:.0f} images/s){resumed} -> {self.dest}")


def _job(config: PresizeConfig, n: int, digest: str) -> dict[str, Any]:
    """The job record: config and inputs (their number and :func:`~imgtools.listparts.rows_digest`)."""
    return {"config": config.to_dict(), "n": n, "inputs": digest, "imgtools": __version__}


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc="presize", disable=not enabled, file=sys.stderr, smoothing=0.1)


def presize(
    source: str,
    dest: str,
    sizes: Iterable[int | str | Sequence[int] | Size] | None = None,
    mode: str | None = None,
    format: str | None = None,
    *,
    config: PresizeConfig | None = None,
    client: Any = None,
    scheduler: str | None = None,
    workers: int | None = None,
    storage_options: dict[str, Any] | None = None,
    masks: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    append: bool = False,
    allow_changed: bool = False,
    relist: bool = False,
) -> PresizeReport:
    """Presize every image under ``source`` into ``dest``.

    Parameters
    ----------
    source : str
        Folder or URL (listed recursively), or a ``.csv`` / ``.parquet`` manifest with a ``path`` column.
    dest : str
        Folder or URL for the output; created when missing. Re-running the same job resumes.
    sizes, mode, format
        Shortcuts for the most used settings (default ``[64]``, ``"crop"``, ``"zarr"``); for everything
        else pass ``config=PresizeConfig.build(...)`` (then leave these out).
    client : distributed.Client, optional
        Run on this client. Otherwise ``scheduler`` (an address), the current default client, or a new
        local cluster of ``workers`` processes (one per core by default), closed at the end; a job of one
        chunk runs in this process then, as starting a cluster would take longer than the work.
        ``workers=0`` runs everything in this process, without Dask (debugging, tiny jobs).
    storage_options : dict, optional
        fsspec options for ``source`` and ``dest`` (credentials, endpoints).
    masks : str, optional
        A folder of label masks paired with the images by relative path (a manifest can instead have a
        ``mask`` column); they are resized with their image's geometry, nearest neighbour. A manifest's
        ``points`` / ``boxes`` columns are moved the same way into ``points_<size>`` / ``boxes_<size>``.
    overwrite : bool
        Delete an earlier output at ``dest`` (only one imgtools wrote) and start again.
    progress : bool
        Show a progress bar and the dashboard link.
    append : bool
        Add the inputs ``dest`` does not hold yet after its rows, leaving them as they are (same config as
        ``dest``'s; a ``dest`` with no finished output is a normal run): see :mod:`imgtools.append`.
    allow_changed : bool
        With ``append``: append even though inputs ``dest`` holds changed or vanished since (their rows
        stay as they are; the report lists them), instead of refusing.
    relist : bool
        List SOURCE again even where an interrupted run of the same job left its listing in DEST (a resumed
        run takes that listing by default: files added to SOURCE since are not seen then).

    Returns
    -------
    PresizeReport

    Examples
    --------
    >>> report = presize("photos/", "photos.zarr", sizes=[64, 224], mode="crop")   # doctest: +SKIP
    >>> print(report)                                                               # doctest: +SKIP
    1000 images: 998 ok, 2 failed, 0 skipped; 1000 processed in 3.1 s (322 images/s) -> photos.zarr
    """
    config = _build_config(config, sizes, mode, format)
    if append and overwrite:
        raise ConfigError("--append keeps DEST's rows and --overwrite deletes them: give one of them")
    if allow_changed and not append:
        raise ConfigError("--allow-changed goes with --append")
    with where_to_run(client, scheduler, workers) as where:  # a named scheduler is reached before DEST is touched
        return _presize(source, dest, config, where, storage_options, masks, overwrite, progress,
                        append, allow_changed, relist)


def _config_for(config: PresizeConfig, columns: Sequence[str]) -> PresizeConfig:
    """The config with masks on when the listing (of these ``columns``) pairs images with masks."""
    if "mask" in columns and not config.masks:
        return dataclasses.replace(config, masks=True)
    if config.masks and "mask" not in columns:
        raise ConfigError("config asks for masks but SOURCE has no 'mask' column and no masks folder was given")
    return config


def dry_run(
    source: str,
    dest: str,
    sizes: Iterable[int | str | Sequence[int] | Size] | None = None,
    mode: str | None = None,
    format: str | None = None,
    *,
    config: PresizeConfig | None = None,
    storage_options: dict[str, Any] | None = None,
    masks: str | None = None,
) -> RunPlan:
    """What :func:`presize` with the same arguments would do, without writing anything: lists SOURCE,
    checks that the output form can hold the inputs, reads which chunks an earlier run in DEST finished,
    and plans chunks and tasks (see :class:`~imgtools.plan.RunPlan`). Runs in this process. A manifest
    presized to arrays is read batch by batch and never held (10,000,000 rows in a few hundred MB); its
    chunks done are those with a done marker in DEST.

    Examples
    --------
    >>> print(dry_run("photos/", "photos.zarr", sizes=[64, 224]))     # doctest: +SKIP
    dry run: photos/ -> photos.zarr (nothing written)
      inputs: 1000
      ...
    """
    config = _build_config(config, sizes, mode, format)
    summary = summarize_source(source, config.labels, storage_options) if masks is None else None
    if (summary is not None and config.format.is_array and not config.masks and not summary.streams
            and "mask" not in summary.columns):  # a manifest of any length: counted, never held
        sink = make_sink(dest, config, storage_options)
        chunks = math.ceil(summary.inputs / config.chunk)
        done = len({k for k in sink.ledger.marker_indices() if k < chunks})
        return RunPlan(source=summary.source, dest=sink.url, inputs=summary.inputs, label_names=summary.label_names,
                       chunk=config.chunk, chunks=chunks, chunks_done=done, tasks=task_count(chunks - done),
                       output_bytes=estimate_bytes(config, summary.inputs),
                       estimated=config.compression is not Compression.NONE)
    listing = list_source(source, config.labels, storage_options, masks=masks)
    items = listing.items
    config = _config_for(config, tuple(items.columns))
    sink = make_sink(dest, config, storage_options)
    sink.check_items(items)
    finished, todo = plan_chunks(items, config.chunk, sink.done_rows(), sink.positional)
    return RunPlan(source=listing.source, dest=sink.url, inputs=len(items), label_names=listing.label_names,
                   chunk=config.chunk, chunks=len(finished) + len(todo), chunks_done=len(finished),
                   tasks=len(group_tasks(todo, items, config.chunk)), output_bytes=estimate_bytes(config, len(items)),
                   estimated=not config.format.is_array or config.compression is not Compression.NONE)


def _build_config(config, sizes, mode, format) -> PresizeConfig:
    if config is None:
        return PresizeConfig.build(sizes=sizes if sizes is not None else (64,), mode=mode or "crop",
                                   format=format or "zarr")
    if sizes is not None or mode is not None or format is not None:
        raise TypeError("give either config= or sizes/mode/format, not both")
    return config


def _presize(source, dest, config, where: Placement, storage_options, masks, overwrite, progress,
             append=False, allow_changed=False, relist=False) -> PresizeReport:
    """presize() once where it runs is decided: DEST locked, SOURCE listed into it as parts, planned, run."""
    started = time.perf_counter()
    config = _config_for(config, source_columns(source, storage_options) + (("mask",) if masks else ()))
    sink = make_sink(dest, config, storage_options)
    ledger = sink.ledger
    ledger.open(overwrite)
    with ledger.lock.hold():  # a heartbeat from the listing on; a run whose lock was taken over cannot complete DEST
        try:
            # on the cluster's workers, if there is one (and it sees SOURCE where it is on this machine's disk)
            mapper = where.mapper("imgtools-listing", this_disk=_on_this_disk(source, storage_options))
            parts = list_inputs(source, ledger.location, config, storage_options, masks, relist, append, mapper=mapper)
            run = RunInputs(parts, config.chunk) if sink.positional and not append and not parts.streams else None
            extension = None
            if run is None:  # every row held: appends, image-file outputs, compressed tars read through
                listing = load_listing(ledger.location, parts)
                sink.check_items(listing.items)
                run = RunInputs(parts, config.chunk, listing.items)
                extension = plan_append(listing, sink, config, allow_changed) if append else None
                if extension is not None and not extension.new:
                    drop_listing(ledger.location)
                    ledger.abandon()
                    return _nothing_new(sink, config, extension, started)
                if extension is not None:  # DEST's rows, then the new inputs; the base's manifest kept until the end
                    run = RunInputs(write_rows(ledger.location, extension.items, parts.source, {"append": True}),
                               config.chunk, extension.items, extension.label_names, extension.lengths)
                    extension.start(sink)
            sink.prepare(run.n, _job(config, run.n, run.parts.digest), overwrite=overwrite,
                         keep=None if extension is None else extension.base)
        except BaseException:  # DEST as it was (a DEST this run made is removed)
            drop_listing(ledger.location)
            ledger.abandon()
            raise
        finished, todo = run.plan(sink, extension)
        bar = _progress(run.n, progress)
        bar.update(run.rows_done(finished))
        listing = run.parts.id
        with where.client(len(todo)) as dask_client:
            if dask_client is not None:  # tasks report counts; their rows stay in the markers they wrote
                _run_on_dask(todo, run, config, storage_options, sink, bar, dask_client, progress)
            else:  # in this process: asked for, one chunk of work (less than starting a cluster), or none
                with reading(storage_options) as session:  # one thread: a compressed tar's stream goes on
                    for job in todo:
                        rows = _rows_of(job, sink, config.chunk, listing)
                        run_chunk(rows, job.index, config, sink, job.reuse, session=session,
                                  timed_out=sink.ledger.timeouts(job.index))
                        bar.update(len(rows))
        bar.close()
        record_lengths(sink, run.lengths(ledger.location))  # what the next append compares with
        drop_listing(ledger.location)
        earlier = OutputInfo.from_attrs(sink.read_attrs()) if finished or run.reused(todo) else None
        derived = earlier.derived if earlier is not None else {}  # sizes `imgtools derive` added stay listed
        info = OutputInfo(version=__version__, config=config.to_dict(), n=run.n,
                          label_names=list(run.label_names), source=parts.source,
                          sizes=config.size_keys + [k for k in derived if k not in config.size_keys], derived=derived)
        # the manifest from the markers (and the rows held): one file, or a long run's parts written by tasks on the
        # workers of the cluster the run was given (a cluster started for this job alone is closed by now: here)
        tally = sink.finalize(ManifestRows(run.n, config.chunk, finished), info.to_attrs(),
                              where.mapper("imgtools-manifest"))
    if extension is not None:
        extension.finish(sink)
    if tally.rows != run.n:
        raise RuntimeError(f"internal error: {tally.rows} manifest rows for {run.n} inputs")
    processed = sum(run.rows_of(job.index) - (0 if job.reuse is None else len(job.reuse)) for job in todo)
    return _report(sink, config, tally, started, chunks_done=len(todo), chunks_resumed=len(finished),
                   processed=processed, **_appended(extension))


def _on_this_disk(source: str | list[str], storage_options: dict[str, Any] | None) -> bool:
    """Whether SOURCE is a path on this machine's disk (its listing needs workers that see it)."""
    try:
        return isinstance(source, str) and Location.resolve(source, storage_options).local
    except Exception:  # listing it says what is wrong
        return False


def _report(sink, config: PresizeConfig, tally: ManifestTally, started: float, **fields: Any) -> PresizeReport:
    """The report of a run whose manifest ``tally`` counted, with its run ``fields`` (chunks, processed, ...)."""
    failed = tally.failed.reset_index(drop=True)
    return PresizeReport(dest=sink.url, total=tally.rows, ok=tally.rows - len(failed) - tally.skipped,
                         failed=len(failed), skipped=tally.skipped, seconds=time.perf_counter() - started,
                         sizes=tuple(config.size_keys), failures=failed, **fields)


def _appended(extension: Extension | None) -> dict[str, Any]:
    """The report's append fields."""
    if extension is None:
        return {}
    return {"appended": extension.new, "changed": tuple(extension.changed["origin"]),
            "vanished": tuple(extension.vanished["origin"])}


def _nothing_new(sink, config: PresizeConfig, extension: Extension, started: float) -> PresizeReport:
    """The report of an append with nothing new: DEST as it is (nothing written)."""
    tally = ManifestTally()
    _ = list(tally.count([extension.base_rows]))
    return _report(sink, config, tally, started, chunks_done=0, chunks_resumed=0, processed=0,
                   **_appended(extension))


def _run_on_dask(todo, run: RunInputs, config, storage_options, sink, bar, dask_client, progress) -> None:
    import dask.bag as db
    from distributed import KilledWorker, as_completed

    if progress:
        link = dashboard_link(dask_client)
        if link:
            bar.write(f"dashboard: {link}", file=sys.stderr)
    # one partition per task of whole chunks: no two tasks ever write the same chunk; a task carries chunk
    # numbers (and rows an earlier run finished), its worker reads the inputs from the listing in DEST
    listing = run.parts.id
    tasks = [[job._replace(items=None) for job in task] for task in run.tasks(todo)]
    bag = db.from_sequence(tasks, npartitions=len(tasks)).map(_run_task, config, sink, storage_options, listing)
    futures = dask_client.compute(bag.to_delayed(), retries=2)
    if progress and _in_notebook():  # Dask's own widget in Jupyter, live beside the dashboard
        from distributed import progress as dask_progress

        with contextlib.suppress(Exception):  # ipywidgets missing: the text bar below still reports
            dask_progress(futures, notebook=True, multi=False)
    task_of = {f.key: task for f, task in zip(futures, tasks)}
    # a result is let go as soon as it is read (its chunks' markers are written): held, a result lives on
    # its worker, and a worker lost later would make the scheduler compute every task it held again
    live = {f.key: f for f in futures}
    pending = as_completed(futures, loop=dask_client.loop)
    del futures
    try:
        for future in pending:
            try:
                counts = [n for group in future.result() for n in group]
            except KilledWorker:  # some file kills the decoder: find it, record it as failed, redo the rest
                counts = [_isolate(dask_client, chunk, config, storage_options, sink, bar, listing)
                          for chunk in task_of[future.key]]
            bar.update(sum(counts))
            del live[future.key]
            future.release()
    finally:
        dask_client.cancel(list(live.values()))


def _run_task(task: list[ChunkJob], config: PresizeConfig, sink, storage_options, listing: str) -> list[int]:
    """One task's chunks, in order, in one thread (a compressed tar's stream goes on between them); the
    number of rows of each (the rows themselves are in the chunks' done markers)."""
    tune_allocator()  # a worker started by Dask's nanny with a fixed malloc threshold
    restart = _worker_restarts()
    with reading(storage_options) as session:  # a retry after a stuck image reads the ledger's record of it
        return [run_chunk(_rows_of(job, sink, config.chunk, listing), job.index, config, sink, job.reuse,
                          session=session, timed_out=sink.ledger.timeouts(job.index), restart=restart) for job in task]


def _worker_restarts() -> bool:
    """Whether this runs in a Dask worker that a nanny starts again when its process ends."""
    from distributed import get_worker

    try:
        return get_worker().nanny is not None
    except ValueError:  # not in a worker
        return False


def _rows_of(job: ChunkJob, sink, chunk: int, listing: str) -> pd.DataFrame:
    """A chunk's inputs: carried by the job, or read from the listing in DEST (``listing``: its id)."""
    return job.items if job.items is not None else chunk_rows(sink.ledger.location, listing, job.index, chunk)


def _in_notebook() -> bool:
    return "ipykernel" in sys.modules and "IPython" in sys.modules


def _probe(row: pd.Series, index: int, config: PresizeConfig, sink, storage_options) -> bool:
    """The whole per-image path for one input of chunk ``index``, keeping nothing, under the time limit:
    does it bring the worker down?"""
    reasons = sink.ledger.timeouts(index)
    if row["relpath"] in reasons:  # past the limit on an earlier try: never again
        return False
    mask = row.get("mask") if config.masks else None
    span = spans_of(row.to_frame().T)
    raw, *rest = read_bytes([row["origin"]] + ([mask] if isinstance(mask, str) else []), storage_options,
                            None if span is None else span + [None] * isinstance(mask, str))
    coords = {c: row[c] for c in PAIRED_COLUMNS if c in row.index and isinstance(row[c], str)}

    def work(watch: Watch) -> bool:
        if row["relpath"] in reasons:  # it just ran past the limit (a worker without a nanny lives on)
            return False
        watch.begin(row["relpath"])
        try:
            return process_one(raw, rest[0] if rest else None, coords, config, sink).values["status"] == Status.OK.value
        finally:
            watch.end()

    return run_watched(work, config.image_timeout, give_up(sink, index, config, reasons, _worker_restarts()))


def _isolate(dask_client, job: ChunkJob, config, storage_options, sink, bar, listing: str) -> int:
    """Run a chunk whose task killed its workers again and again: each image alone, then the chunk
    without the images that kill workers, which become failed rows with that reason."""
    from distributed import KilledWorker, wait

    index, _, reuse = job
    part = _rows_of(job, sink, config.chunk, listing)
    reuse = with_failed(reuse, sink.ledger.timeouts(index))
    done = set() if reuse is None else set(reuse["relpath"])
    suspects = part[~part["relpath"].isin(done)]
    bar.write(f"chunk {index}: a file kills workers; testing its {len(suspects)} images one by one", file=sys.stderr)
    probes = [dask_client.submit(_probe, row, index, config, sink, storage_options, pure=False)
              for _, row in suspects.iterrows()]
    wait(probes)
    killed = [probe.status == "error" and isinstance(probe.exception(), KilledWorker) for probe in probes]
    killers = suspects["relpath"][killed]
    reuse = with_failed(reuse, dict.fromkeys(killers, "the decoder crashed its worker process on every try"))
    try:
        n = dask_client.submit(_run_task, [ChunkJob(index, part, reuse)], config, sink,
                               storage_options, listing, pure=False, retries=2).result()[0]
    except KilledWorker:  # not one file alone: give up on the chunk's images, keep the run
        rest = suspects["relpath"][~suspects["relpath"].isin(killers)]
        reuse = with_failed(reuse, dict.fromkeys(rest, "the worker died while processing this image's chunk"))
        n = dask_client.submit(_run_task, [ChunkJob(index, part, reuse)], config, sink, storage_options,
                               listing, pure=False).result()[0]
    return n
