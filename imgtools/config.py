"""The one frozen configuration object that travels through every stage.

Stages receive a :class:`PresizeConfig` instead of long argument lists. Choices are enums; every value
is checked once, here, and a bad one raises :class:`~imgtools.errors.ConfigError` naming it.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

from .choices import (
    Channels,
    Compression,
    LabelSource,
    OutputFormat,
    Resample,
    ResizeMode,
    ShardImage,
    Size,
    auto_chunk,
    parse_color,
    parse_number,
    parse_size,
    parse_whole,
)
from .errors import ConfigError

__all__ = [
    "ResizeMode",
    "OutputFormat",
    "LabelSource",
    "Resample",
    "Compression",
    "Channels",
    "ShardImage",
    "Size",
    "PresizeConfig",
    "DecodeLimits",
    "parse_size",
    "parse_color",
    "auto_chunk",
    "DEFAULT_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_IMAGE_TIMEOUT",
    "DEFAULT_SHARD_IMAGES",
    "RUN_SETTINGS",
]

#: Pillow format names decoded by default; anything else is refused unless ``formats`` widens the list.
DEFAULT_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
#: Pixels an image may have *as decoded* (after JPEG draft reduction) before it is refused unread.
DEFAULT_MAX_PIXELS = 100_000_000
#: Bytes a file may have before it is refused unread. An image within the default pixel guard takes at most
#: 8 bytes a pixel even uncompressed (16-bit RGBA TIFF: 800 MB); a bigger file is over that guard anyway, or
#: mostly padding (a sparse file, a bomb in an archive), and reading it would cost its size in memory.
DEFAULT_MAX_BYTES = 1 << 30
#: Seconds one image's decode and resize may take before it is failed ("timed out after N s"). The slowest
#: images the default guards let through, 100 megapixels, decode and resize to 64 and 224 in 5.2 s (PNG),
#: 6.4 s (uncompressed TIFF) and 0.9 s (progressive JPEG) on one core of a loaded 2-core machine; 120 s
#: leaves a margin of about 20x, so only a decoder that loops meets it, and it costs its chunk 2 minutes, once.
DEFAULT_IMAGE_TIMEOUT = 120.0
#: Images per WebDataset shard (``--chunk``) when not given. A shard is one chunk, the unit of work and of
#: resume, and a worker holds a chunk's source files in memory at once: 1024 ImageNet-sized JPEGs are about
#: 110 MB, and their shard about 3 MB at 64x64 or 15 MB at 224x224 (JPEG). Bigger shards: a bigger --chunk.
DEFAULT_SHARD_IMAGES = 1024
#: Fields of :class:`PresizeConfig` that decide how a run goes, not what a finished output holds for the
#: images that complete: a run resumed with other values is the same job (a slow machine may raise the
#: time limit and go on).
RUN_SETTINGS: frozenset[str] = frozenset({"image_timeout"})


@dataclasses.dataclass(frozen=True)
class DecodeLimits:
    """What the decode stage needs: the Pillow ``formats`` it may open, the ``max_pixels`` guard, and the
    ``background`` transparency is composited over (for 1 and 3 ``channels``: the channels decoded to, see
    :class:`Channels`). Every :class:`PresizeConfig` has one (:attr:`PresizeConfig.limits`); readers that
    decode without presizing make their own.

    Examples
    --------
    >>> DecodeLimits().max_pixels == DEFAULT_MAX_PIXELS
    True
    """

    formats: tuple[str, ...] = DEFAULT_FORMATS
    max_pixels: int = DEFAULT_MAX_PIXELS
    background: tuple[int, int, int] = (255, 255, 255)
    #: the channels of the decoded pixels (1: Pillow's L, 3: RGB, 4: RGBA)
    channels: Channels = Channels.RGB
    #: images whose shorter side is below this are skipped (0: off); see :meth:`outside`
    min_side: int = 0
    #: images whose long side / short side is above this are skipped (0: off)
    max_aspect: float = 0.0

    def outside(self, width: int, height: int) -> str | None:
        """Why an image of ``width`` x ``height`` (the original, from its header) falls outside the
        write-time filters ``min_side`` / ``max_aspect``, or None when it passes (or they are off).

        Examples
        --------
        >>> limits = DecodeLimits(min_side=64, max_aspect=3)
        >>> limits.outside(100, 48), limits.outside(520, 100), limits.outside(300, 100)
        ('shorter side 48 < --min-side 64', 'aspect 5.2 > --max-aspect 3', None)
        """
        short, long = min(width, height), max(width, height)
        if short < self.min_side:
            return f"shorter side {short} < --min-side {self.min_side}"
        if self.max_aspect and (short == 0 or long > self.max_aspect * short):
            aspect = long / short if short else math.inf
            text = f"{aspect:.4g}"
            if float(text) <= self.max_aspect:  # rounded onto the limit: all the digits
                text = repr(aspect)
            return f"aspect {text} > --max-aspect {self.max_aspect:g}"
        return None


@dataclasses.dataclass(frozen=True)
class PresizeConfig:
    """Everything that decides the output of a presize run; equal configs give identical outputs.

    Build it with :meth:`build` from plain values (strings, ints), which checks each one.

    Examples
    --------
    >>> cfg = PresizeConfig.build(sizes=[64, "320x240"], mode="crop")
    >>> [s.key(cfg.mode) for s in cfg.sizes]
    ['64x64', '320x240']
    """

    sizes: tuple[Size, ...] = (Size(64, 64),)
    mode: ResizeMode = ResizeMode.CROP
    format: OutputFormat = OutputFormat.ZARR
    labels: LabelSource = LabelSource.FOLDER
    chunk: int = 256
    resample: Resample = Resample.BICUBIC
    compression: Compression = Compression.NONE
    background: tuple[int, int, int] = (255, 255, 255)
    pad_color: tuple[int, int, int] = (0, 0, 0)
    only_if_bigger: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    formats: tuple[str, ...] = DEFAULT_FORMATS
    max_bytes: int = DEFAULT_MAX_BYTES
    draft_factor: float = 2.0
    quality: int = 90
    masks: bool = False  #: inputs come with label masks, resized beside the images
    #: seconds an image's decode and resize may take; past it the image fails (see :mod:`imgtools.watchdog`)
    image_timeout: float = DEFAULT_IMAGE_TIMEOUT
    channels: Channels = Channels.RGB  #: 1 (luminance), 3 (RGB) or 4 (RGBA) channels in every output
    #: write-time filters (0: off): an image whose shorter side is below ``min_side`` or whose long/short
    #: ratio is above ``max_aspect`` (at least 1) is a ``skipped`` row, known from its header, never decoded
    min_side: int = 0
    max_aspect: float = 0.0
    #: how the images of ``webdataset`` shards are encoded (jpg, png, webp; jpg and webp at ``quality``)
    shard_image: ShardImage = ShardImage.JPG

    def __post_init__(self) -> None:
        if not self.sizes:
            raise ConfigError("sizes is empty: give at least one --size")
        if len(set(self.sizes)) != len(self.sizes):
            raise ConfigError(f"sizes {[s.key(self.mode) for s in self.sizes]} repeat a size")
        if not 1 <= self.chunk <= 1_000_000:
            raise ConfigError(f"chunk {self.chunk!r} must be between 1 and 1000000")
        if self.max_pixels < 1:
            raise ConfigError(f"max_pixels {self.max_pixels!r} must be positive")
        if self.max_bytes < 1:
            raise ConfigError(f"max_bytes {self.max_bytes!r} must be positive")
        if not 1.0 <= self.draft_factor <= 8.0:
            raise ConfigError(f"draft_factor {self.draft_factor!r} must be between 1 and 8")
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"quality {self.quality!r} must be between 1 and 100")
        if not 0 < self.image_timeout < math.inf:
            raise ConfigError(f"image_timeout {self.image_timeout!r} must be a positive number of seconds")
        if self.min_side < 0:
            raise ConfigError(f"min_side {self.min_side!r} must be 0 (off) or a positive number of pixels")
        if self.max_aspect and not 1.0 <= self.max_aspect < math.inf:
            raise ConfigError(f"max_aspect {self.max_aspect!r} must be 0 (off) or a ratio of at least 1")
        if self.mode.variable and self.format.is_array:
            raise ConfigError(
                f"mode {self.mode.value!r} gives images of varying size, which a {self.format.value!r} "
                "array cannot hold: use --format jpeg|png|webp, or --mode squash|crop|pad"
            )
        if self.mode.variable and any(s.width != s.height for s in self.sizes):
            raise ConfigError(f"mode {self.mode.value!r} takes one number per --size, not WxH")
        if self.channels is Channels.RGBA and self.format is OutputFormat.JPEG:
            raise ConfigError("channels 4 (RGBA) cannot be written as jpeg, which holds no alpha: "
                              "use --format png|webp|zarr|npy, or --channels 1|3")
        if self.shard_image is not ShardImage.JPG and self.format is not OutputFormat.WEBDATASET:
            raise ConfigError(f"shard_image {self.shard_image.value!r} is for --format webdataset only")
        if self.format is OutputFormat.WEBDATASET:
            if self.masks:
                raise ConfigError("masks are not written into webdataset shards: use --format zarr|npy|png")
            if self.channels is Channels.RGBA and self.shard_image is ShardImage.JPG:
                raise ConfigError("channels 4 (RGBA) cannot be written as jpg, which holds no alpha: "
                                  "use --shard-image png|webp, or --channels 1|3")

    @classmethod
    def build(
        cls,
        sizes: Iterable[int | str | Sequence[int] | Size] = (64,),
        mode: str | ResizeMode = ResizeMode.CROP,
        format: str | OutputFormat = OutputFormat.ZARR,
        labels: str | LabelSource = LabelSource.FOLDER,
        chunk: int | None = None,
        resample: str | Resample = Resample.BICUBIC,
        compression: str | Compression = Compression.NONE,
        background: str | Sequence[int] = (255, 255, 255),
        pad_color: str | Sequence[int] = (0, 0, 0),
        only_if_bigger: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        formats: Iterable[str] | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        quality: int = 90,
        masks: bool = False,
        draft_factor: float | str = 2.0,
        image_timeout: float | str = DEFAULT_IMAGE_TIMEOUT,
        channels: int | str | Channels = Channels.RGB,
        min_side: int | str = 0,
        max_aspect: float | str | None = 0.0,
        shard_image: str | ShardImage = ShardImage.JPG,
    ) -> PresizeConfig:
        """Check plain values and build a config; raises ConfigError naming the first bad one.

        Every field of :class:`PresizeConfig` can be given, as its own type or as plain text; ``chunk``
        defaults to :func:`auto_chunk` of the sizes, ``formats`` to :data:`DEFAULT_FORMATS`.
        ``draft_factor`` (1 to 8) is how many times the output's resolution a JPEG is decoded at, at
        least, before resizing (see :func:`imgtools.resize.draft_request`). ``min_side`` (pixels) and
        ``max_aspect`` (a ratio of at least 1) skip images outside them (0 or None: off). A ``webdataset``
        output's ``chunk`` (images per shard) defaults to :data:`DEFAULT_SHARD_IMAGES`.

        Examples
        --------
        >>> PresizeConfig.build(sizes=[224], draft_factor=4).draft_factor
        4.0
        >>> PresizeConfig.build(draft_factor="lots")
        Traceback (most recent call last):
        ...
        imgtools.errors.ConfigError: draft_factor 'lots' is not a number
        >>> PresizeConfig.build(max_aspect=0.5)
        Traceback (most recent call last):
        ...
        imgtools.errors.ConfigError: max_aspect 0.5 must be 0 (off) or a ratio of at least 1
        """
        if isinstance(sizes, (int, str, Size)):
            sizes = [sizes]
        fmts = DEFAULT_FORMATS if formats is None else tuple(dict.fromkeys(f.upper() for f in formats))
        parsed = tuple(parse_size(s) for s in sizes)
        n_channels = Channels.parse(channels)
        output = OutputFormat.parse(format)
        if chunk is None and output is OutputFormat.WEBDATASET:
            chunk = DEFAULT_SHARD_IMAGES
        return cls(
            sizes=parsed,
            mode=ResizeMode.parse(mode),
            format=output,
            labels=LabelSource.parse(labels),
            chunk=int(chunk) if chunk is not None else auto_chunk(parsed, channels=n_channels) if parsed else 256,
            resample=Resample.parse(resample),
            compression=Compression.parse(compression),
            background=parse_color(background),
            pad_color=parse_color(pad_color),
            only_if_bigger=bool(only_if_bigger),
            max_pixels=int(max_pixels),
            formats=fmts,
            max_bytes=int(max_bytes),
            quality=int(quality),
            masks=bool(masks),
            draft_factor=parse_number("draft_factor", draft_factor),
            image_timeout=parse_number("image_timeout", image_timeout),
            channels=n_channels,
            min_side=parse_whole("min_side", min_side),
            max_aspect=0.0 if max_aspect is None else parse_number("max_aspect", max_aspect),
            shard_image=ShardImage.parse(shard_image),
        )

    @property
    def limits(self) -> DecodeLimits:
        """The part of the config the decode stage reads."""
        return DecodeLimits(formats=self.formats, max_pixels=self.max_pixels, background=self.background,
                            channels=self.channels,
                            min_side=self.min_side, max_aspect=self.max_aspect)

    @property
    def image_format(self) -> OutputFormat | None:
        """The image-file format images are encoded in: the output format itself (jpeg, png, webp), that of
        :attr:`shard_image` for ``webdataset`` shards, None for arrays.

        Examples
        --------
        >>> PresizeConfig.build(format="webdataset", shard_image="png").image_format
        <OutputFormat.PNG: 'png'>
        """
        if self.format is OutputFormat.WEBDATASET:
            return self.shard_image.output_format
        return None if self.format.is_array else self.format

    @property
    def size_keys(self) -> list[str]:
        """The output names of the sizes, in order."""
        return [s.key(self.mode) for s in self.sizes]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (enums as strings, sizes as ``WxH``); :meth:`from_dict` inverts it."""
        out = dataclasses.asdict(self)
        out["sizes"] = [f"{s.width}x{s.height}" for s in self.sizes]
        for f in dataclasses.fields(self):
            if isinstance(out[f.name], enum.Enum):
                out[f.name] = out[f.name].value
            elif isinstance(out[f.name], tuple):
                out[f.name] = list(out[f.name])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PresizeConfig:
        """Rebuild a config written by :meth:`to_dict`: ``from_dict(cfg.to_dict()) == cfg``. Keys that
        an older output lacks take their defaults (``draft_factor`` 2).

        Examples
        --------
        >>> cfg = PresizeConfig.build(sizes=[32], draft_factor=4)
        >>> PresizeConfig.from_dict(cfg.to_dict()) == cfg
        True
        >>> PresizeConfig.from_dict({"sizes": ["32x32"]}).draft_factor
        2.0
        """
        return cls.build(**data)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys) used to compare configs between runs."""
        return json.dumps(self.to_dict(), sort_keys=True)
