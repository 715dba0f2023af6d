"""Image-file output (jpeg | png | webp): ``<size>/<relative path>.<ext>`` mirroring SOURCE, and label
masks as PNG in ``<size>-masks/<relative path>.png``.

The presizing cache of the fastai and S3-caching recipes: any size, including the variable ones
(``shortest``, ``longest``). An input keeps its name when its extension already names the output format
(``a.JPG`` -> ``a.JPG``), else gains the format's (``a.png`` -> ``a.png.jpg``). An output that would be the
source file's own pixels in the same format is a copy of the file, not a re-encoding. Markers are trusted
by relative path, so adding images to SOURCE and running again only does the new ones.

Files hold the channels of ``config.channels``: ``L``, RGB or RGBA (jpeg holds no alpha, so the config refuses
4 with jpeg; WebP has no grey, so Pillow stores ``L`` as RGB there, and it is read back as ``L``).
"""

from __future__ import annotations

import io
import posixpath
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from ..config import OutputFormat
from ..errors import ConfigError, DestinationError
from .base import Chunk, Sink

__all__ = ["ImageFileSink", "EXTENSIONS", "output_relpath"]

#: Extensions that already name each output format; the first is the one given to other inputs.
EXTENSIONS = {
    OutputFormat.JPEG: (".jpg", ".jpeg", ".jpe", ".jfif"),
    OutputFormat.PNG: (".png",),
    OutputFormat.WEBP: (".webp",),
}


def output_relpath(relpath: str, fmt: OutputFormat) -> str:
    """The output name of an input: its relative path when that already has an extension of ``fmt``,
    else the path with the format's extension added. A pure function of the path, so names never depend on
    what else is listed; inputs whose names would meet are refused before a run (:meth:`ImageFileSink._check_items`).

    Examples
    --------
    >>> output_relpath("cats/a b.JPG", OutputFormat.JPEG), output_relpath("cats/a.png", OutputFormat.JPEG)
    ('cats/a b.JPG', 'cats/a.png.jpg')
    """
    exts = EXTENSIONS[fmt]
    return relpath if posixpath.splitext(relpath)[1].lower() in exts else relpath + exts[0]


class ImageFileSink(Sink):
    """Mirrored image files, one per input and size, in ``config.format`` (jpeg, png or webp)."""

    positional = False

    def _target(self, key: str, relpath: str, fmt: OutputFormat | None = None) -> str:
        target = posixpath.normpath(posixpath.join(key, output_relpath(relpath, fmt or self.config.format)))
        if not target.startswith(key + "/"):  # sources never list such a path; never write it
            raise DestinationError(f"input {relpath!r} would be written outside DEST")
        return target

    def _check_items(self, items: pd.DataFrame) -> None:
        """Two different inputs that would be written to one file (the same path in two shards, ``./a``
        and ``a``, ``a.png`` beside ``a.png.jpg``, one image listed with two masks, ``x.jpg`` beside
        ``x.jpg.png`` in the PNG tree of masks) are refused, naming both; the same input twice is one file."""
        seen: dict[str, tuple] = {}
        masks = items["mask"] if "mask" in items.columns else [None] * len(items)
        for origin, relpath, mask in zip(items["origin"], items["relpath"], masks):
            names = [output_relpath(relpath, self.config.format)]
            if self.config.masks:
                names.append(f"{output_relpath(relpath, OutputFormat.PNG)} (mask)")
            for name in names:
                first = seen.setdefault(name, (origin, mask))
                if first == (origin, mask):
                    continue
                what = (f"{origin!r} with masks {first[1]!r} and {mask!r}" if first[0] == origin
                        else f"{first[0]!r} and {origin!r}")
                raise ConfigError(f"inputs {what} would both be written to {name!r}: image-file outputs are named "
                                  "by relative path; make the paths unique, or write zarr/npy")

    def encode(self, image: np.ndarray, original: bytes | None = None) -> bytes:
        """The output file: the source file itself when it is already these pixels in this format."""
        if original is not None:
            return original
        buf = io.BytesIO()
        fmt = self.config.format.pillow_format
        params: dict[str, Any] = {"quality": self.config.quality} if fmt in ("JPEG", "WEBP") else {}
        Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(buf, fmt, **params)
        return buf.getvalue()

    def _write(self, chunk: Chunk) -> None:
        files: dict[str, bytes] = {}
        for key in self.config.size_keys:
            for i, relpath in enumerate(chunk.rows["relpath"]):
                if chunk.images[key][i] is not None:
                    files[self._target(key, relpath)] = chunk.images[key][i]
                mask = chunk.masks[key][i] if self.config.masks else None
                if mask is not None:  # lossless, in a sibling tree
                    files[self._target(f"{key}-masks", relpath, OutputFormat.PNG)] = _png(mask)
        self.put_all(files)


def _png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, "PNG")
    return buf.getvalue()

