"""The values a configuration is made of: choices (enums, each parsed from its text), sizes, colours and
numbers, each parsed from plain values with a :class:`~imgtools.errors.ConfigError` that names a bad one.
:mod:`imgtools.config` builds :class:`~imgtools.config.PresizeConfig` from them (and re-exports them).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from .errors import ConfigError

__all__ = ["ResizeMode", "OutputFormat", "ShardImage", "LabelSource", "Resample", "Compression", "Channels", "Size",
           "parse_size", "parse_color", "parse_number", "parse_whole", "auto_chunk"]


_C = TypeVar("_C", bound="_Choice")


class _Choice(str, enum.Enum):
    """A string enum whose lookup error names the bad value and the allowed ones."""

    @classmethod
    def parse(cls: type[_C], value: Any) -> _C:
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            allowed = "|".join(m.value for m in cls)
            raise ConfigError(f"{cls._label()} {value!r} is not one of {allowed}") from None

    @classmethod
    def _label(cls) -> str:
        return re.sub(r"(?<!^)(?=[A-Z])", " ", cls.__name__).lower()

    def __str__(self) -> str:
        return self.value


class ResizeMode(_Choice):
    """How an image meets its target size."""

    SQUASH = "squash"  #: stretch to exactly W x H
    CROP = "crop"  #: shortest side to the target, then a centre crop
    PAD = "pad"  #: fit inside W x H, pad the rest with ``pad_color``
    SHORTEST = "shortest"  #: shortest side to N, keep the aspect (variable size)
    LONGEST = "longest"  #: longest side to N, keep the aspect (variable size)

    @property
    def variable(self) -> bool:
        """True when the output size depends on the image (needs an image-file format)."""
        return self in (ResizeMode.SHORTEST, ResizeMode.LONGEST)


class OutputFormat(_Choice):
    """Where and how results are written."""

    ZARR = "zarr"
    NPY = "npy"
    JPEG = "jpeg"
    PNG = "png"
    WEBP = "webp"
    WEBDATASET = "webdataset"  #: tar shards of samples (image, label, metadata): see :mod:`imgtools.sinks.webdataset`

    @property
    def is_array(self) -> bool:
        """True for fixed-shape array stores (zarr, npy)."""
        return self in (OutputFormat.ZARR, OutputFormat.NPY)

    @property
    def pillow_format(self) -> str | None:
        """The Pillow format of an image-file output (``JPEG``, ``PNG``, ``WEBP``); None for arrays and shards
        (whose images are in :attr:`PresizeConfig.shard_image`)."""
        return None if self.is_array or self is OutputFormat.WEBDATASET else self.value.upper()


class ShardImage(_Choice):
    """How the images of WebDataset shards are encoded: the extension of each sample's image member."""

    JPG = "jpg"  #: the default
    PNG = "png"  #: lossless
    WEBP = "webp"

    @property
    def output_format(self) -> OutputFormat:
        """The image-file format of the same encoding (``jpg`` -> ``jpeg``)."""
        return OutputFormat.JPEG if self is ShardImage.JPG else OutputFormat(self.value)


class LabelSource(_Choice):
    """Where labels come from when listing a folder."""

    FOLDER = "folder"  #: the first folder level under SOURCE
    NONE = "none"


class Resample(_Choice):
    """The antialiased resampling filter used for downscaling."""

    BICUBIC = "bicubic"  #: the default: passes the quality floor at 60% of LANCZOS' cost
    LANCZOS = "lanczos"


class Compression(_Choice):
    """The codec of zarr chunks. Natural photos barely compress (Blosc LZ4 saves 9% on ImageNet photos at
    64 and 224 pixels), and a chunk stored as it is lets one image be read as one byte range, so random
    access costs one image instead of a whole chunk: that is the default."""

    NONE = "none"  #: the default: pixels as they are, byte-addressable (random access costs one image)
    LZ4 = "lz4"  #: Blosc LZ4: about 4x faster to write than zstd for 2-12% more bytes
    ZSTD = "zstd"


class Channels(enum.IntEnum):
    """The channels of every output image: luminance, RGB (the default) or RGBA.

    ``GRAY`` is Pillow's ``L`` (ITU-R 601-2 luma, ``Image.convert("L")`` exactly) of the decoded image, taken
    after transparency is composited over the background and before resizing; ``RGBA`` keeps the alpha
    (an image without one gets 255) and is resized premultiplied, as Pillow resizes RGBA.

    Examples
    --------
    >>> Channels.parse("1"), Channels.RGBA.mode
    (<Channels.GRAY: 1>, 'RGBA')
    """

    GRAY = 1
    RGB = 3
    RGBA = 4

    @classmethod
    def parse(cls, value: Any) -> Channels:
        """``1``, ``3``, ``4`` (or their text) as a :class:`Channels`; anything else raises ConfigError."""
        if isinstance(value, cls):
            return value
        try:
            if isinstance(value, bool):
                raise ValueError(value)
            return cls(int(str(value).strip()))
        except ValueError:
            raise ConfigError(f"channels {value!r} is not one of 1|3|4") from None

    @property
    def mode(self) -> str:
        """The Pillow mode of an image with these channels: ``L``, ``RGB`` or ``RGBA``."""
        return {1: "L", 3: "RGB", 4: "RGBA"}[self.value]


@dataclasses.dataclass(frozen=True, order=True)
class Size:
    """One target size: ``width`` x ``height`` pixels (for shortest/longest, ``width == height == N``)."""

    width: int
    height: int

    def key(self, mode: ResizeMode) -> str:
        """The name of this size in the output: ``64x64``, ``short160`` or ``long512``."""
        if mode is ResizeMode.SHORTEST:
            return f"short{self.width}"
        if mode is ResizeMode.LONGEST:
            return f"long{self.width}"
        return f"{self.width}x{self.height}"


_SIZE_RE = re.compile(r"^\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*$")


def parse_size(value: int | str | Sequence[int] | Size) -> Size:
    """Parse ``64``, ``"64"``, ``"320x240"`` (width x height) or ``(320, 240)`` into a :class:`Size`.

    Examples
    --------
    >>> parse_size("320x240")
    Size(width=320, height=240)
    >>> parse_size(64)
    Size(width=64, height=64)
    """
    if isinstance(value, Size):
        w, h = value.width, value.height
    elif isinstance(value, bool):
        raise ConfigError(f"size {value!r} is not N or WxH")
    elif isinstance(value, int):
        w = h = value
    elif isinstance(value, str):
        m = _SIZE_RE.match(value)
        if not m:
            raise ConfigError(f"size {value!r} is not N or WxH")
        w = int(m.group(1))
        h = int(m.group(2) or m.group(1))
    elif isinstance(value, Sequence) and len(value) == 2:
        w, h = (int(v) for v in value)
    else:
        raise ConfigError(f"size {value!r} is not N or WxH")
    if not (1 <= w <= 65535 and 1 <= h <= 65535):
        raise ConfigError(f"size {value!r} must be between 1 and 65535 pixels a side")
    return Size(w, h)


_NAMED_COLORS = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128), "grey": (128, 128, 128)}


def parse_color(value: str | Sequence[int]) -> tuple[int, int, int]:
    """Parse ``"white"``, ``"#ff8800"``, ``"255,136,0"`` or ``(255, 136, 0)`` into an RGB tuple.

    Examples
    --------
    >>> parse_color("#ff8800")
    (255, 136, 0)
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _NAMED_COLORS:
            return _NAMED_COLORS[text]
        if re.fullmatch(r"#[0-9a-f]{6}", text):
            return int(text[1:3], 16), int(text[3:5], 16), int(text[5:7], 16)
        parts = text.split(",")
    else:
        parts = list(value)
    try:
        rgb = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"colour {value!r} is not a name, #rrggbb or r,g,b") from None
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise ConfigError(f"colour {value!r} is not a name, #rrggbb or r,g,b")
    return rgb


def parse_number(name: str, value: float | str) -> float:
    """``value`` as a float, from a number or its text; a bool or anything else raises ConfigError naming ``name``."""
    try:
        if isinstance(value, bool):
            raise TypeError(value)
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} {value!r} is not a number") from None


def parse_whole(name: str, value: int | str) -> int:
    """``value`` as an int, from an int or its text; anything else raises ConfigError naming ``name``."""
    number = parse_number(name, value)
    if not number.is_integer():
        raise ConfigError(f"{name} {value!r} is not a whole number")
    return int(number)


def auto_chunk(sizes: Iterable[Size], target_bytes: int = 16 << 20, channels: int = 3) -> int:
    """Images per chunk so that a chunk of the largest size (``channels`` bytes a pixel) holds about
    ``target_bytes`` (16 MiB): a power of two between 16 and 256.

    Examples
    --------
    >>> auto_chunk([Size(64, 64)]), auto_chunk([Size(224, 224)]), auto_chunk([Size(1024, 1024)])
    (256, 64, 16)
    """
    largest = max(s.width * s.height * int(channels) for s in sizes)
    return int(min(256, max(16, 2 ** math.floor(math.log2(max(target_bytes // largest, 1))))))
