"""A Pillow image format whose decoder never returns: a stand-in for a decoder stuck in a loop, to test
the per-image time limit (:mod:`imgtools.watchdog`).

Importing this module registers the format ``HANG`` with Pillow (files that start with :data:`MAGIC`),
in this process only; nothing is registered otherwise. Its header opens as an 8 x 8 RGB image, and its
decoder waits, without holding the GIL (as Pillow's C decoders do while they decode), until
:func:`release` is called in the same process, then fails. imgtools opens it only when ``HANG`` is among
the allowed formats (``--formats JPEG,PNG,HANG``). For Dask workers, load it as a worker preload
(``LocalCluster(preload=["imgtools.testing.hang_plugin"])``), which a restarted worker loads again.

Examples
--------
>>> import io
>>> from PIL import Image
>>> from imgtools.testing import hang_plugin
>>> img = Image.open(io.BytesIO(hang_plugin.hang_file()), formats=[hang_plugin.FORMAT])
>>> img.size, img.mode
((8, 8), 'RGB')
"""

from __future__ import annotations

import threading

from PIL import Image, ImageFile

__all__ = ["FORMAT", "MAGIC", "HEADER_FORMAT", "HEADER_MAGIC", "hang_file", "header_hang_file", "release",
           "decodes"]

#: The Pillow format name to allow (``formats=[..., FORMAT]``).
FORMAT = "HANG"
#: The first bytes of a file of this format.
MAGIC = b"HANG"
#: A second format, whose *header* never parses: ``Image.open`` itself does not return (until :func:`release`).
HEADER_FORMAT = "HANGHEAD"
HEADER_MAGIC = b"HNGH"

_released = threading.Event()
_decodes = 0


def hang_file() -> bytes:
    """The bytes of a file whose decoding never returns (until :func:`release`)."""
    return MAGIC + bytes(64)


def header_hang_file() -> bytes:
    """The bytes of a file whose header never parses (until :func:`release`)."""
    return HEADER_MAGIC + bytes(64)


def decodes() -> int:
    """How many times a decoder of this format started in this process (what a test counts to see that an
    image past the time limit is never decoded again)."""
    return _decodes


def release() -> None:
    """Let every decoder of this format in this process return (each fails); for a test's teardown, so
    that no thread a test left behind waits on."""
    _released.set()


class HangImageFile(ImageFile.ImageFile):
    """An 8 x 8 RGB image whose pixels never come."""

    format = FORMAT
    format_description = "decodes forever (imgtools tests)"

    def _open(self) -> None:
        if self.fp.read(len(MAGIC)) != MAGIC:
            raise SyntaxError("not a HANG file")
        self._size = (8, 8)
        self._mode = "RGB"
        self.tile = [ImageFile._Tile(FORMAT, (0, 0, 8, 8), len(MAGIC), None)]


class HangDecoder(ImageFile.PyDecoder):
    """Waits until :func:`release`, then fails."""

    _pulls_fd = True

    def decode(self, buffer: bytes | Image.SupportsArrayInterface) -> tuple[int, int]:
        global _decodes
        _decodes += 1
        while not _released.wait(0.05):
            pass
        raise OSError("the HANG decoder was released")


class HeaderHangImageFile(ImageFile.ImageFile):
    """An image whose header parser waits until :func:`release`, then fails."""

    format = HEADER_FORMAT
    format_description = "parses its header forever (imgtools tests)"

    def _open(self) -> None:
        global _decodes
        if self.fp.read(len(HEADER_MAGIC)) != HEADER_MAGIC:
            raise SyntaxError("not a HANGHEAD file")
        _decodes += 1
        while not _released.wait(0.05):
            pass
        raise SyntaxError("the HANGHEAD parser was released")


Image.register_open(FORMAT, HangImageFile, lambda prefix: prefix[: len(MAGIC)] == MAGIC)
Image.register_open(HEADER_FORMAT, HeaderHangImageFile, lambda prefix: prefix[: len(HEADER_MAGIC)] == HEADER_MAGIC)
Image.register_decoder(FORMAT, HangDecoder)
