"""Sinks stage: where results go. One small class per output form (a layout) behind one interface
(:class:`~imgtools.sinks.base.Sink`), each owning the run ledger of its DEST
(:class:`~imgtools.sinks.ledger.RunLedger`), chosen from the :data:`SINKS` registry; :func:`detect` finds
the form of a finished output from its attributes; :func:`read_manifest` reads its manifest, in either
form (:mod:`imgtools.sinks.manifest`)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from ..config import OutputFormat, PresizeConfig
from ..errors import SourceError
from ..location import Location
from ..schema import OutputInfo
from .base import Chunk, Sink
from .files import ImageFileSink
from .ledger import ATTRS_FILE, JOB_FILE, LOCK_FILE, MANIFEST, MARKER_DIR, RunLedger
from .manifest import ManifestRows, manifest_form, manifest_token, read_manifest
from .npy import NpySink
from .webdataset import WebDatasetSink
from .zarr_sink import ZarrSink

__all__ = ["Chunk", "Sink", "RunLedger", "ZarrSink", "NpySink", "ImageFileSink", "SINKS", "make_sink", "detect",
           "WebDatasetSink", "Output", "read_info", "ManifestRows", "read_manifest", "manifest_form",
           "manifest_token", "JOB_FILE", "LOCK_FILE", "MANIFEST", "MARKER_DIR", "ATTRS_FILE"]

#: Output forms by format.
SINKS: dict[OutputFormat, type[Sink]] = {
    OutputFormat.ZARR: ZarrSink,
    OutputFormat.NPY: NpySink,
    OutputFormat.JPEG: ImageFileSink,
    OutputFormat.PNG: ImageFileSink,
    OutputFormat.WEBP: ImageFileSink,
    OutputFormat.WEBDATASET: WebDatasetSink,
}


def make_sink(dest: str | Location, config: PresizeConfig, storage_options: dict[str, Any] | None = None) -> Sink:
    """The sink for ``config.format`` writing to ``dest`` (a URL, or a location resolved already).

    Examples
    --------
    >>> make_sink("memory://out.zarr", PresizeConfig()).url
    'memory://out.zarr'
    """
    return SINKS[config.format](dest, config, storage_options)


def read_info(location: Location) -> OutputInfo | None:
    """The ``imgtools`` attributes of an output at ``location`` (zarr keeps them in its group's
    ``zarr.json``, the other forms in ``imgtools.json``), or None when there are none."""
    for name, pick in ((ATTRS_FILE, lambda d: d), ("zarr.json", lambda d: d.get("attributes") or {})):
        try:
            info = OutputInfo.from_attrs(pick(json.loads(location.fs.cat_file(location.path(name)))))
        except (FileNotFoundError, ValueError, TypeError):
            continue
        if info is not None:
            return info
    return None


@dataclasses.dataclass(frozen=True)
class Output:
    """A finished output: where it is, its ``imgtools`` attributes, the config that wrote it, and its
    layout (a sink made for that config)."""

    location: Location
    info: OutputInfo
    config: PresizeConfig
    sink: Sink


def detect(dest: str | Location, storage_options: dict[str, Any] | None = None) -> Output:
    """The finished output at ``dest``: its form, from its attributes.

    Raises
    ------
    SourceError
        ``dest`` holds no complete imgtools output (no attributes or no manifest).

    Examples
    --------
    >>> detect("out/sample.zarr").config.format               # doctest: +SKIP
    <OutputFormat.ZARR: 'zarr'>
    """
    location = dest if isinstance(dest, Location) else Location.resolve(str(dest), storage_options)
    info = read_info(location)
    if info is None or manifest_form(location) is None:
        raise SourceError(f"DEST {location.url!r} is not a complete imgtools output (no manifest and attributes)")
    config = PresizeConfig.from_dict(info.config)
    return Output(location, info, config, make_sink(location, config))
