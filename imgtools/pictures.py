"""Pictures for people: a PNG written to any path or URL (the contact sheet, inspect's histogram), and
the thumbnail of a stored image of any channels (L, RGB, RGBA) for a contact sheet."""

from __future__ import annotations

import io
import posixpath
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["save_png", "thumbnail"]


def thumbnail(pixels: np.ndarray, side: int) -> Image.Image:
    """An (H, W, C) uint8 image (C = 1, 3 or 4) as a Pillow image of mode ``L``, ``RGB`` or ``RGBA``, shrunk
    to fit ``side`` x ``side``; paste an RGBA one with itself as the mask to show it over the sheet.

    Examples
    --------
    >>> thumbnail(np.zeros((40, 20, 1), np.uint8), 10).mode, thumbnail(np.zeros((40, 20, 4), np.uint8), 10).size
    ('L', (5, 10))
    """
    arr = np.asarray(pixels)
    tile = Image.fromarray(arr[:, :, 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr)
    tile.thumbnail((side, side))
    return tile


def save_png(image: Image.Image, url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Write ``image`` as a PNG to a path or URL, making its folder when missing.

    Examples
    --------
    >>> save_png(Image.new("RGB", (4, 4)), "memory://imgtools-doc/sheet.png")
    """
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(str(url), **dict(storage_options or {}))
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    fs.pipe_file(path, buf.getvalue())
