"""The per-image and per-chunk work: bytes -> every size, and one chunk of inputs -> one chunk of output.

Pure functions over the stages (sources, decode, resize, sinks); nothing here knows of Dask. A failure
of one image is a manifest row with its reason, never an exception out of :func:`process_chunk`.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import logging
import os
import sys
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from . import retry
from .config import PresizeConfig
from .decode import Outside, decode, decode_mask
from .errors import DecodeError
from .resize import draft_request, is_identity, plan, resize_all, resize_mask, transform_points
from .schema import Status, coordinate_column, parse_coordinate_column
from .sinks.base import Chunk, Sink
from .sources import LISTING_ONLY_COLUMNS, PAIRED_COLUMNS, ReadSession, read_bytes, spans_of
from .watchdog import Stuck, Watch, run_watched, timed_out_reason

__all__ = ["ImageResult", "Outcome", "process_image", "process_one", "process_chunk", "run_chunk", "give_up",
           "with_failed", "EXIT_STUCK", "previous_values",
           "result_columns", "manifest_frame", "MANIFEST_COLUMNS", "RESULT_COLUMNS"]

#: Manifest columns, in order.
MANIFEST_COLUMNS = ["index", "origin", "relpath", "label", "label_id", "status", "error", "height", "width", "mode"]
#: The columns an image's processing decides (the rest come from the listing).
RESULT_COLUMNS = ("status", "error", "height", "width", "mode")


@dataclasses.dataclass(frozen=True)
class ImageResult:
    """What became of one image: ``arrays`` by size key when ok, else ``error`` (``skipped``: the reason it
    falls outside the write-time filters, not a failure). ``unchanged`` names the sizes whose output is
    exactly the source file (same pixels, same format): those are copied."""

    arrays: dict[str, np.ndarray] | None
    error: str | None
    height: int = -1
    width: int = -1
    mode: str | None = None
    unchanged: frozenset[str] = frozenset()
    skipped: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def status(self) -> Status:
        """The manifest status: ok, skipped (outside the filters) or failed."""
        return Status.OK if self.ok else Status.SKIPPED if self.skipped else Status.FAILED


def _unchanged(decoded, config: PresizeConfig) -> frozenset[str]:
    if (decoded.format != (config.image_format or config.format).pillow_format or decoded.orientation != 1
            or decoded.mode != config.channels.mode
            or decoded.transparent
            or decoded.pixels.shape[1::-1] != (decoded.width, decoded.height)):
        return frozenset()
    return frozenset(s.key(config.mode) for s in config.sizes
                     if is_identity(decoded.width, decoded.height, s, config))


def process_image(data: bytes | BaseException, config: PresizeConfig) -> ImageResult:
    """Decode once and resize to every size of ``config``; failures come back as ``error``.

    ``data`` may be the exception that reading the file raised; it becomes the reason.

    Examples
    --------
    >>> import io; from PIL import Image
    >>> buf = io.BytesIO(); Image.new("RGB", (90, 60)).save(buf, "JPEG")
    >>> r = process_image(buf.getvalue(), PresizeConfig.build(sizes=[32]))
    >>> r.ok, r.arrays["32x32"].shape, (r.width, r.height, r.mode)
    (True, (32, 32, 3), (90, 60, 'RGB'))
    >>> process_image(b"", PresizeConfig()).error
    'empty file (0 bytes)'
    >>> r = process_image(buf.getvalue(), PresizeConfig.build(sizes=[32], min_side=64))
    >>> r.status.value, r.error, (r.width, r.height)
    ('skipped', 'shorter side 60 < --min-side 64', (90, 60))
    """
    if isinstance(data, BaseException):
        return ImageResult(None, f"read failed: {type(data).__name__}: {data}")
    try:
        decoded = decode(data, config.limits, partial(draft_request, config=config))
    except Outside as exc:  # min_side / max_aspect, from the header: never decoded
        return ImageResult(None, str(exc), exc.height, exc.width, exc.mode, skipped=True)
    except DecodeError as exc:
        return ImageResult(None, str(exc))
    meta: dict[str, Any] = {"height": decoded.height, "width": decoded.width, "mode": decoded.mode}
    for size in config.sizes:  # the pixel guard holds for outputs too (shortest side of a sliver, say)
        w, h = plan(decoded.width, decoded.height, size, config.mode, config.only_if_bigger).canvas
        if w * h > config.max_pixels:
            return ImageResult(None, f"output {w}x{h} = {w * h} pixels is above max_pixels {config.max_pixels}", **meta)
    try:
        arrays = resize_all(decoded.pixels, config, (decoded.width, decoded.height))
    except MemoryError:
        return ImageResult(None, "out of memory while resizing", **meta)
    except Exception as exc:  # a resize failure is this image's, never the run's
        return ImageResult(None, f"resize failed: {type(exc).__name__}: {exc}", **meta)
    return ImageResult(arrays, None, unchanged=_unchanged(decoded, config), **meta)


def pair_targets(result: ImageResult, mask: bytes | BaseException | None, coords: dict[str, str | None],
                 config: PresizeConfig) -> tuple[ImageResult, dict[str, np.ndarray], dict[str, str | None]]:
    """Bring an image's paired targets along its geometry: the mask (nearest neighbour) and the
    ``points`` / ``boxes`` (JSON, pixels of the upright image). Returns the result (failed when a target
    is unusable), the masks by size key, and the moved coordinates as JSON by ``<column>_<size>``."""
    original = (result.width, result.height)
    masks: dict[str, np.ndarray] = {}
    moved: dict[str, str | None] = {f"{c}_{k}": None for c in coords for k in config.size_keys}
    try:
        if config.masks:
            if mask is None:
                raise DecodeError("no mask for this image")
            if isinstance(mask, BaseException):
                raise DecodeError(f"mask read failed: {type(mask).__name__}: {mask}")
            m = decode_mask(mask, config.limits)
            if m.shape != (result.height, result.width):
                raise DecodeError(f"mask is {m.shape[1]}x{m.shape[0]} but the image is {result.width}x{result.height}")
            masks = {s.key(config.mode): resize_mask(m, s, config, original) for s in config.sizes}
        for col, text in coords.items():
            if text is None:
                continue
            width = 4 if col == "boxes" else 2
            try:
                values = np.asarray(json.loads(text), np.float64).reshape(-1, width)
            except (ValueError, TypeError):
                raise DecodeError(f"{col} {text[:40]!r} is not a JSON list of {width}-number lists") from None
            for s in config.sizes:
                out = transform_points(values.reshape(-1, 2), s, config, original)
                if col == "boxes":
                    out = np.clip(out, 0, [s.width, s.height])
                rounded = np.round(out, 3).reshape(-1, width).tolist()
                moved[coordinate_column(col, s.key(config.mode))] = json.dumps(rounded)
    except DecodeError as exc:
        failed = dataclasses.replace(result, arrays=None, error=str(exc), unchanged=frozenset())
        return failed, {}, {k: None for k in moved}
    return result, masks, moved


@dataclasses.dataclass
class Outcome:
    """One image ready for its sink: manifest ``values``, the sink's ``payloads`` and ``masks`` by size."""

    values: dict[str, Any]
    payloads: dict[str, Any]
    masks: dict[str, np.ndarray]


def process_one(raw: bytes | BaseException, mask: bytes | BaseException | None, coords: dict[str, str | None],
                config: PresizeConfig, sink: Sink) -> Outcome:
    """The whole per-image path short of writing: decode, resize, paired targets, the sink's encoding.
    Whatever goes wrong is this image's failure reason.

    Examples
    --------
    >>> from imgtools.sinks import make_sink
    >>> process_one(b"", None, {}, PresizeConfig(), make_sink("memory://x", PresizeConfig())).values["error"]
    'empty file (0 bytes)'
    """
    result, moved, masks = process_image(raw, config), {}, {}
    if result.ok and (config.masks or coords):
        result, masks, moved = pair_targets(result, mask, coords, config)
    payloads: dict[str, Any] = {}
    if result.ok:
        try:
            payloads = {key: sink.encode(arr, raw if key in result.unchanged else None)  # type: ignore[arg-type]
                        for key, arr in result.arrays.items()}  # type: ignore[union-attr]
        except Exception as exc:  # e.g. a side over the output format's limit
            result, masks = dataclasses.replace(result, arrays=None, error=f"encode failed: {exc}"), {}
            moved = {k: None for k in moved}
    values = {"status": result.status.value, "error": result.error,
              "height": result.height, "width": result.width, "mode": result.mode, **moved}
    return Outcome(values, payloads, masks)


def previous_values(previous: pd.DataFrame | None) -> dict[str, dict[str, Any]]:
    """Result columns of earlier manifest rows by ``relpath`` (what an image's processing decided;
    ``index``, ``origin`` and labels always come from the current listing)."""
    if previous is None or previous.empty:
        return {}
    columns = result_columns(previous)
    return {rel: {c: values[k] for c, values in columns.items()} for k, rel in enumerate(previous["relpath"])}


def result_columns(rows: pd.DataFrame) -> dict[str, list[Any]]:
    """The columns of manifest rows that an image's processing decided (status, sizes, moved
    coordinates), in row order, missing values as None."""
    return {c: [None if pd.isna(v) else v for v in rows[c]]
            for c in rows.columns if c in RESULT_COLUMNS or _is_moved(c)}


def _is_moved(column: str) -> bool:
    return parse_coordinate_column(column) is not None


def process_chunk(items: pd.DataFrame, chunk_index: int, config: PresizeConfig, sink: Sink,
                  reuse: pd.DataFrame | None = None, *, session: ReadSession | None = None,
                  watch: Watch | None = None) -> pd.DataFrame:
    """Read, decode, resize and write one chunk of inputs (listing rows); returns its manifest rows.

    The bytes of the whole chunk (and of its masks) are fetched in one batched call, so remote sources
    are read concurrently. Images whose ``relpath`` is in ``reuse`` (earlier manifest rows) keep their
    earlier result and are neither read nor written again. The sink writes the chunk, then its marker.
    The chunk is read in ``session`` (from :func:`~imgtools.sources.reading`, which holds the storage
    options), so that the chunks of one task go on through a compressed tar's stream; without one, in a
    session of its own with no storage options. Each image's decode and resize is marked on ``watch``
    (by ``relpath``) for the per-image time limit: see :func:`imgtools.watchdog.run_watched`.
    """
    items = items.reset_index(drop=True)
    n, keys = len(items), config.size_keys
    paired = [c for c in PAIRED_COLUMNS if c in items.columns]
    known = previous_values(reuse)
    too_big = _over_max_bytes(items, config.max_bytes)
    relpaths = items["relpath"].tolist()  # plain lists: no pandas lookups per image
    todo = [i for i, rel in enumerate(relpaths) if rel not in known and i not in too_big]
    mask_column = items["mask"].tolist() if config.masks else []
    mask_of = {i: mask_column[i] for i in todo if config.masks and isinstance(mask_column[i], str)}
    coord_columns = {c: [None if pd.isna(v) else v for v in items[c]] for c in paired}
    spans = spans_of(items.iloc[todo])
    origins = list(items["origin"].iloc[todo]) + list(mask_of.values())
    spans = None if spans is None else spans + [None] * len(mask_of)
    read = session.read if session is not None else read_bytes
    got = read(origins, spans=spans) if todo else []
    fetched, mask_bytes = dict(zip(todo, got[: len(todo)])), dict(zip(mask_of, got[len(todo) :]))
    payloads: dict[str, list[Any]] = {k: [None] * n for k in keys}
    masks: dict[str, list[np.ndarray | None]] = {k: [None] * n for k in keys} if config.masks else {}
    names = list(RESULT_COLUMNS) + [coordinate_column(c, k) for c in paired for k in keys]
    columns: dict[str, list[Any]] = {c: [None] * n for c in names}
    for i in range(n):
        if i in too_big:
            values = too_big[i]
        elif i in fetched:
            coords = {c: values_[i] for c, values_ in coord_columns.items()}
            if watch is not None:
                watch.begin(relpaths[i])
            try:
                outcome = process_one(fetched.pop(i), mask_bytes.pop(i, None), coords, config, sink)
            finally:
                if watch is not None:
                    watch.end()  # raises Abandoned when it ran past the limit: nothing is written
            values = outcome.values
            for key in outcome.payloads:
                payloads[key][i] = outcome.payloads[key]
            for key in outcome.masks:
                masks[key][i] = outcome.masks[key]
        else:
            values = known[relpaths[i]]
        for c in names:
            columns[c][i] = values.get(c)
    rows = manifest_frame(items.assign(**columns))
    chunk = Chunk(index=chunk_index, start=int(items["index"].iloc[0]), rows=rows, images=payloads, masks=masks)
    # whole chunk objects: safe to redo
    retry.call(lambda: sink.write(chunk), f"writing chunk {chunk_index} to {sink.url}")
    return rows


#: The exit status of a worker process ended because an image's work was stuck past the time limit.
EXIT_STUCK = 75


def run_chunk(items: pd.DataFrame, chunk_index: int, config: PresizeConfig, sink: Sink,
              reuse: pd.DataFrame | None = None, *, session: ReadSession | None = None,
              timed_out: dict[str, str] | None = None, restart: bool = False) -> int:
    """:func:`process_chunk` under the per-image time limit ``config.image_timeout`` (see
    :mod:`imgtools.watchdog`); returns the chunk's row count.

    ``timed_out`` (relpath -> reason) are images an earlier try left past the limit: failed rows, never
    decoded again. An image past the limit now is recorded in the ledger of ``sink``
    (:meth:`~imgtools.sinks.ledger.RunLedger.record_timeouts`); then the chunk is done again without it
    in a fresh thread, the stuck one abandoned; or, with ``restart`` (a worker process that is started
    again when it ends, whose retry of the chunk reads the record), this process ends with
    :data:`EXIT_STUCK`, and the stuck thread with it.

    Examples
    --------
    >>> from imgtools.sinks import make_sink
    >>> cfg = PresizeConfig.build(sizes=[8], image_timeout=30)
    >>> items = pd.DataFrame({"index": [0], "origin": ["memory://nowhere.png"], "relpath": ["nowhere.png"],
    ...                       "label": [None], "label_id": [-1]})
    >>> sink = make_sink("memory://imgtools-doc/run-chunk", cfg); sink.prepare(len(items), {"n": 1})
    >>> run_chunk(items, 0, cfg, sink, timed_out={"nowhere.png": "timed out after 30 s"})
    1
    >>> sink.ledger.read_marker(0)["error"].tolist()
    ['timed out after 30 s']
    """
    reasons = dict(timed_out or {})
    _warm(config)  # a process's one-time costs (the kernels loaded or compiled) are not an image's time

    def work(watch: Watch) -> int:
        return len(process_chunk(items, chunk_index, config, sink, with_failed(reuse, reasons), session=session,
                                 watch=watch))

    return run_watched(work, config.image_timeout, give_up(sink, chunk_index, config, reasons, restart))


@functools.lru_cache(maxsize=8)
def _warm(config: PresizeConfig) -> None:
    """One tiny image through decode and resize with ``config``, once per process and config."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (128, 64, 32)).save(buf, "PNG")
    process_image(buf.getvalue(), dataclasses.replace(config, formats=("PNG",)))


def give_up(sink: Sink, chunk_index: int, config: PresizeConfig, reasons: dict[str, str], restart: bool):
    """The ``on_stuck`` of :func:`~imgtools.watchdog.run_watched` for images of chunk ``chunk_index``: add
    the image to ``reasons``, record it in the ledger, and with ``restart`` end this process."""

    def on_stuck(stuck: Stuck) -> None:
        reasons[stuck.key] = timed_out_reason(config.image_timeout)
        try:
            retry.call(lambda: sink.ledger.record_timeouts(chunk_index, {stuck.key: reasons[stuck.key]}),
                       f"recording that {stuck.key!r} timed out in {sink.url}")
        finally:
            if restart:
                logging.getLogger(__name__).error("chunk %d: %r ran past %g s: recorded as failed; ending this "
                                                  "process to be started again", chunk_index, stuck.key,
                                                  config.image_timeout)
                sys.stderr.flush()
                os._exit(EXIT_STUCK)

    return on_stuck


def with_failed(reuse: pd.DataFrame | None, reasons: dict[str, str]) -> pd.DataFrame | None:
    """``reuse`` (earlier rows, see :func:`process_chunk`) with the images of ``reasons`` (relpath ->
    reason: past the time limit, killing their worker) as failed rows, in place of any earlier row of theirs.

    Examples
    --------
    >>> with_failed(None, {"a.png": "timed out after 1 s"})[["relpath", "status", "error"]].values.tolist()
    [['a.png', 'failed', 'timed out after 1 s']]
    """
    if not reasons:
        return reuse
    rows = pd.DataFrame({"relpath": list(reasons), "status": Status.FAILED.value, "error": list(reasons.values()),
                         "height": -1, "width": -1, "mode": None})
    return rows if reuse is None else pd.concat([reuse[~reuse["relpath"].isin(reasons)], rows], ignore_index=True)


def _over_max_bytes(items: pd.DataFrame, max_bytes: int) -> dict[int, dict[str, Any]]:
    """Rows (by position) whose listed length is over ``max_bytes``, as failed results: never read."""
    if "bytes" not in items.columns:
        return {}
    lengths = items["bytes"].to_numpy()
    return {int(i): {"status": Status.FAILED.value, "height": -1, "width": -1, "mode": None,
                     "error": f"file is {int(lengths[i])} bytes, above max_bytes {max_bytes}"}
            for i in np.flatnonzero(lengths > max_bytes)}


def manifest_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """Manifest columns in their order and dtypes; paired-target columns (``mask``, ``points``,
    ``points_<size>``, ...) follow as text."""
    extra = [c for c in rows.columns if c not in MANIFEST_COLUMNS and c != "chunk" and c not in LISTING_ONLY_COLUMNS]
    out = rows[MANIFEST_COLUMNS + extra].copy()
    for col in extra:
        out[col] = out[col].astype("string")
    out["index"] = out["index"].astype("int64")
    for col in ("origin", "relpath", "label", "status", "error", "mode"):
        out[col] = out[col].astype("string")
    out["label_id"] = out["label_id"].astype("int32")
    out["height"] = out["height"].astype("int32")
    out["width"] = out["width"].astype("int32")
    return out
