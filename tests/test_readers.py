"""Reading results back: batches cover every ok image once per epoch with its label, in every form;
map-style access; the contact sheet."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import imgtools
from imgtools import kernels
from imgtools.config import PresizeConfig
from imgtools.errors import ConfigError, SourceError


@pytest.fixture(params=["zarr", "npy", "png"])
def presized(request, labelled_dir, tmp_path):
    (labelled_dir / "class2" / "broken.jpg").write_bytes(b"nope")
    dest = tmp_path / "o"
    cfg = PresizeConfig.build(sizes=[16, "24x12"], mode="crop", format=request.param, chunk=16)
    imgtools.presize(str(labelled_dir), str(dest), config=cfg, workers=0, progress=False)
    return imgtools.open(str(dest))


def _key(img: np.ndarray) -> bytes:
    return np.ascontiguousarray(img).tobytes()


@pytest.mark.parametrize("batch_size", [7, 32, 200])
@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_cover_every_ok_image_once_with_its_label(presized, batch_size, shuffle):
    ds = presized
    truth = {}
    for j in range(len(ds)):
        img, label = ds[j]
        truth.setdefault(_key(img), []).append(label)
    seen = []
    for x, y in ds.batches("16x16", batch_size=batch_size, shuffle=shuffle, seed=3):
        assert x.dtype == np.uint8 and x.shape[1:] == (16, 16, 3) and len(x) == len(y) <= batch_size
        seen += [(_key(img), int(label)) for img, label in zip(x, y)]
    assert len(seen) == int(ds.ok.sum()) == 80
    for key, label in seen:
        assert label in truth[key]
    assert sorted(k for k, _ in seen) == sorted(k for k, labels in truth.items() for _ in labels)


def test_shuffled_epochs_differ_by_seed_and_repeat_with_the_same_seed(presized):
    first = [y.tolist() for _, y in presized.batches("16x16", 10, seed=1)]
    again = [y.tolist() for _, y in presized.batches("16x16", 10, seed=1)]
    other = [y.tolist() for _, y in presized.batches("16x16", 10, seed=2)]
    assert first == again and first != other


def test_normalised_channel_first_batches_match_the_kernels(presized):
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    plain = list(presized.batches("24x12", 16, shuffle=False))
    normed = list(presized.batches("24x12", 16, shuffle=False, normalize=(mean, std), layout="NCHW"))
    for (x, y), (xn, yn) in zip(plain, normed):
        assert xn.dtype == np.float32 and xn.shape == (len(x), 3, 12, 24) and (y == yn).all()
        np.testing.assert_allclose(xn, kernels.hwc_to_chw(kernels.normalize_ref(x, mean, std)), atol=1e-5)


def test_map_style_access_covers_ok_images_only_and_the_dask_array_every_row(presized):
    ds = presized
    failed = int(np.flatnonzero(~ds.ok)[0])
    assert len(ds) == 80 and len(ds.manifest) == 81 and ds.label_names == ["class0", "class1", "class2", "class3"]
    assert failed not in ds.rows and (ds.rows == np.flatnonzero(ds.ok)).all()
    img, label = ds[5]
    assert img.shape == (16, 16, 3) and label == ds.labels[ds.rows[5]] and img.flags.writeable
    with pytest.raises(IndexError):
        ds[80]
    every = ds.view("24x12", failed=True)
    assert len(every) == 81
    if ds.config.format.value == "png":
        assert every[failed][0] is None  # image files: no file for a failed image
    else:
        assert not every[failed][0].any()  # arrays: zeros
    arr = ds.images("24x12")
    assert arr.shape == (81, 12, 24, 3)
    np.testing.assert_array_equal(arr[int(ds.rows[40])].compute(), ds.image(int(ds.rows[40]), "24x12"))
    np.testing.assert_array_equal(ds.view("24x12")[7][0], ds.image(int(ds.rows[7]), "24x12"))
    with pytest.raises(ConfigError, match="size '99x99' is not in"):
        ds.images("99x99")
    assert "81 images (80 ok)" in repr(ds)


def test_batched_items_equal_single_items(presized):
    view = presized.view("24x12", transform=lambda img: img[::-1])
    picks = [3, 70, 4, 3, 41]
    together = view.__getitems__(picks)
    for j, (img, label) in zip(picks, together):
        alone, alone_label = view[j]
        np.testing.assert_array_equal(img, alone)
        assert label == alone_label


def test_contact_sheet_is_a_png_of_the_expected_size_listing_failures(presized, tmp_path):
    sheet = presized.show(n=9, out=str(tmp_path / "sheet.png"), thumb=40)
    assert sheet.size == (3 * 40 + 360, 3 * (40 + 14))  # 3x3 tiles of the largest size, failures beside
    with Image.open(tmp_path / "sheet.png") as png:
        assert png.format == "PNG" and png.size == sheet.size
        assert np.asarray(png.convert("RGB"))[:, 3 * 40 + 8 :].min() < 100  # text beside the tiles


def test_show_cli_writes_the_sheet_and_open_refuses_non_outputs(presized, tmp_path):
    out = tmp_path / "s.png"
    proc = subprocess.run([sys.executable, "-m", "imgtools.cli", "show", presized.dest, "--n", "4", "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and out.exists() and "contact sheet" in proc.stdout, proc.stderr
    with pytest.raises(SourceError, match="not a complete imgtools output"):
        imgtools.open(str(tmp_path))
