"""Generate the project's own sample dataset: labelled, varied, deterministic, with a few broken files.

:func:`make_sample` writes ``dest/<class_name>/<file>``; a class is a background hue plus a shape, so it
survives a 16x16 downscale. Files mix sizes (40x40 to 1600x1200, portrait, 900x60), Pillow modes (RGB, L,
RGBA, LA, P with and without transparency, CMYK, I;16, 1) and formats (JPEG ~60%, PNG, WebP, GIF with a
few animated, BMP, TIFF), JPEGs with an EXIF orientation, awkward file names, and broken files.
The same arguments give the same bytes (with the same numpy, Pillow and codec builds).
The writer helpers are public so tests can build hostile corpora.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .errors import ConfigError, DestinationError

__all__ = ["SampleInfo", "CLASS_NAMES", "RECIPES", "make_sample", "class_image", "alpha_mask", "orient_for_exif",
           "encode", "broken_files"]  # fmt: skip

#: Class names in order; a sample with ``classes=k`` uses the first ``k``.
CLASS_NAMES: tuple[str, ...] = (
    "circle_red", "square_orange", "triangle_yellow", "diamond_green", "ring_teal",
    "cross_blue", "plus_purple", "star_pink", "arrow_brown", "bars_gray",
)  # fmt: skip
#: background per class: distinct hues and distinct luminances (54..217), so grey modes stay learnable
_COLORS = ((225, 55, 45), (250, 185, 40), (240, 230, 90), (80, 185, 70), (30, 160, 160),
           (25, 45, 175), (130, 45, 195), (245, 135, 195), (105, 62, 25), (155, 155, 155))  # fmt: skip

#: kind -> (Pillow format, mode as saved, extensions (the first is the usual one), weight in %)
RECIPES: dict[str, tuple[str, str, tuple[str, ...], float]] = {
    "jpeg-rgb": ("JPEG", "RGB", (".jpg", ".JPG", ".jpeg", ".JPEG"), 51),
    "jpeg-l": ("JPEG", "L", (".jpg", ".jpeg"), 3),
    "jpeg-cmyk": ("JPEG", "CMYK", (".jpg", ".JPG"), 2), "jpeg-exif": ("JPEG", "RGB", (".jpg", ".JPG"), 3),
    "png-rgb": ("PNG", "RGB", (".png", ".PNG"), 6), "png-rgba": ("PNG", "RGBA", (".png",), 4),
    "png-l": ("PNG", "L", (".png",), 2), "png-la": ("PNG", "LA", (".png",), 1.5),
    "png-p": ("PNG", "P", (".png",), 2), "png-pt": ("PNG", "P", (".png",), 1.5),  # pt: with transparency
    "png-i16": ("PNG", "I;16", (".png",), 2), "png-1": ("PNG", "1", (".png",), 1),
    "webp-rgb": ("WEBP", "RGB", (".webp",), 4), "webp-rgba": ("WEBP", "RGBA", (".webp",), 2),
    "gif-p": ("GIF", "P", (".gif",), 2), "gif-pt": ("GIF", "P", (".gif", ".GIF"), 1),
    "gif-anim": ("GIF", "P", (".gif",), 1),  # 3 frames
    "bmp-rgb": ("BMP", "RGB", (".bmp",), 2), "bmp-p": ("BMP", "P", (".bmp",), 1),
    "bmp-1": ("BMP", "1", (".bmp", ".BMP"), 1), "tiff-rgb": ("TIFF", "RGB", (".tif", ".tiff", ".TIF"), 3),
    "tiff-i16": ("TIFF", "I;16", (".tif",), 0.5), "tiff-cmyk": ("TIFF", "CMYK", (".tif",), 0.5),
}  # fmt: skip
_ORIENTATIONS = (6, 3, 8, 5, 2, 7, 4)  # cycled over jpeg-exif files; the first three are the common ones
#: orientation -> the transpose that turns upright pixels into the stored ones (exif_transpose undoes it)
_INVERSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
            7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}  # fmt: skip
#: sizes every sample of enough files holds once: tiny, big, portrait, extreme strips
_FIXED_SIZES = (("jpeg-rgb", (40, 40)), ("jpeg-rgb", (1600, 1200)), ("jpeg-rgb", (1200, 1600)),
                ("png-rgb", (900, 60)), ("jpeg-rgb", (60, 720)), ("webp-rgb", (1024, 128)))  # fmt: skip
#: file-name prefixes, cycled by file number: 12% hold a space, 6% a '#', 6% a non-ASCII letter
_PREFIXES = ("img_",) * 30 + ("IMG_",) * 9 + ("DSC_",) * 4 + ("photo ", "scan #", "café ", "été_", "photo #",
                                                               "Ölbild ", "img #")
_BROKEN = ("empty.jpg", "not-an-image.jpg", "truncated.jpg", "corrupt.png", "huge-header.png", "random.webp")
_STAMP = ".imgtools-sample.json"
_PARTIAL = ".imgtools-sample.partial"
_VERSION = 1


@dataclasses.dataclass(frozen=True)
class SampleInfo:
    """What :func:`make_sample` wrote: the folder, the file count, class names and broken relpaths."""

    path: str
    n: int
    classes: tuple[str, ...]
    broken: tuple[str, ...]


def _shape(draw: ImageDraw.ImageDraw, kind: int, cx: float, cy: float, r: float, fill: tuple) -> None:
    box, s, w = (cx - r, cy - r, cx + r, cy + r), r * 0.85, max(2, round(r / 3))
    if kind == 0:
        draw.ellipse(box, fill=fill)
    elif kind == 1:
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    elif kind == 2:  # points up, so a wrong orientation shows
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
    elif kind == 3:
        draw.polygon([(cx, cy - r), (cx + r * 0.75, cy), (cx, cy + r), (cx - r * 0.75, cy)], fill=fill)
    elif kind == 4:
        draw.ellipse(box, outline=fill, width=w)
    elif kind == 5:
        draw.line((cx - r, cy - r, cx + r, cy + r), fill=fill, width=w)
        draw.line((cx - r, cy + r, cx + r, cy - r), fill=fill, width=w)
    elif kind == 6:
        draw.rectangle((cx - r, cy - w / 2, cx + r, cy + w / 2), fill=fill)
        draw.rectangle((cx - w / 2, cy - r, cx + w / 2, cy + r), fill=fill)
    elif kind == 7:
        rk = [r if k % 2 == 0 else r * 0.45 for k in range(10)]
        draw.polygon([(cx + rk[k] * math.sin(k * math.pi / 5), cy - rk[k] * math.cos(k * math.pi / 5))
                      for k in range(10)], fill=fill)  # fmt: skip
    elif kind == 8:  # an arrow pointing up
        draw.polygon([(cx, cy - r), (cx + r * 0.8, cy - r * 0.1), (cx - r * 0.8, cy - r * 0.1)], fill=fill)
        draw.rectangle((cx - r * 0.3, cy - r * 0.1, cx + r * 0.3, cy + r), fill=fill)
    else:  # three horizontal bars
        for y in (cy - r * 0.6, cy, cy + r * 0.6):
            draw.rectangle((cx - r, y - r * 0.18, cx + r, y + r * 0.18), fill=fill)


def class_image(rng: np.random.Generator, cls_index: int, width: int, height: int) -> Image.Image:
    """An RGB ``width`` x ``height`` picture of class ``cls_index``: its hue behind its shape, upright.

    Position, size, shade, gradient and noise are jittered from ``rng``; the shape is drawn on a canvas
    of at most ~256 px and resized, so big pictures stay cheap.

    Examples
    --------
    >>> class_image(np.random.default_rng(0), 2, 120, 80).size
    (120, 80)
    """
    scale = min(1.0, 256 / max(width, height))
    scale = max(scale, min(1.0, 32 / min(width, height)))
    cw, ch = max(1, round(width * scale)), max(1, round(height * scale))
    color = np.array(_COLORS[cls_index % len(_COLORS)], np.float32)
    base = color * rng.uniform(0.96, 1.04)
    angle, amp = rng.uniform(0, 2 * math.pi), rng.uniform(-16, 16)
    ramp = np.add.outer(np.linspace(0, amp * math.sin(angle), ch), np.linspace(0, amp * math.cos(angle), cw))
    canvas = Image.fromarray(np.clip(ramp[..., None] + base, 0, 255).astype(np.uint8))
    dark_ink = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] > 135
    ink = tuple(int(v) for v in ((25, 20, 30) if dark_ink else (245, 245, 235)) + rng.integers(-15, 16, 3))
    side = min(cw, ch)
    r = side * rng.uniform(0.24, 0.36)
    cx = cw / 2 + rng.uniform(-1, 1) * (cw / 2 - r) * 0.4
    cy = ch / 2 + rng.uniform(-1, 1) * (ch / 2 - r) * 0.4
    _shape(ImageDraw.Draw(canvas), cls_index % len(_COLORS), cx, cy, r, ink)
    arr = np.asarray(canvas, np.int16) + rng.integers(-12, 13, (ch, cw, 3), dtype=np.int16)
    canvas = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if (cw, ch) != (width, height):
        canvas = canvas.resize((width, height), Image.Resampling.BILINEAR)
    return canvas


def alpha_mask(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """An ``L`` mask: opaque in the middle, fading to a random low alpha (0..96) in the corners.

    Examples
    --------
    >>> alpha_mask(np.random.default_rng(0), 50, 20).getpixel((25, 10))
    255
    """
    y, x = np.mgrid[-1:1:32j, -1:1:32j]
    floor = rng.uniform(0, 96)
    a = np.clip(255 - (np.hypot(x, y) - 0.7) / 0.7 * (255 - floor), floor, 255)
    return Image.fromarray(a.astype(np.uint8)).resize((width, height), Image.Resampling.BILINEAR)


def orient_for_exif(image: Image.Image, orientation: int) -> Image.Image:
    """The pixels to store with EXIF ``orientation`` so that ``ImageOps.exif_transpose`` gives ``image``.

    Examples
    --------
    >>> orient_for_exif(Image.new("RGB", (30, 10)), 6).size
    (10, 30)
    """
    return image if orientation == 1 else image.transpose(_INVERSE[orientation])


def _to_i16(rng: np.random.Generator, rgb: Image.Image) -> Image.Image:
    """16-bit grey: a fixed stretch of ``L`` (50..214 to 0..65535) plus low-bit noise; keeps class brightness."""
    lum = (np.asarray(rgb.convert("L"), np.int32) - 50) * 400 + rng.integers(0, 400, (rgb.height, rgb.width))
    return Image.fromarray(np.clip(lum, 0, 65535).astype(np.uint16))


def _palette(rgb: Image.Image, mask: Image.Image | None) -> Image.Image:
    """A P image of up to 63 colours; with ``mask`` (L), index 63 marks the pixels where it is < 128."""
    q = rgb.quantize(63, method=Image.Quantize.FASTOCTREE)
    if mask is None:
        return q
    pal = (q.getpalette() or [])[: 63 * 3]
    q.putpalette(pal + [0] * (64 * 3 - len(pal)))
    q.paste(63, mask=mask.point(lambda v: 255 if v < 128 else 0))
    q.info["transparency"] = 63
    return q


def encode(
    kind: str, rng: np.random.Generator, cls_index: int, width: int, height: int, orientation: int = 6
) -> bytes:
    """The bytes of one sample file of recipe ``kind`` (a key of :data:`RECIPES`).

    ``orientation`` is used by ``jpeg-exif`` only: the stored pixels are turned so that
    ``ImageOps.exif_transpose`` shows the class upright at ``width`` x ``height``.

    Examples
    --------
    >>> encode("png-1", np.random.default_rng(0), 0, 40, 40)[:4]
    b'\\x89PNG'
    """
    fmt, mode, _, _ = RECIPES[kind]
    rgb = class_image(rng, cls_index, width, height)
    opts: dict = {}
    if kind == "gif-anim":
        more = [class_image(rng, cls_index, width, height) for _ in range(2)]  # the shape moves
        frames = [_palette(im, None) for im in (rgb, *more)]
        opts = {"save_all": True, "append_images": frames[1:], "duration": 120, "loop": 0}
        img = frames[0]
    elif mode in ("RGBA", "LA"):
        img = rgb.convert(mode[:-1])
        img.putalpha(alpha_mask(rng, width, height))
    elif mode == "P":
        img = _palette(rgb, alpha_mask(rng, width, height) if kind.endswith("pt") else None)
        if "transparency" in img.info:
            opts["transparency"] = img.info["transparency"]
    elif mode == "I;16":
        img = _to_i16(rng, rgb)
    elif mode == "1":
        img = rgb.convert("L").convert("1")
    else:
        img = rgb.convert(mode)
    if fmt == "JPEG":
        opts.update(quality=int(rng.integers(70, 96)), progressive=bool(rng.random() < 0.15))
        if kind == "jpeg-exif":
            img = orient_for_exif(img, orientation)
            exif = Image.Exif()
            exif[0x0112] = orientation
            opts["exif"] = exif.tobytes()
    elif fmt == "WEBP":  # lossless at low effort: the default effort is slow on noise
        lossless = mode == "RGBA"
        opts.update(quality=10 if lossless else int(rng.integers(70, 91)), lossless=lossless, method=1)
    elif fmt == "PNG":
        opts["compress_level"] = 6 if width * height < 40_000 else 1
    elif fmt == "TIFF":
        opts["compression"] = ("raw", "tiff_lzw", "tiff_adobe_deflate")[int(rng.integers(3))]
    buf = io.BytesIO()
    img.save(buf, fmt, **opts)
    return buf.getvalue()


def _chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data))


def broken_files(seed: int = 0) -> dict[str, bytes]:
    """One file of each broken kind, name -> bytes; none of them loads with Pillow.

    ``empty.jpg`` (0 bytes), ``not-an-image.jpg`` (text), ``truncated.jpg`` (first 40% of a JPEG),
    ``corrupt.png`` (valid header, then an IDAT of random bytes: it opens but does not decode),
    ``huge-header.png`` (a valid IHDR claiming 40000x40000, then an IDAT of garbage: it opens with a
    size, and Pillow refuses it as a decompression bomb) and ``random.webp`` (random bytes).

    Examples
    --------
    >>> sorted(broken_files())[:2]
    ['corrupt.png', 'empty.jpg']
    """
    rng = np.random.default_rng([seed, 7])
    jpeg = encode("jpeg-rgb", rng, 0, 256, 192)
    png = encode("png-rgb", rng, 1, 64, 64)
    idat = png.index(b"IDAT") - 4
    length = struct.unpack(">I", png[idat : idat + 4])[0]
    corrupt = png[:idat] + _chunk(b"IDAT", rng.bytes(length)) + png[idat + 12 + length :]
    huge = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0))
    huge += struct.pack(">I", 4096) + b"IDAT"  # so the header parses and the size is seen before decoding
    return {  # keys in the order of _BROKEN
        "empty.jpg": b"",
        "not-an-image.jpg": b"This is a text file, not a JPEG.\nIt must be reported, not loaded.\n",
        "truncated.jpg": jpeg[: len(jpeg) * 4 // 10],
        "corrupt.png": corrupt,
        "huge-header.png": huge + rng.bytes(4100),
        "random.webp": rng.bytes(2048),
    }


def _plan(n: int, classes: int, seed: int, broken: int) -> list[tuple[int, str, tuple[int, int] | None, int]]:
    """(class, kind, fixed size or None, orientation) per file in write order; kind ``broken:<name>``."""
    rng = np.random.default_rng(seed)
    slots = n - broken
    special: list[tuple[str, tuple[int, int] | None]] = [(k, None) for k in RECIPES]
    special += [("jpeg-exif", None)] * 2 + list(_FIXED_SIZES)
    special = special[:slots]
    rest, weights = slots - len(special), np.array([w for *_, w in RECIPES.values()], float)
    exact = weights / weights.sum() * rest
    counts = np.floor(exact).astype(int)
    counts[np.argsort(-(exact - counts), kind="stable")[: rest - counts.sum()]] += 1
    kinds = special + [(k, None) for k, c in zip(RECIPES, counts) for _ in range(c)]
    entries, n_exif = [], 0
    for kind, size in kinds:
        entries.append((kind, size, _ORIENTATIONS[n_exif % len(_ORIENTATIONS)]))
        n_exif += kind == "jpeg-exif"
    labels = [i % classes for i in range(n)]  # balanced; broken files go to classes 0, 1, 2, ...
    out = [(labels[k], "broken:" + _BROKEN[k % len(_BROKEN)], None, 0) for k in range(broken)]
    out += [(int(c), *e) for c, e in zip(rng.permutation(labels[broken:]), entries)]
    return [out[i] for i in rng.permutation(n)]


_RATIOS = (1, 4 / 3, 3 / 4, 3 / 2, 2 / 3, 16 / 9, 9 / 16, 5 / 4, 4 / 5, 2, 1 / 2, 15, 1 / 12)  # width / height
_RATIO_CDF = np.cumsum([20, 20, 12, 12, 8, 8, 5, 5, 3, 3, 2, 1, 1])[:-1] / 100


def _size(rng: np.random.Generator, cap: int = 1600) -> tuple[int, int]:
    """A random (width, height): mostly 96..320 px on the short side, a few tiny, big or extreme strips."""
    u = rng.random()
    short = (40, 100) if u < 0.1 else (600, 1200) if u > 0.985 else (96, 320)  # 10% small, 1.5% big
    short = int(rng.integers(*short))
    ratio = _RATIOS[int(np.searchsorted(_RATIO_CDF, rng.random(), side="right"))]
    w, h = (short * ratio, short) if ratio >= 1 else (short, short / ratio)
    f = min(1.0, cap / max(w, h))
    return max(40, int(round(w * f))), max(40, int(round(h * f)))


def _clear(root: Path) -> None:
    """Remove a previous (complete or interrupted) sample; refuse a folder that holds anything else."""
    entries = list(root.iterdir())
    if not entries:
        return
    names = {e.name for e in entries}
    if not names & {_STAMP, _PARTIAL}:
        raise DestinationError(f"{root} is not empty and holds no imgtools sample: refusing to write into it")
    foreign = names - set(CLASS_NAMES) - {_STAMP, _PARTIAL, "README.txt"}
    if foreign:
        raise DestinationError(f"{root} holds files that no imgtools sample writes: {sorted(foreign)[:5]}")
    (root / _STAMP).unlink(missing_ok=True)
    for e in entries:
        if e.is_dir():
            shutil.rmtree(e)
        elif e.name not in (_STAMP, _PARTIAL):
            e.unlink()


def make_sample(
    dest: str | os.PathLike, n: int = 3000, *, classes: int = 10, seed: int = 0, broken: int = 6
) -> SampleInfo:
    """Write a deterministic labelled sample of ``n`` files (``broken`` of them broken) into ``dest``.

    Labels are the first folder level (``dest/circle_red/img_00012.jpg``); ``dest/README.txt`` describes the
    set and is not counted. If ``dest`` already holds a complete sample made with the same arguments (its
    ``.imgtools-sample.json`` stamp, written last, says so), nothing is rewritten. A previous sample with
    other arguments is replaced; a folder holding anything else raises
    :class:`~imgtools.errors.DestinationError`. The full mix of modes and formats needs ``n >= broken + 31``.

    Examples
    --------
    >>> info = make_sample("data/sample", n=120, classes=4)  # doctest: +SKIP
    >>> info.classes, len(info.broken)  # doctest: +SKIP
    (('circle_red', 'square_orange', 'triangle_yellow', 'diamond_green'), 6)
    """
    if not 1 <= classes <= len(CLASS_NAMES):
        raise ConfigError(f"classes {classes!r} must be between 1 and {len(CLASS_NAMES)}")
    if not 0 <= broken <= n or n < 1:
        raise ConfigError(f"n {n!r} must be positive and broken {broken!r} between 0 and n")
    root = Path(dest).absolute()
    args = {"version": _VERSION, "n": n, "classes": classes, "seed": seed, "broken": broken}
    try:
        stamp = json.loads((root / _STAMP).read_text("utf-8"))
        if {k: stamp.get(k) for k in args} == args:
            return SampleInfo(str(root), n, tuple(stamp["class_names"]), tuple(stamp["broken_files"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if root.exists() and not root.is_dir():
        raise DestinationError(f"{root} is a file, not a folder")
    root.mkdir(parents=True, exist_ok=True)
    _clear(root)
    (root / _PARTIAL).write_bytes(b"")
    names = CLASS_NAMES[:classes]
    bad_bytes = broken_files(seed)
    bad, tally = [], {}
    for j, (cls, kind, size, orientation) in enumerate(_plan(n, classes, seed, broken)):
        rng = np.random.default_rng([seed, 1, j])
        stem = f"{_PREFIXES[j % len(_PREFIXES)]}{j:05d}"
        if kind.startswith("broken:"):
            data, ext = bad_bytes[kind[7:]], os.path.splitext(kind)[1]
        else:
            exts = RECIPES[kind][2]
            ext = exts[0] if rng.random() < 0.6 else exts[int(rng.integers(len(exts)))]
            width, height = size or _size(rng, 400 if kind == "gif-anim" else 1600)
            data = encode(kind, rng, cls, width, height, orientation=orientation)
        rel = f"{names[cls]}/{stem}{ext}"
        (root / names[cls]).mkdir(exist_ok=True)
        (root / rel).write_bytes(data)
        tally[kind] = tally.get(kind, 0) + 1
        if kind.startswith("broken:"):
            bad.append(rel)
    readme = [f"imgtools sample dataset: {n} files in {classes} classes (seed {seed}), by imgtools.sample.",
              "Labels are the first folder level; a class is a background hue plus a shape, drawn upright",
              "(JPEGs with an EXIF orientation are upright after ImageOps.exif_transpose).",
              "Files by kind:", *(f"  {k}: {tally[k]}" for k in sorted(tally)),
              f"Broken on purpose ({broken}):", *(f"  {b}" for b in bad)]  # fmt: skip
    (root / "README.txt").write_text("\n".join(readme) + "\n", "utf-8")
    stamp = dict(args, class_names=list(names), broken_files=bad)
    (root / _STAMP).write_text(json.dumps(stamp, indent=1, ensure_ascii=False), "utf-8")
    (root / _PARTIAL).unlink()
    return SampleInfo(str(root), n, names, tuple(bad))
