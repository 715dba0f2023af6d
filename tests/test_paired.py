"""Paired targets follow their image: masks stay aligned under every mode, points and boxes move along."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import imgtools
from conftest import encode, read_back
from imgtools.config import PresizeConfig

N = 24


@pytest.fixture
def scenes(tmp_path):
    """Images with one red rectangle on a dark noisy background, a mask of it, and its centre and box."""
    rng = np.random.default_rng(5)
    rows = []
    for i in range(N):
        w, h = int(rng.integers(80, 300)), int(rng.integers(80, 300))
        img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        x0, y0 = int(rng.integers(w // 4, w // 2)), int(rng.integers(h // 4, h // 2))
        x1, y1 = x0 + int(rng.integers(w // 5, w // 3)), y0 + int(rng.integers(h // 5, h // 3))
        img[y0:y1, x0:x1] = (230, 30, 30)
        mask = np.zeros((h, w), np.uint8)
        mask[y0:y1, x0:x1] = 1
        rel = f"k{i % 2}/s{i:02d}"
        for root, arr in (("images", img), ("masks", mask)):
            (tmp_path / root / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / root / f"{rel}.png").write_bytes(encode(Image.fromarray(arr), "PNG"))
        rows.append({"path": f"images/{rel}.png", "mask": f"masks/{rel}.png",
                     "points": json.dumps([[(x0 + x1) / 2, (y0 + y1) / 2]]), "boxes": json.dumps([[x0, y0, x1, y1]])})
    pd.DataFrame(rows).to_csv(tmp_path / "scenes.csv", index=False)
    return tmp_path


def _masks(dest, fmt, key, relpaths):
    import zarr

    if fmt == "zarr":
        return list(zarr.open_group(str(dest), mode="r")[f"{key}/masks"][:])
    if fmt == "npy":
        return list(np.concatenate([np.load(p) for p in sorted((dest / key).glob("masks-part-*.npy"))]))
    out = []
    for rel in relpaths:
        with Image.open(dest / f"{key}-masks" / rel) as img:
            out.append(np.asarray(img))
    return out


@pytest.mark.parametrize("fmt", ["zarr", "npy", "png"])
@pytest.mark.parametrize("mode", ["crop", "pad", "squash"])
def test_masks_stay_aligned_with_their_images(scenes, tmp_path, fmt, mode):
    dest = tmp_path / "o"
    cfg = PresizeConfig.build(sizes=[48, "64x40"], mode=mode, format=fmt, chunk=8)
    report = imgtools.presize(str(scenes / "images"), str(dest), config=cfg, masks=str(scenes / "masks"),
                              workers=0, progress=False)
    assert report.failed == 0
    m = pd.read_parquet(dest / "manifest.parquet")
    assert all(mk.endswith("masks/" + rel) for mk, rel in zip(m["mask"], m["relpath"]))
    for key in cfg.size_keys:
        images = read_back(dest, fmt, key)
        masks = _masks(dest, fmt, key, m["relpath"])
        for img, mask in zip(images, masks):
            red = (img[..., 0] > 150) & (img[..., 1] < 100)
            assert mask.shape == img.shape[:2] and set(np.unique(mask)) <= {0, 1}
            iou = (red & (mask == 1)).sum() / max((red | (mask == 1)).sum(), 1)
            assert iou > 0.8, (key, iou)


@pytest.mark.parametrize("mode", ["crop", "pad", "squash"])
def test_points_and_boxes_move_with_the_geometry(scenes, tmp_path, mode):
    dest = tmp_path / "o"
    cfg = PresizeConfig.build(sizes=["64x48"], mode=mode, chunk=8)
    imgtools.presize(str(scenes / "scenes.csv"), str(dest), config=cfg, workers=0, progress=False)
    m = pd.read_parquet(dest / "manifest.parquet")
    assert {"points_64x48", "boxes_64x48", "mask"} <= set(m.columns)
    images = read_back(dest, "zarr", "64x48")
    masks = _masks(dest, "zarr", "64x48", m["relpath"])
    for img, mask, points, boxes in zip(images, masks, m["points_64x48"], m["boxes_64x48"]):
        (x, y), = json.loads(points)
        assert mask[int(y), int(x)] == 1 and img[int(y), int(x), 0] > 150
        (bx0, by0, bx1, by1), = json.loads(boxes)
        ys, xs = np.nonzero(mask)
        assert abs(bx0 - xs.min()) <= 1.5 and abs(bx1 - (xs.max() + 1)) <= 1.5
        assert abs(by0 - ys.min()) <= 1.5 and abs(by1 - (ys.max() + 1)) <= 1.5


def test_missing_or_mismatched_mask_fails_only_that_image(scenes, tmp_path):
    (scenes / "masks" / "k0" / "s00.png").unlink()
    (scenes / "masks" / "k1" / "s01.png").write_bytes(encode(Image.new("L", (7, 7)), "PNG"))
    (scenes / "masks" / "k0" / "s02.png").write_bytes(encode(Image.new("RGB", (7, 7)), "PNG"))
    report = imgtools.presize(str(scenes / "images"), str(tmp_path / "o"), sizes=[16], masks=str(scenes / "masks"),
                              workers=0, progress=False)
    m = pd.read_parquet(tmp_path / "o" / "manifest.parquet").set_index("relpath")
    assert report.failed == 3
    assert m.loc["k0/s00.png", "error"] == "no mask for this image"
    assert "mask is 7x7 but the image is" in m.loc["k1/s01.png", "error"]
    assert "one channel" in m.loc["k0/s02.png", "error"]


def test_masks_on_another_filesystem_are_read_from_it(scenes, tmp_path):
    import fsspec

    mem = fsspec.filesystem("memory")
    for path in sorted((scenes / "masks").rglob("*.png")):
        mem.pipe_file(f"/imgtools-masks/{path.relative_to(scenes / 'masks')}", path.read_bytes())
    report = imgtools.presize(str(scenes / "images"), str(tmp_path / "o"), sizes=[16],
                              masks="memory://imgtools-masks", workers=0, progress=False)
    assert (report.total, report.failed) == (N, 0)
    mem.rm("/imgtools-masks", recursive=True)


@pytest.mark.parametrize("fmt", ["zarr", "npy"])
def test_derived_sizes_bring_their_masks_along(scenes, tmp_path, fmt):
    from imgtools.derive import derive

    dest = tmp_path / "o"
    cfg = PresizeConfig.build(sizes=[96], mode="crop", format=fmt, chunk=8)
    imgtools.presize(str(scenes / "images"), str(dest), config=cfg, masks=str(scenes / "masks"), workers=0,
                     progress=False)
    derive(str(dest), "96x96", [48], workers=0)
    m = pd.read_parquet(dest / "manifest.parquet")
    for img, mask in zip(read_back(dest, fmt, "48x48"), _masks(dest, fmt, "48x48", m["relpath"])):
        red = (img[..., 0] > 150) & (img[..., 1] < 100)
        assert (red & (mask == 1)).sum() / max((red | (mask == 1)).sum(), 1) > 0.75


def test_one_image_listed_with_two_masks_is_refused_for_files_and_kept_twice_in_arrays(scenes, tmp_path):
    from imgtools.errors import ConfigError

    table = pd.read_csv(scenes / "scenes.csv")
    twice = pd.concat([table.iloc[:3], table.iloc[:1].assign(mask=table["mask"].iloc[1])], ignore_index=True)
    twice.to_csv(scenes / "twice.csv", index=False)
    with pytest.raises(ConfigError, match="with masks"):
        imgtools.presize(str(scenes / "twice.csv"), str(tmp_path / "png"), sizes=[32], format="png", workers=0,
                         progress=False)
    same = pd.concat([table.iloc[:3], table.iloc[:1]], ignore_index=True)  # the same pair twice: one file
    same.to_csv(scenes / "same.csv", index=False)
    report = imgtools.presize(str(scenes / "same.csv"), str(tmp_path / "png"), sizes=[32], format="png", workers=0,
                              progress=False)
    assert report.ok == 4
    arrays = imgtools.presize(str(scenes / "twice.csv"), str(tmp_path / "z"), sizes=[32], workers=0, progress=False)
    assert arrays.failed == 1  # the first image with the second's mask: sizes differ, that row fails with why


def test_masks_of_two_images_that_meet_in_the_mask_tree_are_refused(scenes, tmp_path):
    from imgtools.errors import ConfigError

    for name in ("a.jpg", "a.jpg.png"):  # images a.jpg and a.jpg.png: masks a.jpg.png and a.jpg.png
        (scenes / "images" / name).write_bytes((scenes / "images" / "k0" / "s00.png").read_bytes())
        (scenes / "masks" / name).write_bytes((scenes / "masks" / "k0" / "s00.png").read_bytes())
    pd.DataFrame({"path": ["images/a.jpg", "images/a.jpg.png"], "mask": ["masks/a.jpg", "masks/a.jpg.png"]}).to_csv(
        scenes / "meet.csv", index=False)
    with pytest.raises(ConfigError, match=r"a\.jpg\.png \(mask\)"):
        imgtools.presize(str(scenes / "meet.csv"), str(tmp_path / "o"), sizes=[32], format="jpeg", workers=0,
                         progress=False)
