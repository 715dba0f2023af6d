"""imgtools: presize image datasets for machine learning, at any scale, from a notebook or a shell.

Examples
--------
>>> import imgtools
>>> report = imgtools.presize("photos/", "photos.zarr", sizes=[64, 224], mode="crop")  # doctest: +SKIP
"""

from __future__ import annotations

from ._version import __version__

from .config import PresizeConfig, ResizeMode, OutputFormat, Size  # noqa: E402
from .errors import ConfigError, DecodeError, DestinationError, ImgtoolsError, SourceError, UnsupportedError  # noqa: E402
from .inspect import InspectReport, inspect  # noqa: E402
from .pipeline import PresizeReport, presize  # noqa: E402
from .readers import Dataset, open  # noqa: E402,A004
from .spark import from_array, read_images, to_array  # noqa: E402

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
