"""read_images follows Spark's image data source: schema, channels, OpenCV modes, BGR(A) bytes,
invalid rows, key=value folders; to_array / from_array round trips."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import imgtools
from conftest import encode, gradient
from imgtools.errors import ConfigError
from imgtools.spark import IMAGE_SCHEMA, from_array, to_array

RGB = gradient(7, 5)
RGBA = np.dstack([RGB, np.arange(35, dtype=np.uint8).reshape(5, 7) * 7])
GRAY = RGB[:, :, 1].copy()


@pytest.fixture
def spark_tree(tmp_path):
    root = tmp_path / "images"
    files = {
        "cls=kittens/date=2018-01/rgb.png": encode(Image.fromarray(RGB), "PNG"),
        "cls=kittens/date=2018-02/rgba.png": encode(Image.fromarray(RGBA), "PNG"),
        "cls=puppies/date=2018-01/gray.png": encode(Image.fromarray(GRAY), "PNG"),
        "cls=puppies/date=2018-02/broken.jpg": b"not an image",
        "top.png": encode(Image.fromarray(RGB), "PNG"),
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _rows(df):
    frame = df.compute()
    return {o.rsplit("/", 1)[1]: row for o, (_, row) in zip(frame["origin"], frame.iterrows())}, frame


@pytest.mark.parametrize("channel_order", ["RGB", "BGR"])
def test_schema_channels_modes_and_bytes_follow_spark(spark_tree, channel_order):
    rows, frame = _rows(imgtools.read_images(str(spark_tree), channel_order=channel_order, npartitions=2))
    assert list(frame.columns) == IMAGE_SCHEMA + ["cls", "date"]
    assert sorted(rows) == ["gray.png", "rgb.png", "rgba.png", "top.png"]  # invalid dropped
    expect = {"rgb.png": (RGB, 3, 16), "rgba.png": (RGBA, 4, 24), "gray.png": (GRAY[:, :, None], 1, 0)}
    for name, (arr, channels, mode) in expect.items():
        row = rows[name]
        assert (row["height"], row["width"], row["nChannels"], row["mode"]) == (5, 7, channels, mode)
        want = arr[:, :, [2, 1, 0, 3][:channels]] if channel_order == "BGR" and channels >= 3 else arr
        assert row["data"] == np.ascontiguousarray(want).tobytes()
        np.testing.assert_array_equal(to_array(row), want)
    assert (rows["rgb.png"]["cls"], rows["rgb.png"]["date"]) == ("kittens", "2018-01")
    assert pd.isna(rows["top.png"]["cls"]) and pd.isna(rows["top.png"]["date"])


def test_invalid_file_is_a_row_of_minus_ones_when_kept(spark_tree):
    rows, _ = _rows(imgtools.read_images(str(spark_tree), drop_invalid=False))
    bad = rows["broken.jpg"]
    assert (bad["height"], bad["width"], bad["nChannels"], bad["mode"], bad["data"]) == (-1, -1, -1, -1, b"")
    assert len(rows) == 5


def test_recursive_false_and_sample_ratio(spark_tree):
    assert len(imgtools.read_images(str(spark_tree), recursive=False).compute()) == 1
    many = spark_tree / "many"
    many.mkdir()
    for i in range(200):
        (many / f"{i:03d}.png").write_bytes(encode(Image.new("L", (2, 2), i), "PNG"))
    a = imgtools.read_images(str(many), sample_ratio=0.3, seed=1).compute()
    b = imgtools.read_images(str(many), sample_ratio=0.3, seed=1).compute()
    assert 30 <= len(a) <= 90 and list(a["origin"]) == list(b["origin"])
    with pytest.raises(ConfigError, match="sample_ratio"):
        imgtools.read_images(str(many), sample_ratio=0)
    with pytest.raises(ConfigError, match="channel_order"):
        imgtools.read_images(str(many), channel_order="GBR")


@pytest.mark.parametrize("shape", [(3, 4), (3, 4, 1), (5, 2, 3), (1, 1, 4), (64, 48, 3)])
def test_to_array_from_array_round_trip_exactly(shape):
    arr = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    row = from_array(arr, "x")
    back = to_array(row)
    np.testing.assert_array_equal(back, arr.reshape(back.shape))
    assert from_array(back, "x") == row
    assert row["mode"] == {1: 0, 3: 16, 4: 24}[back.shape[2]]


@pytest.mark.parametrize("bad", [np.zeros((2, 2, 2), np.uint8), np.zeros((2, 2, 3), np.float32), np.zeros(5, np.uint8)])
def test_from_array_rejects_what_spark_cannot_hold(bad):
    with pytest.raises(ValueError, match="uint8 with 1, 3 or 4 channels"):
        from_array(bad)


def test_every_file_is_listed_as_spark_does_and_path_glob_filter_narrows(spark_tree):
    """Spark's own test layout has 8 images and a not-image.txt: it lists all 9 and marks the text invalid."""
    (spark_tree / "cls=kittens" / "not-image.txt").write_text("not an image")
    (spark_tree / ".hidden.png").write_bytes(encode(Image.fromarray(RGB), "PNG"))
    rows, _ = _rows(imgtools.read_images(str(spark_tree), drop_invalid=False))
    assert sorted(rows) == ["broken.jpg", "gray.png", "not-image.txt", "rgb.png", "rgba.png", "top.png"]
    assert rows["not-image.txt"]["nChannels"] == -1 and rows["not-image.txt"]["data"] == b""
    rows, _ = _rows(imgtools.read_images(str(spark_tree)))
    assert "not-image.txt" not in rows and len(rows) == 4
    rows, _ = _rows(imgtools.read_images(str(spark_tree), drop_invalid=False, path_glob_filter="r*.png"))
    assert sorted(rows) == ["rgb.png", "rgba.png"]
