"""``imgtools.engine``, called directly on small real images: one image to every size (or a reason), one
chunk of listing rows to manifest rows and written files, earlier results reused, paired targets moved."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import encode, gradient, hostile_files, make_labelled, png_header_only
from imgtools.config import PresizeConfig
from imgtools.engine import (
    MANIFEST_COLUMNS,
    RESULT_COLUMNS,
    ImageResult,
    manifest_frame,
    pair_targets,
    previous_values,
    process_chunk,
    process_image,
    process_one,
    result_columns,
)
from imgtools.sinks import make_sink
from imgtools.sinks.files import output_relpath
from imgtools.sources import list_source

#: PNG output (lossless: what is written can be compared with the arrays pixel for pixel).
CHUNK_CONFIG = PresizeConfig.build(sizes=[16, "24x12"], mode="crop", format="png")


def png(arr: np.ndarray) -> bytes:
    return encode(Image.fromarray(arr), "PNG")


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def written(dest, key: str, relpath: str):
    """The file the PNG sink writes for one image and size."""
    return dest / key / output_relpath(relpath, CHUNK_CONFIG.format)


# ---- one image -------------------------------------------------------------------------------------

@pytest.mark.parametrize("source", [(120, 80), (80, 120), (33, 33)])
@pytest.mark.parametrize("mode", ["squash", "crop", "pad"])
def test_process_image_gives_every_fixed_size_and_the_original_geometry(source, mode):
    width, height = source
    config = PresizeConfig.build(sizes=[16, "24x12"], mode=mode)
    result = process_image(png(gradient(width, height)), config)
    assert isinstance(result, ImageResult) and result.ok and result.error is None
    assert (result.width, result.height, result.mode) == (width, height, "RGB")
    assert {k: (a.shape, a.dtype) for k, a in result.arrays.items()} == {
        "16x16": ((16, 16, 3), np.uint8), "24x12": ((12, 24, 3), np.uint8)}


@pytest.mark.parametrize("source", [(120, 80), (80, 120)])
@pytest.mark.parametrize("mode,side", [("shortest", min), ("longest", max)])
def test_process_image_in_a_variable_mode_sets_one_side_and_keeps_the_aspect(source, mode, side):
    width, height = source
    config = PresizeConfig.build(sizes=[40], mode=mode, format="jpeg")
    arr = process_image(png(gradient(width, height)), config).arrays[f"{'short' if side is min else 'long'}40"]
    h, w = arr.shape[:2]
    assert side(h, w) == 40 and abs(w / h - width / height) < 0.05


@pytest.mark.parametrize("sizes", [[16], [16, "24x12"]])
@pytest.mark.parametrize("data,config,reason", [
    (b"", {}, "empty file (0 bytes)"),
    (b"this is not a picture\n" * 10, {}, "not an image in an allowed format (JPEG, PNG, WEBP, GIF, BMP, TIFF)"),
    (FileNotFoundError("gone.jpg"), {}, "read failed: FileNotFoundError: gone.jpg"),
    (png_header_only(40000, 40000), {}, "40000x40000 = 1600000000 pixels is above max_pixels 100000000"),
    (png(gradient(64, 48)), {"formats": ["jpeg"]}, "not an image in an allowed format (JPEG)"),
    (png(gradient(64, 48)), {"max_pixels": 1000}, "64x48 = 3072 pixels is above max_pixels 1000"),
], ids=["empty", "text", "read-error", "bomb", "format-not-allowed", "too-many-pixels"])
def test_process_image_turns_a_broken_input_into_its_reason(data, config, reason, sizes):
    result = process_image(data, PresizeConfig.build(sizes=sizes, **config))
    assert not result.ok and result.arrays is None and result.error == reason
    assert (result.width, result.height, result.mode) == (-1, -1, None)


def test_process_image_refuses_an_output_above_max_pixels_keeping_the_input_geometry():
    config = PresizeConfig.build(sizes=[16], mode="shortest", format="jpeg", max_pixels=100_000)
    result = process_image(png(gradient(4000, 3)), config)  # a sliver: its shortest side to 16 is 21333 wide
    assert result.error == "output 21333x16 = 341328 pixels is above max_pixels 100000"
    assert (result.width, result.height, result.mode) == (4000, 3, "RGB")


@pytest.mark.parametrize("output,unchanged", [("png", {"32x32"}), ("jpeg", set())])
def test_an_image_already_at_its_size_comes_back_as_it_is_and_is_unchanged_in_its_own_format(output, unchanged):
    original = gradient(32, 32)
    result = process_image(png(original), PresizeConfig.build(sizes=[32, 16], mode="squash", format=output))
    assert np.array_equal(result.arrays["32x32"], original)
    assert result.unchanged == unchanged  # 16x16 is resampled: never a copy


# ---- one image, ready for its sink ----------------------------------------------------------------

def test_process_one_copies_an_unchanged_file_and_encodes_the_other_sizes(tmp_path):
    config = PresizeConfig.build(sizes=[32, 16], mode="squash", format="png")
    data = png(gradient(32, 32))
    outcome = process_one(data, None, {}, config, make_sink(str(tmp_path / "out"), config))
    assert outcome.values == {"status": "ok", "error": None, "height": 32, "width": 32, "mode": "RGB"}
    assert outcome.payloads["32x32"] is data  # the source file itself, not a re-encoding
    assert np.array_equal(pixels(outcome.payloads["16x16"]), process_image(data, config).arrays["16x16"])
    assert outcome.masks == {}


def test_process_one_makes_an_encoder_refusal_that_image_s_failure(tmp_path):
    config = PresizeConfig.build(sizes=[16384], mode="longest", format="webp")  # WebP stops at 16383 a side
    outcome = process_one(png(gradient(100, 2)), None, {}, config, make_sink(str(tmp_path / "out"), config))
    assert outcome.values["status"] == "failed" and outcome.values["error"].startswith("encode failed: ")
    assert "16383" in outcome.values["error"] and (outcome.values["width"], outcome.values["height"]) == (100, 2)
    assert outcome.payloads == {} and outcome.masks == {}


# ---- paired targets ----------------------------------------------------------------------------------

def test_pair_targets_moves_points_and_boxes_with_the_image_and_clips_boxes():
    config = PresizeConfig.build(sizes=["60x40", "30x20"], mode="squash")
    result = process_image(png(gradient(120, 80)), config)
    coords = {"points": json.dumps([[10, 20], [119, 79]]), "boxes": json.dumps([[-10, 0, 60, 100]])}
    same, masks, moved = pair_targets(result, None, coords, config)
    assert same is result and masks == {}
    assert json.loads(moved["points_60x40"]) == [[5.0, 10.0], [59.5, 39.5]]
    assert json.loads(moved["points_30x20"]) == [[2.5, 5.0], [29.75, 19.75]]
    assert json.loads(moved["boxes_60x40"]) == [[0.0, 0.0, 30.0, 40.0]]  # clipped to the output


@pytest.mark.parametrize("coords,mask,masks,reason", [
    ({"points": "[[1, 2, 3]]"}, None, False, "points '[[1, 2, 3]]' is not a JSON list of 2-number lists"),
    ({"boxes": "not json"}, None, False, "boxes 'not json' is not a JSON list of 4-number lists"),
    ({}, None, True, "no mask for this image"),
    ({}, FileNotFoundError("m.png"), True, "mask read failed: FileNotFoundError: m.png"),
    ({}, encode(Image.new("L", (7, 5)), "PNG"), True, "mask is 7x5 but the image is 120x80"),
], ids=["points", "boxes", "no-mask", "mask-unread", "mask-size"])
def test_pair_targets_fails_the_image_when_a_target_is_unusable(coords, mask, masks, reason):
    config = PresizeConfig.build(sizes=[16], mode="crop", masks=masks)
    result = process_image(png(gradient(120, 80)), config)
    failed, got_masks, moved = pair_targets(result, mask, coords, config)
    assert failed.error == reason and failed.arrays is None and not failed.ok
    assert (failed.width, failed.height) == (120, 80) and got_masks == {}
    assert set(moved) == {f"{c}_16x16" for c in coords} and all(v is None for v in moved.values())


def test_pair_targets_resizes_a_mask_nearest_neighbour_keeping_its_classes():
    config = PresizeConfig.build(sizes=[20, "30x10"], mode="squash", masks=True)
    labels = np.zeros((80, 120), np.uint8)
    labels[:, 60:], labels[:20, :] = 3, 7
    result = process_image(png(gradient(120, 80)), config)
    _, masks, _ = pair_targets(result, encode(Image.fromarray(labels), "PNG"), {}, config)
    assert {k: m.shape for k, m in masks.items()} == {"20x20": (20, 20), "30x10": (10, 30)}
    assert all(set(np.unique(m)) == {0, 3, 7} for m in masks.values())  # no class made up between two
    assert (masks["20x20"][0, 0], masks["20x20"][19, 0], masks["20x20"][19, 19]) == (7, 0, 3)


# ---- one chunk ---------------------------------------------------------------------------------------

def test_a_chunk_of_good_and_broken_images_gives_ok_and_failed_rows_with_reasons(hostile_dir, tmp_path):
    items = list_source(str(hostile_dir)).items
    rows = process_chunk(items, 0, CHUNK_CONFIG, make_sink(str(tmp_path / "out"), CHUNK_CONFIG))
    must_fail = {name.rstrip("!"): name.endswith("!") for name in hostile_files()}
    assert rows["relpath"].tolist() == items["relpath"].tolist() and rows["index"].tolist() == items["index"].tolist()
    assert {rel: status == "failed" for rel, status in zip(rows["relpath"], rows["status"])} == {
        rel: must_fail[rel] for rel in items["relpath"]}
    assert all(pd.isna(error) != (status == "failed") for status, error in zip(rows["status"], rows["error"]))
    reasons = dict(zip(rows["relpath"], rows["error"]))
    assert reasons["bad/empty.jpg"] == "empty file (0 bytes)"
    assert reasons["bad/text.jpg"].startswith("not an image in an allowed format")
    assert reasons["bad/huge-header.png"] == "40000x40000 = 1600000000 pixels is above max_pixels 100000000"
    ok = rows[rows["status"] == "ok"]
    assert (ok["width"] > 0).all() and (ok["height"] > 0).all() and ok["mode"].notna().all()
    plain = rows.set_index("relpath").loc["ok/plain.jpg"]
    assert (plain["width"], plain["height"], plain["mode"]) == (120, 80, "RGB")


def test_chunk_rows_have_the_manifest_columns_and_dtypes(hostile_dir, tmp_path):
    items = list_source(str(hostile_dir)).items
    rows = process_chunk(items, 0, CHUNK_CONFIG, make_sink(str(tmp_path / "out"), CHUNK_CONFIG))
    assert list(rows.columns) == MANIFEST_COLUMNS
    assert {c: str(rows[c].dtype) for c in rows.columns} == {
        "index": "int64", "origin": "string", "relpath": "string", "label": "string", "label_id": "int32",
        "status": "string", "error": "string", "height": "int32", "width": "int32", "mode": "string"}
    assert rows["label"].tolist() == items["label"].tolist() and rows["origin"].tolist() == items["origin"].tolist()


def test_a_chunk_writes_each_ok_image_in_every_size_and_nothing_for_a_failed_one(tmp_path):
    make_labelled(tmp_path / "src", per_class=3, classes=2)
    (tmp_path / "src" / "class1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    items = list_source(str(tmp_path / "src")).items
    sink = make_sink(str(tmp_path / "out"), CHUNK_CONFIG)
    rows = process_chunk(items, 3, CHUNK_CONFIG, sink)
    assert rows["status"].tolist().count("failed") == 1
    for rel, status in zip(rows["relpath"], rows["status"]):
        direct = process_image((tmp_path / "src" / rel).read_bytes(), CHUNK_CONFIG)
        for key in CHUNK_CONFIG.size_keys:
            path = written(tmp_path / "out", key, rel)
            assert path.exists() == (status == "ok"), path
            if status == "ok":
                assert np.array_equal(pixels(path.read_bytes()), direct.arrays[key])
    marker = sink.done_rows()  # written after the data: the chunk counts as done
    assert set(marker["chunk"]) == {3} and marker["relpath"].tolist() == rows["relpath"].tolist()


def test_a_file_gone_after_listing_is_a_read_failure_of_that_image_only(tmp_path):
    make_labelled(tmp_path / "src", per_class=2, classes=2)
    items = list_source(str(tmp_path / "src")).items
    (tmp_path / "src" / "class1" / "img000.jpg").unlink()
    rows = process_chunk(items, 0, CHUNK_CONFIG, make_sink(str(tmp_path / "out"), CHUNK_CONFIG))
    errors = dict(zip(rows["relpath"], rows["error"]))
    assert errors.pop("class1/img000.jpg").startswith("read failed: FileNotFoundError")
    assert all(pd.isna(e) for e in errors.values()) and len(errors) == 3


def test_a_chunk_keeps_reused_results_without_reading_or_writing_those_images_again(tmp_path):
    make_labelled(tmp_path / "src", per_class=3, classes=2)
    items = list_source(str(tmp_path / "src")).items
    sink = make_sink(str(tmp_path / "out"), CHUNK_CONFIG)
    first = process_chunk(items, 0, CHUNK_CONFIG, sink)
    reused = ["class0/img001.png", "class1/img002.webp"]
    for rel in reused:
        (tmp_path / "src" / rel).unlink()  # not read again: it may be gone
        for key in CHUNK_CONFIG.size_keys:
            written(tmp_path / "out", key, rel).unlink()  # not written again
    again = process_chunk(items, 0, CHUNK_CONFIG, sink, reuse=first[first["relpath"].isin(reused)])
    pd.testing.assert_frame_equal(again, first)
    for rel in items["relpath"]:
        assert written(tmp_path / "out", "16x16", rel).exists() == (rel not in reused)


# ---- manifest rows -----------------------------------------------------------------------------------

def test_result_columns_and_previous_values_are_what_processing_decided_by_relpath(hostile_dir, tmp_path):
    items = list_source(str(hostile_dir)).items
    rows = process_chunk(items, 0, CHUNK_CONFIG, make_sink(str(tmp_path / "out"), CHUNK_CONFIG))
    columns = result_columns(rows)
    assert tuple(columns) == RESULT_COLUMNS and all(len(v) == len(rows) for v in columns.values())
    assert all(v is not pd.NA for values in columns.values() for v in values)  # missing is None
    known = previous_values(rows)
    assert set(known) == set(rows["relpath"])
    assert known["bad/empty.jpg"] == {"status": "failed", "error": "empty file (0 bytes)", "height": -1, "width": -1,
                                      "mode": None}
    assert known["ok/plain.jpg"] == {"status": "ok", "error": None, "height": 80, "width": 120, "mode": "RGB"}


@pytest.mark.parametrize("previous", [None, pd.DataFrame(columns=MANIFEST_COLUMNS)], ids=["none", "empty"])
def test_previous_values_of_no_earlier_rows_is_empty(previous):
    assert previous_values(previous) == {}


def test_result_columns_take_moved_coordinates_but_not_the_listed_ones():
    rows = pd.DataFrame({"relpath": ["a.jpg"], "status": ["ok"], "error": [None], "height": [8], "width": [9],
                         "mode": ["RGB"], "points": ["[[1, 2]]"], "points_16x16": ["[[2, 4]]"], "mask": ["m.png"],
                         "label": ["x"]})
    assert result_columns(rows) == {"status": ["ok"], "error": [None], "height": [8], "width": [9], "mode": ["RGB"],
                                    "points_16x16": ["[[2, 4]]"]}


def test_manifest_frame_orders_the_columns_types_them_and_drops_chunk_and_spans():
    rows = pd.DataFrame({"points_16x16": ["[[2, 4]]"], "mode": ["RGB"], "width": [9], "height": [8], "error": [None],
                         "status": ["ok"], "label_id": [0], "label": ["x"], "relpath": ["a.jpg"],
                         "origin": ["file:///a.jpg"], "index": [5], "chunk": [1], "offset": [512], "size": [100],
                         "mask": ["m.png"]})
    out = manifest_frame(rows)
    assert list(out.columns) == MANIFEST_COLUMNS + ["points_16x16", "mask"]
    assert str(out["points_16x16"].dtype) == str(out["mask"].dtype) == "string"
    assert ((str(out["index"].dtype), str(out["label_id"].dtype), str(out["height"].dtype))
            == ("int64", "int32", "int32"))
    assert out["index"].tolist() == [5] and pd.isna(out["error"][0])
