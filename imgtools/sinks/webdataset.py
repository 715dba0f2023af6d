"""WebDataset output: ``<size>/shard-000000.tar``, one tar shard per chunk and size, which the
``webdataset`` package (and DALI, Ray, NeMo, open_clip's loaders) reads as it is.

Each ok image is one sample of three members, keyed by its manifest index zero-padded to 9 digits
(:func:`sample_key`: no dot, no slash, unique by construction, so keys never collide):

- ``<key>.jpg`` (or ``.png`` / ``.webp``: ``config.shard_image``): the resized image, encoded at
  ``config.quality``; an image already at the size in that format is the source file itself;
- ``<key>.cls``: the label id as decimal text (left out when the input has no label);
- ``<key>.json``: ``index``, ``origin``, ``relpath``, ``label``, ``label_id`` and the original ``height``,
  ``width`` and ``mode``.

Failed and skipped inputs are in the manifest only, never in a shard; a chunk without an ok image is an
empty (valid) tar, so that shards are numbered without gaps (``shard-{000000..000041}.tar``). Members come
in key order with fixed headers (ustar, mtime 0, uid/gid 0, mode 0444), so a run gives the same bytes
every time. A shard is written whole, then its chunk's done marker; a chunk whose marker is there but whose
shard is not (deleted, or lost with a disk) counts as not done, so a run rewrites exactly the missing shards.
The attributes (``imgtools.json``) also name the shards (``webdataset.urls``: a brace pattern per size).
"""

from __future__ import annotations

import io
import json
import math
import posixpath
import tarfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from ..config import OutputFormat
from .base import Chunk, Sink

__all__ = ["WebDatasetSink", "sample_key", "shard_relpath", "shard_bytes", "shard_members", "KEY_DIGITS"]

#: Digits of a sample key: indexes below a billion sort as text in index order (wider past that, still unique).
KEY_DIGITS = 9
#: The fixed mode of every member.
_MODE = 0o444


def sample_key(index: int) -> str:
    """The WebDataset key of manifest row ``index``: digits only, so never a dot or a slash.

    Examples
    --------
    >>> sample_key(42)
    '000000042'
    """
    return f"{int(index):0{KEY_DIGITS}d}"


def shard_relpath(size_key: str, chunk: int) -> str:
    """The shard of chunk ``chunk`` at size ``size_key``, relative to DEST.

    Examples
    --------
    >>> shard_relpath("64x64", 3)
    '64x64/shard-000003.tar'
    """
    return posixpath.join(size_key, f"shard-{chunk:06d}.tar")


def shard_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    """A tar of ``(name, data)`` members in name order, with headers that depend on name and length only.

    Examples
    --------
    >>> shard_bytes([("b.cls", b"1"), ("a.cls", b"0")]) == shard_bytes([("a.cls", b"0"), ("b.cls", b"1")])
    True
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in sorted(members):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, _MODE
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def shard_members(fileobj) -> Iterator[tuple[str, int, int]]:
    """``(name, offset of its data, length)`` of each member of the tar open in ``fileobj`` (headers only
    are read: the data of each member is skipped over)."""
    with tarfile.open(fileobj=fileobj, mode="r:") as tar:
        for info in tar:
            if info.isfile():
                yield info.name, info.offset_data, info.size


def _text(value: Any) -> Any:
    return None if value is None or (not isinstance(value, (list, dict)) and pd.isna(value)) else value


class WebDatasetSink(Sink):
    """Tar shards of samples (image, label, metadata), one shard per chunk (``config.chunk`` images) and
    size; see the module docstring for the layout."""

    format = OutputFormat.WEBDATASET

    @property
    def extension(self) -> str:
        """The extension of the image member of every sample (``jpg``, ``png`` or ``webp``)."""
        return self.config.shard_image.value

    # ---- resume by shard ---------------------------------------------------------------------------
    def done_chunks(self, rows_of: Callable[[int], int]) -> set[int]:
        return self._shards_present(super().done_chunks(rows_of))

    def done_rows(self) -> pd.DataFrame:
        return self._with_shards(super().done_rows())

    def _with_shards(self, done: pd.DataFrame) -> pd.DataFrame:
        """The rows of the done chunks whose shards are all there."""
        if done.empty:
            return done
        return done[done["chunk"].isin(self._shards_present(set(done["chunk"].unique())))].reset_index(drop=True)

    def _shards_present(self, chunks: set[int]) -> set[int]:
        """The ``chunks`` whose shards are all there (one listing per size)."""
        present = set(chunks)
        for key in self.config.size_keys:
            try:
                listed = {posixpath.basename(p) for p in self.fs.ls(self.path(key), detail=False)}
            except FileNotFoundError:
                listed = set()
            present = {k for k in present if posixpath.basename(shard_relpath(key, int(k))) in listed}
        return present

    # ---- worker side -------------------------------------------------------------------------------
    def encode(self, image: np.ndarray, original: bytes | None = None) -> bytes:
        """The image member: the source file itself when it is already these pixels in this format."""
        if original is not None:
            return original
        fmt = self.config.shard_image.output_format.pillow_format
        params: dict[str, Any] = {"quality": self.config.quality} if fmt in ("JPEG", "WEBP") else {}
        if fmt == "WEBP":
            params["exact"] = True  # keep the colour of fully transparent pixels (as png does)
        buf = io.BytesIO()
        Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image).save(buf, fmt, **params)
        return buf.getvalue()

    def _write(self, chunk: Chunk) -> None:
        rows = chunk.rows
        keys = [sample_key(i) for i in rows["index"]]
        label_ids = rows["label_id"].to_numpy(np.int64)
        meta = [json.dumps({"index": int(index), "origin": _text(origin), "relpath": _text(relpath),
                            "label": _text(label), "label_id": int(label_id), "height": int(height),
                            "width": int(width), "mode": _text(mode)}, sort_keys=True).encode()
                for index, origin, relpath, label, label_id, height, width, mode
                in zip(rows["index"], rows["origin"], rows["relpath"], rows["label"], label_ids, rows["height"],
                       rows["width"], rows["mode"])]
        ok = chunk.ok
        for size_key in self.config.size_keys:
            members: list[tuple[str, bytes]] = []
            for i, payload in enumerate(chunk.images[size_key]):
                if payload is None or not ok[i]:
                    continue
                members += [(f"{keys[i]}.{self.extension}", payload), (f"{keys[i]}.json", meta[i])]
                if label_ids[i] >= 0:
                    members.append((f"{keys[i]}.cls", str(label_ids[i]).encode()))
            self.put(shard_relpath(size_key, chunk.index), shard_bytes(members))

    # ---- client side -------------------------------------------------------------------------------
    def write_attrs(self, attrs: dict[str, Any]) -> None:
        """The attributes, with the shards of each size named (a brace pattern the ``webdataset`` package
        expands) and the image extension."""
        n = int(attrs.get("imgtools", {}).get("n", 0))
        shards = math.ceil(n / self.config.chunk)
        urls = {key: posixpath.join(key, f"shard-{{000000..{shards - 1:06d}}}.tar") if shards > 1
                else shard_relpath(key, 0) for key in self.config.size_keys}
        super().write_attrs({**attrs, "webdataset": {"shards": shards, "image": self.extension, "urls": urls}})
