"""Sinks stage: where results go. One small class per output form behind one interface
(:class:`~imgtools.sinks.base.Sink`), chosen from the :data:`SINKS` registry."""

from __future__ import annotations

from typing import Any

from ..config import OutputFormat, PresizeConfig
from .base import JOB_FILE, LOCK_FILE, MANIFEST, MARKER_DIR, Chunk, Sink
from .files import ImageFileSink, JpegSink, PngSink, WebpSink
from .npy import NpySink
from .zarr_sink import ZarrSink

__all__ = ["Chunk", "Sink", "ZarrSink", "NpySink", "ImageFileSink", "SINKS", "make_sink", "JOB_FILE",
           "LOCK_FILE", "MANIFEST", "MARKER_DIR"]

#: Output forms by format.
SINKS: dict[OutputFormat, type[Sink]] = {
    OutputFormat.ZARR: ZarrSink,
    OutputFormat.NPY: NpySink,
    OutputFormat.JPEG: JpegSink,
    OutputFormat.PNG: PngSink,
    OutputFormat.WEBP: WebpSink,
}


def make_sink(dest: str, config: PresizeConfig, storage_options: dict[str, Any] | None = None) -> Sink:
    """The sink for ``config.format`` writing to ``dest``.

    Examples
    --------
    >>> make_sink("memory://out.zarr", PresizeConfig()).url
    'memory://out.zarr'
    """
    return SINKS[config.format](dest, config, storage_options)
