"""Pictures for people: a PNG written to any path or URL (the contact sheet, inspect's histogram)."""

from __future__ import annotations

import io
import posixpath
from typing import Any

from PIL import Image

__all__ = ["save_png"]


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
