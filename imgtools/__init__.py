"""imgtools: presize image datasets for machine learning, at any scale, from a notebook or a shell.

Examples
--------
>>> import imgtools
>>> report = imgtools.presize("photos/", "photos.zarr", sizes=[64, 224], mode="crop")  # doctest: +SKIP
"""

from __future__ import annotations

from ._version import __version__
from .config import OutputFormat, PresizeConfig, ResizeMode, Size
from .errors import ConfigError, DecodeError, DestinationError, ImgtoolsError, SourceError, UnsupportedError
from .inspect import InspectReport, inspect
from .pipeline import PresizeReport, presize
from .readers import Dataset, open  # noqa: A004
from .spark import from_array, read_images, to_array

__all__ = [
    "__version__",
    "presize",
    "inspect",
    "InspectReport",
    "open",
    "Dataset",
    "read_images",
    "to_array",
    "from_array",
    "PresizeReport",
    "PresizeConfig",
    "ResizeMode",
    "OutputFormat",
    "Size",
    "ImgtoolsError",
    "ConfigError",
    "SourceError",
    "DestinationError",
    "DecodeError",
    "UnsupportedError",
]
