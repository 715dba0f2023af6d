"""Image-file output (jpeg | png | webp): ``<size>/<relative path>.<ext>`` mirroring SOURCE, and label
masks as PNG in ``<size>-masks/<relative path>.png``.

The presizing cache of the fastai and S3-caching recipes: any size, including the variable ones
(``shortest``, ``longest``). An output that would be the source file's own pixels in the same format is
a copy of the file, not a re-encoding. Markers are trusted by relative path, so adding images to SOURCE
and running again only does the new ones.
"""

from __future__ import annotations

import io
import json
import posixpath
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from ..config import OutputFormat
from ..errors import DestinationError
from .base import Chunk, Sink

__all__ = ["ImageFileSink", "EXTENSIONS", "output_relpath"]

#: Output extension of each image format.
EXTENSIONS = {OutputFormat.JPEG: ".jpg", OutputFormat.PNG: ".png", OutputFormat.WEBP: ".webp"}


def output_relpath(relpath: str, ext: str, index: int | None = None) -> str:
    """The output name of an input: its relative path with ``ext`` (and ``~index`` when two collide).

    Examples
    --------
    >>> output_relpath("cats/a b.JPG", ".jpg"), output_relpath("a.png", ".jpg", 7)
    ('cats/a b.jpg', 'a~7.jpg')
    """
    stem = posixpath.splitext(relpath)[0]
    return f"{stem}~{index}{ext}" if index is not None else f"{stem}{ext}"


class ImageFileSink(Sink):
    """Mirrored image files, one per input and size."""

    format = OutputFormat.JPEG  # set per subclass
    positional = False

    def __init__(self, dest: str, config, storage_options: dict[str, Any] | None = None):
        super().__init__(dest, config, storage_options)
        self.renamed: dict[int, str] = {}

    def _create(self, items: pd.DataFrame) -> None:
        ext = EXTENSIONS[self.config.format]
        names = [output_relpath(r, ext).lower() for r in items["relpath"]]
        seen: set[str] = set()
        for index, relpath, name in zip(items["index"], items["relpath"], names):
            if name in seen:  # e.g. a.png and a.jpg both -> a.jpg: the later one gets its index
                self.renamed[int(index)] = output_relpath(relpath, ext, int(index))
            seen.add(name)

    def _target(self, key: str, index: int, relpath: str, ext: str | None = None) -> str:
        ext = ext or EXTENSIONS[self.config.format]
        name = posixpath.splitext(self.renamed[index])[0] + ext if index in self.renamed else output_relpath(relpath, ext)
        path = posixpath.normpath(self.path(key, name))
        if not path.startswith(self.path(key) + "/"):  # sources never list such a path; never write it
            raise DestinationError(f"input {relpath!r} would be written outside DEST")
        return path

    def _encode(self, arr: np.ndarray) -> bytes:
        buf = io.BytesIO()
        fmt = self.config.format.pillow_format
        params: dict[str, Any] = {"quality": self.config.quality} if fmt in ("JPEG", "WEBP") else {}
        Image.fromarray(arr).save(buf, fmt, **params)
        return buf.getvalue()

    def _write(self, chunk: Chunk) -> None:
        for key in self.config.size_keys:
            for i, (index, relpath) in enumerate(zip(chunk.rows["index"], chunk.rows["relpath"])):
                arr = chunk.images[key][i]
                if arr is None:
                    continue
                data = chunk.data[i] if chunk.unchanged[key][i] else None
                path = self._target(key, int(index), relpath)
                self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
                self.fs.pipe_file(path, data if data is not None else self._encode(arr))
                if self.config.masks and chunk.masks[key][i] is not None:  # lossless, in a sibling tree
                    mask_path = self._target(f"{key}-masks", int(index), relpath, ".png")
                    self.fs.makedirs(posixpath.dirname(mask_path), exist_ok=True)
                    buf = io.BytesIO()
                    Image.fromarray(chunk.masks[key][i]).save(buf, "PNG")
                    self.fs.pipe_file(mask_path, buf.getvalue())

    def _finalize(self, manifest: pd.DataFrame, attrs: dict[str, Any]) -> None:
        self.put("imgtools.json", json.dumps(attrs, sort_keys=True, indent=1).encode())


class JpegSink(ImageFileSink):
    format = OutputFormat.JPEG


class PngSink(ImageFileSink):
    format = OutputFormat.PNG


class WebpSink(ImageFileSink):
    format = OutputFormat.WEBP
