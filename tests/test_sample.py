"""Tests of imgtools.sample: the generated dataset and the hostile-corpus writer helpers."""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import tree_bytes
from imgtools import sample
from imgtools.errors import ConfigError, DestinationError
from imgtools.sample import (
    CLASS_NAMES,
    RECIPES,
    SampleInfo,
    broken_files,
    class_image,
    encode,
    make_sample,
    orient_for_exif,
)

N = 120
MODES = {"RGB", "L", "RGBA", "LA", "P", "CMYK", "I;16", "1"}
FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"}
LOAD_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _files(root: str | Path) -> list[str]:
    """Relpaths (posix) of the counted files: everything below the class folders."""
    return sorted(rel for rel in tree_bytes(root) if "/" in rel)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> SampleInfo:
    return make_sample(tmp_path_factory.mktemp("sample") / "data", N)


@pytest.fixture(scope="module")
def opened(made: SampleInfo) -> dict[str, dict]:
    """relpath -> format, mode, size, frames, EXIF orientation and pixel range of every good file."""
    out = {}
    for rel in _files(made.path):
        if rel in made.broken:
            continue
        with Image.open(os.path.join(made.path, rel)) as im:
            im.load()
            arr = np.asarray(im)
            out[rel] = {"format": im.format, "mode": im.mode, "size": im.size, "frames": getattr(im, "n_frames", 1),
                        "orientation": im.getexif().get(0x0112), "range": (int(arr.min()), int(arr.max()))}  # fmt: skip
    return out


def test_sample_has_n_files_in_class_folders_with_readme_and_stamp(made: SampleInfo) -> None:
    root = Path(made.path)
    files = _files(root)
    assert len(files) == N and made.n == N
    assert made.classes == CLASS_NAMES
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(CLASS_NAMES)
    assert Counter(f.split("/")[0] for f in files) == {c: N // 10 for c in CLASS_NAMES}
    assert all(f.count("/") == 1 for f in files)
    assert sorted(p.name for p in root.iterdir() if p.is_file()) == [".imgtools-sample.json", "README.txt"]
    assert "circle_red" in (root / "README.txt").read_text("utf-8")


def test_broken_files_are_listed_spread_over_classes_and_counted(made: SampleInfo) -> None:
    assert len(made.broken) == 6
    assert set(made.broken) <= set(_files(made.path))
    assert len({b.split("/")[0] for b in made.broken}) == 6


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(made: SampleInfo, tmp_path: Path) -> None:
    again = make_sample(tmp_path / "again", N)
    assert again.broken == made.broken
    assert tree_bytes(again.path) == tree_bytes(made.path)
    other = make_sample(tmp_path / "other", N, seed=1)
    assert tree_bytes(other.path) != tree_bytes(made.path)


def test_every_good_file_decodes_and_covers_each_mode_and_format(made: SampleInfo, opened: dict) -> None:
    assert len(opened) == N - len(made.broken)
    assert {v["mode"] for v in opened.values()} >= MODES
    assert {v["format"] for v in opened.values()} >= FORMATS
    pairs = {(v["format"], v["mode"]) for v in opened.values()}
    assert {("JPEG", "CMYK"), ("PNG", "I;16"), ("PNG", "1"), ("BMP", "1"), ("GIF", "P"), ("PNG", "P")} <= pairs


def test_palette_files_come_with_and_without_transparency(made: SampleInfo, opened: dict) -> None:
    seen = set()
    for rel, v in opened.items():
        if v["mode"] == "P" and v["format"] in ("PNG", "GIF"):
            with Image.open(os.path.join(made.path, rel)) as im:
                seen.add((v["format"], "transparency" in im.info))
    assert seen == {("PNG", True), ("PNG", False), ("GIF", True), ("GIF", False)}


def test_sample_holds_animated_gifs_exif_orientations_and_extreme_sizes(opened: dict) -> None:
    assert any(v["format"] == "GIF" and v["frames"] == 3 for v in opened.values())
    assert {v["orientation"] for v in opened.values() if v["format"] == "JPEG"} >= {6, 3, 8}
    sizes = [v["size"] for v in opened.values()]
    assert (40, 40) in sizes and (1600, 1200) in sizes and (900, 60) in sizes
    assert any(w < h for w, h in sizes) and any(w > h for w, h in sizes)


def test_jpeg_is_the_most_common_format(opened: dict, tmp_path: Path) -> None:
    counts = Counter(v["format"] for v in opened.values())
    assert counts.most_common(1)[0][0] == "JPEG"
    bigger = make_sample(tmp_path / "bigger", 600)  # a larger one, where the one-of-each files weigh less
    jpeg = 0
    for rel in _files(bigger.path):
        if rel not in bigger.broken:
            with Image.open(os.path.join(bigger.path, rel)) as im:
                jpeg += im.format == "JPEG"
    assert 0.55 < jpeg / 600 < 0.65


def test_file_names_include_spaces_hashes_non_ascii_and_mixed_case_extensions(made: SampleInfo) -> None:
    names = [f.split("/")[1] for f in _files(made.path)]
    assert any(" " in n for n in names) and any("#" in n for n in names)
    assert any(not n.isascii() for n in names)
    exts = {os.path.splitext(n)[1] for n in names}
    assert {".jpg", ".png", ".webp", ".gif", ".bmp", ".tif"} <= exts
    assert any(e != e.lower() for e in exts)


def test_16_bit_files_span_most_of_the_16_bit_range(opened: dict) -> None:
    ranges = [v["range"] for v in opened.values() if v["mode"] == "I;16"]
    assert ranges and all(hi - lo > 36000 for lo, hi in ranges)  # >55%; mid-grey classes span least


def test_sample_broken_files_fail_to_load(made: SampleInfo) -> None:
    for rel in made.broken:
        with pytest.raises(LOAD_ERRORS):
            with Image.open(os.path.join(made.path, rel)) as im:
                im.load()


@pytest.mark.parametrize("name", list(broken_files()))
def test_each_broken_kind_fails_to_load(name: str) -> None:
    with pytest.raises(LOAD_ERRORS):
        with Image.open(io.BytesIO(broken_files()[name])) as im:
            im.load()


def test_broken_truncated_jpeg_and_corrupt_png_open_but_do_not_decode() -> None:
    files = broken_files()
    for name in ("truncated.jpg", "corrupt.png"):
        with Image.open(io.BytesIO(files[name])) as im:
            assert im.size[0] > 0
            with pytest.raises(OSError):
                im.load()
    assert files["empty.jpg"] == b""


def test_huge_header_png_claims_40000_square(monkeypatch: pytest.MonkeyPatch) -> None:
    data = broken_files()["huge-header.png"]
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(data))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (40000, 40000) and im.format == "PNG"


def test_second_call_with_same_arguments_rewrites_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = make_sample(tmp_path / "s", 30, classes=3)
    stamps = {p: p.stat().st_mtime_ns for p in Path(first.path).rglob("*")}

    def fail(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("encode called on a complete sample")

    monkeypatch.setattr(sample, "encode", fail)
    assert make_sample(str(tmp_path / "s"), 30, classes=3) == first
    assert {p: p.stat().st_mtime_ns for p in Path(first.path).rglob("*")} == stamps


def test_different_n_regenerates_the_sample(tmp_path: Path) -> None:
    make_sample(tmp_path / "s", 40, classes=4)
    info = make_sample(tmp_path / "s", 30, classes=2, broken=2)
    assert len(_files(info.path)) == 30 and len(info.broken) == 2
    assert sorted(p.name for p in Path(info.path).iterdir() if p.is_dir()) == sorted(CLASS_NAMES[:2])
    stamp = json.loads((tmp_path / "s" / ".imgtools-sample.json").read_text("utf-8"))
    assert (stamp["n"], stamp["classes"], stamp["broken"]) == (30, 2, 2)


def test_interrupted_sample_without_stamp_is_regenerated(tmp_path: Path) -> None:
    info = make_sample(tmp_path / "s", 30)
    os.remove(os.path.join(info.path, ".imgtools-sample.json"))
    (tmp_path / "s" / ".imgtools-sample.partial").write_bytes(b"")
    (tmp_path / "s" / "circle_red" / "stale.jpg").write_bytes(b"half")
    assert make_sample(tmp_path / "s", 30) == info
    assert len(_files(info.path)) == 30 and not (tmp_path / "s" / ".imgtools-sample.partial").exists()


def test_folder_holding_other_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("not a sample")
    with pytest.raises(DestinationError):
        make_sample(tmp_path, 20)
    assert sorted(os.listdir(tmp_path)) == ["mine.txt"]


@pytest.mark.parametrize("kwargs", [{"classes": 0}, {"classes": 11}, {"n": 0}, {"n": 5, "broken": 6}, {"broken": -1}])
def test_bad_arguments_raise_config_error(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        make_sample(tmp_path / "s", **kwargs)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_undone_by_exif_transpose(orientation: int) -> None:
    upright = class_image(np.random.default_rng(0), 2, 96, 64)
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = orientation
    orient_for_exif(upright, orientation).save(buf, "PNG", exif=exif.tobytes())
    with Image.open(buf) as im:
        shown = ImageOps.exif_transpose(im)
    assert shown.size == (96, 64)
    assert np.array_equal(np.asarray(shown), np.asarray(upright))


def test_encoded_exif_jpeg_is_upright_after_exif_transpose() -> None:
    data = encode("jpeg-exif", np.random.default_rng(3), 2, 120, 80, orientation=6)
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (80, 120) and im.getexif()[0x0112] == 6
        assert ImageOps.exif_transpose(im).size == (120, 80)


@pytest.mark.parametrize("kind", list(RECIPES))
def test_encode_writes_the_recipe_format_and_mode(kind: str) -> None:
    fmt, mode, _, _ = RECIPES[kind]
    data = encode(kind, np.random.default_rng(0), 1, 70, 50)
    assert data == encode(kind, np.random.default_rng(0), 1, 70, 50)
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        assert (im.format, im.mode) == (fmt, mode)


def test_class_image_is_deterministic_rgb_of_the_asked_size() -> None:
    a = class_image(np.random.default_rng(5), 7, 333, 47)
    b = class_image(np.random.default_rng(5), 7, 333, 47)
    assert a.mode == "RGB" and a.size == (333, 47)
    assert a.tobytes() == b.tobytes()


def test_classes_are_separable_at_16x16() -> None:
    rng = np.random.default_rng(0)

    def features(cls: int) -> np.ndarray:
        w, h = (int(v) for v in rng.integers(48, 200, 2))
        im = class_image(rng, cls, w, h).resize((16, 16), Image.Resampling.BOX)
        return np.asarray(im, np.float32).ravel()

    train = np.array([[features(c) for _ in range(8)] for c in range(10)])
    centroids = train.mean(axis=1)
    test = [(c, features(c)) for c in range(10) for _ in range(8)]
    hits = [np.argmin(((centroids - x) ** 2).sum(axis=1)) == c for c, x in test]
    assert np.mean(hits) >= 0.95
