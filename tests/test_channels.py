"""--channels 1|3|4 (issue 18, item 2): luminance as Pillow's ``L``, RGB, RGBA with alpha kept, in every output
form and through every reader; checked against Pillow's own conversions and resizes on real photographs and on
images with a known alpha pattern."""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil
import subprocess
import sys

import fsspec
import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

import imgtools
from conftest import encode, gradient, psnr, read_back
from imgtools import kernels
from imgtools.config import Channels, DecodeLimits, PresizeConfig
from imgtools.decode import decode
from imgtools.derive import derive
from imgtools.errors import ConfigError
from imgtools.resample import Filter, resample, resample_ref
from imgtools.resize import draft_request
from imgtools.sinks.files import output_relpath

MODES = {1: "L", 3: "RGB", 4: "RGBA"}
WHITE = (255, 255, 255)
#: the photographs of ``photo_dir`` taken into the mixed source: colour, one turned by EXIF, one progressive, grey
PHOTOS = ["astronaut_whole.jpg", "coffee_portrait.jpg", "chelsea_whole.jpg", "camera_grey.jpg"]


def alpha_pattern() -> np.ndarray:
    """120 x 90 RGBA: the left half fully transparent pure red, the right half blue, opaque below row 30 and
    half transparent (alpha 128) above it."""
    arr = np.zeros((90, 120, 4), np.uint8)
    arr[:, :60] = (255, 0, 0, 0)
    arr[:, 60:] = (0, 0, 255, 255)
    arr[:30, 60:, 3] = 128
    return arr


@pytest.fixture(scope="module")
def mixed(photo_dir, tmp_path_factory) -> pathlib.Path:
    """Real photographs (colour and grey JPEGs) beside PNGs with alpha (RGBA with a known pattern, LA, a
    palette with a transparent index) and a 16-bit grey PNG."""
    root = tmp_path_factory.mktemp("mixed")
    for name in PHOTOS:
        shutil.copy(photo_dir / name, root / name)
    (root / "alpha.png").write_bytes(encode(Image.fromarray(alpha_pattern()), "PNG"))
    g = gradient(150, 100, seed=4)
    la = np.dstack([np.asarray(Image.fromarray(g).convert("L")), np.tile(np.linspace(0, 255, 150, dtype=np.uint8),
                                                                          (100, 1))])
    (root / "la.png").write_bytes(encode(Image.fromarray(la), "PNG"))  # (H, W, 2): mode LA
    pal = Image.fromarray(g).quantize(32)
    (root / "palette.png").write_bytes(encode(pal, "PNG", transparency=0))
    (root / "deep.png").write_bytes(encode(Image.fromarray(g[:, :, 1].astype(np.uint16) * 257), "PNG"))
    return root


def pillow_reference(path: pathlib.Path, channels: int, size: tuple[int, int]) -> np.ndarray:
    """Pillow alone: upright, alpha over white (1 and 3) then ``convert("L")`` for 1, or RGBA kept; then
    ``ImageOps.fit`` with bicubic (Pillow resizes RGBA premultiplied)."""
    img = ImageOps.exif_transpose(Image.open(path))
    if img.mode.startswith("I;16"):
        img = Image.fromarray(np.round(np.asarray(img) / 257).astype(np.uint8))
    rgba = img.convert("RGBA")
    if channels != 4:
        rgba = Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE + (255,)), rgba).convert(MODES[channels])
    out = np.asarray(ImageOps.fit(rgba, size, Image.Resampling.BICUBIC))
    return out[:, :, None] if out.ndim == 2 else out


def over_white(rgba: np.ndarray) -> np.ndarray:
    """What an RGBA image looks like over white (to compare RGBA images where colour under alpha 0 is moot)."""
    a = rgba[:, :, 3:].astype(np.float64) / 255
    return np.round(rgba[:, :, :3] * a + 255 * (1 - a)).astype(np.uint8)


def presize(source, dest, channels, fmt="zarr", sizes=(32,), **options):
    config = PresizeConfig.build(sizes=list(sizes), format=fmt, labels="none", channels=channels, **options)
    report = imgtools.presize(str(source), str(dest), config=config, workers=0, progress=False)
    assert report.failed == 0, report.failures
    return report


def stored(dest: pathlib.Path, fmt: str, key: str, channels: int) -> list[np.ndarray]:
    """Every stored image, read by zarr / np.load / Pillow (conftest.read_back), files in their own mode."""
    if fmt in ("zarr", "npy"):
        return read_back(dest, fmt, key)
    m = pd.read_parquet(dest / "manifest.parquet")
    out = []
    for rel in m["relpath"]:
        with Image.open(dest / key / output_relpath(rel, imgtools.config.OutputFormat(fmt))) as img:
            # WebP has no grey (Pillow writes L as RGB) and leaves out an alpha that is all 255
            assert img.mode == MODES[channels] or fmt == "webp", (rel, img.mode)
            arr = np.asarray(img.convert(MODES[channels]))
        out.append(arr[:, :, None] if arr.ndim == 2 else arr)
    return out


# ---- the config and the command ---------------------------------------------------------------------------

def test_channels_default_to_rgb_and_take_text_or_numbers():
    assert PresizeConfig().channels is Channels.RGB and PresizeConfig.build().limits.channels is Channels.RGB
    assert PresizeConfig.build(channels="1").channels is Channels.GRAY
    assert PresizeConfig.from_dict(PresizeConfig.build(channels=4, format="png").to_dict()).channels is Channels.RGBA
    assert PresizeConfig.from_dict({"sizes": ["32x32"]}).channels is Channels.RGB  # an older record
    with pytest.raises(ConfigError, match="channels 2 is not one of 1|3|4"):
        PresizeConfig.build(channels=2)
    with pytest.raises(ConfigError, match="channels 4 .* jpeg"):
        PresizeConfig.build(channels=4, format="jpeg")


@pytest.mark.parametrize("args,message", [
    (["--channels", "2"], "--channels: invalid choice: 2"),
    (["--channels", "4", "--format", "jpeg"], "channels 4 (RGBA) cannot be written as jpeg"),
])
def test_bad_channels_exit_2_with_one_line_and_write_nothing(args, message, mixed, tmp_path, cli_env):
    proc = subprocess.run([sys.executable, "-m", "imgtools.cli", "presize", str(mixed), str(tmp_path / "out"), *args],
                          capture_output=True, text=True, env=cli_env, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


# ---- decoding: L is Pillow's, exactly ---------------------------------------------------------------------

def test_gray_decode_is_pillows_L_of_the_upright_photo_exactly(photo_dir):
    for path in sorted(photo_dir.iterdir()):
        got = decode(path.read_bytes(), DecodeLimits(channels=Channels.GRAY)).pixels
        want = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("L"))
        assert got.shape == want.shape + (1,) and np.array_equal(got[:, :, 0], want), path.name


def test_gray_decode_is_pillows_L_of_the_rgb_decode_at_every_draft_scale(photo_dir, mixed):
    config = PresizeConfig.build(sizes=[64])
    for path in sorted(photo_dir.iterdir()) + sorted(mixed.glob("*.png")):
        data = path.read_bytes()
        rgb = decode(data, config.limits, lambda w, h: draft_request(w, h, config)).pixels
        gray = decode(data, DecodeLimits(channels=Channels.GRAY), lambda w, h: draft_request(w, h, config)).pixels
        assert np.array_equal(gray[:, :, 0], np.asarray(Image.fromarray(rgb).convert("L"))), path.name


def test_rgba_decode_keeps_alpha_and_gives_255_where_there_is_none(mixed):
    limits = DecodeLimits(channels=Channels.RGBA)
    assert np.array_equal(decode((mixed / "alpha.png").read_bytes(), limits).pixels, alpha_pattern())
    la = decode((mixed / "la.png").read_bytes(), limits).pixels
    assert np.array_equal(la, np.asarray(Image.open(mixed / "la.png").convert("RGBA")))
    palette = decode((mixed / "palette.png").read_bytes(), limits).pixels
    assert set(np.unique(palette[:, :, 3])) == {0, 255}
    for name in PHOTOS + ["deep.png"]:
        pixels = decode((mixed / name).read_bytes(), limits).pixels
        assert pixels.shape[2] == 4 and (pixels[:, :, 3] == 255).all(), name
        assert np.array_equal(pixels[:, :, :3], decode((mixed / name).read_bytes(), DecodeLimits()).pixels), name


# ---- the resampler and resize ------------------------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 4])
@pytest.mark.parametrize("kind", list(Filter))
def test_resample_of_one_and_four_channels_matches_the_numpy_reference(channels, kind):
    arr = np.random.default_rng(channels).integers(0, 256, (75, 100, channels), dtype=np.uint8)
    got, ref = resample(arr, (5.5, 2.0, 95.0, 70.0), (40, 30), kind), resample_ref(arr, (5.5, 2.0, 95.0, 70.0),
                                                                                     (40, 30), kind)
    assert got.shape == (30, 40, channels)
    diff = np.abs(got.astype(int) - ref)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99


@pytest.mark.parametrize("channels,pad", [(1, [76]), (3, [255, 0, 0]), (4, [255, 0, 0, 0])])
def test_pad_is_the_pad_colour_in_each_mode_transparent_for_rgba(channels, pad, mixed, tmp_path):
    presize(mixed, tmp_path / "o", channels, sizes=[32], mode="pad", pad_color="255,0,0")
    images = read_back(tmp_path / "o", "zarr", "32x32")
    wide = pd.read_parquet(tmp_path / "o" / "manifest.parquet")["relpath"].tolist().index("alpha.png")
    assert images[wide][0, 0].tolist() == pad and images[wide][-1, -1].tolist() == pad  # 120x90 -> 32x24 + bands
    assert images[wide][16, 16].tolist() != pad


# ---- every output form: shapes, values against Pillow -------------------------------------------------------

#: PSNR floors (dB) against Pillow's pipeline of the same mode, for every image: lossless forms (44 dB at
#: least when measured), then JPEG / WebP files at quality 90 (28.7 dB at least; test_quality's floor)
FLOORS = {"zarr": 40, "npy": 40, "png": 40, "jpeg": 25, "webp": 25}


def _check_output(dest, fmt, channels, mixed):
    names = pd.read_parquet(dest / "manifest.parquet")["relpath"].tolist()
    images = stored(dest, fmt, "32x32", channels)
    for name, got in zip(names, images):
        assert got.shape == (32, 32, channels), name
        want = pillow_reference(mixed / name, channels, (32, 32))
        if channels == 4:
            assert psnr(got[:, :, 3], want[:, :, 3]) > FLOORS[fmt], name
            got, want = over_white(got), over_white(want)
        assert psnr(got, want) > FLOORS[fmt], (name, psnr(got, want))
    if fmt in ("zarr", "npy"):
        assert np.stack(images).shape == (len(names), 32, 32, channels)


@pytest.mark.parametrize("fmt", ["zarr", "npy", "png", "webp"])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_every_form_stores_n_h_w_c_close_to_pillows_own_pipeline(channels, fmt, mixed, tmp_path):
    presize(mixed, tmp_path / "o", channels, fmt)
    _check_output(tmp_path / "o", fmt, channels, mixed)


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_files_hold_l_or_rgb_close_to_pillows_own_pipeline(channels, mixed, tmp_path):
    presize(mixed, tmp_path / "o", channels, "jpeg")
    _check_output(tmp_path / "o", "jpeg", channels, mixed)


def test_gray_output_is_the_rgb_output_converted_by_pillow_to_within_rounding(mixed, tmp_path):
    """L is taken before resizing (one channel resized instead of three): Pillow's L of the RGB output differs
    from it by the rounding of the two orders only, on photographs; on a hard synthetic edge (the alpha pattern
    over white) also where the bicubic overshoot is clipped channel by channel in RGB."""
    presize(mixed, tmp_path / "l", 1, sizes=[32, 64])
    presize(mixed, tmp_path / "rgb", 3, sizes=[32, 64])
    names = pd.read_parquet(tmp_path / "l" / "manifest.parquet")["relpath"].tolist()
    for key in ("32x32", "64x64"):
        pairs = zip(names, read_back(tmp_path / "l", "zarr", key), read_back(tmp_path / "rgb", "zarr", key))
        for name, gray, rgb in pairs:
            luma = np.asarray(Image.fromarray(rgb).convert("L"))
            diff = np.abs(gray[:, :, 0].astype(int) - luma)
            if name == "alpha.png":
                assert psnr(gray[:, :, 0], luma) > 35, key
            else:
                assert diff.max() <= 1 and diff.mean() < 0.25, (key, name, diff.max(), diff.mean())


def test_rgba_keeps_its_alpha_exactly_at_its_own_size_and_resizes_premultiplied(mixed, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(mixed / "alpha.png", source / "alpha.png")
    presize(source, tmp_path / "same", 4, sizes=["120x90"], mode="squash")
    assert np.array_equal(read_back(tmp_path / "same", "zarr", "120x90")[0], alpha_pattern())
    presize(source, tmp_path / "png", 4, "png", sizes=["120x90"], mode="squash")
    with Image.open(tmp_path / "png" / "120x90" / "alpha.png") as img:
        assert img.mode == "RGBA" and np.array_equal(np.asarray(img), alpha_pattern())
    presize(source, tmp_path / "small", 4, sizes=["40x30"], mode="squash")
    small = read_back(tmp_path / "small", "zarr", "40x30")[0]
    pillow = np.asarray(Image.fromarray(alpha_pattern()).resize((40, 30), Image.Resampling.BICUBIC))
    seen = small[:, :, 3] > 0
    # premultiplied: the red under alpha 0 never bleeds into the blue (straight resampling would mix them)
    assert seen.any() and (small[seen][:, 0] <= 2).all() and (small[seen][:, 2] >= 250).all()
    # Pillow rounds (and clips) between its two passes: a few levels at the hard edges
    assert np.abs(small[:, :, 3].astype(int) - pillow[:, :, 3]).max() <= 4
    assert psnr(small[:, :, 3], pillow[:, :, 3]) > 40
    assert psnr(over_white(small), over_white(pillow)) > 40


def test_rgb_output_is_byte_for_byte_what_it_was_before_channels(tmp_path):
    """Digests of the default output made by imgtools before --channels existed (commit 965a216)."""
    source = tmp_path / "src"
    source.mkdir()
    g = gradient(500, 375, 1)
    (source / "g.png").write_bytes(encode(Image.fromarray(g), "PNG"))
    (source / "rgba.png").write_bytes(encode(Image.fromarray(np.dstack([g, np.tile((np.arange(500) // 2).astype(
        np.uint8), (375, 1))])), "PNG"))
    digests = {}
    for mode in ("crop", "pad"):
        presize(source, tmp_path / mode, 3, sizes=[32, "48x40"], mode=mode)
        for key in ("32x32", "48x40"):
            digests[f"{mode}/{key}"] = hashlib.sha1(np.stack(read_back(tmp_path / mode, "zarr", key)).tobytes()
                                                    ).hexdigest()[:12]
    assert digests == BEFORE


BEFORE = {"crop/32x32": "9945e3c4ec24", "crop/48x40": "25713afdbd26", "pad/32x32": "d0fe34ff9a22",
          "pad/48x40": "a646a36f7bdb"}


# ---- reading back: open, ds[i], batches, stream, show, derive, read_images ----------------------------------

@pytest.fixture(scope="module")
def outputs(mixed, tmp_path_factory) -> dict[tuple[int, str], pathlib.Path]:
    """Outputs of the mixed source at 32x32 (crop), for 1 and 4 channels, as zarr, npy and png files."""
    root = tmp_path_factory.mktemp("outputs")
    made = {}
    for channels in (1, 4):
        for fmt in ("zarr", "npy", "png"):
            made[channels, fmt] = root / f"{fmt}{channels}"
            presize(mixed, made[channels, fmt], channels, fmt, chunk=4)
    return made


@pytest.mark.parametrize("fmt", ["zarr", "npy", "png"])
@pytest.mark.parametrize("channels", [1, 4])
def test_open_reads_every_image_with_its_channels(channels, fmt, outputs):
    dest = outputs[channels, fmt]
    ds = imgtools.open(str(dest))
    want = stored(dest, fmt, "32x32", channels)
    assert ds.channels == channels and len(ds) == len(want) == 8
    for j in range(len(ds)):
        img, _ = ds[j]
        assert img.shape == (32, 32, channels) and np.array_equal(img, want[j])
    assert ds.images().shape == (8, 32, 32, channels)
    assert np.array_equal(ds.images().compute(), np.stack(want))
    assert [x.shape for _, x in ds.chunks()] == [(4, 32, 32, channels)] * 2


@pytest.mark.parametrize("fmt", ["zarr", "npy"])
@pytest.mark.parametrize("channels", [1, 4])
def test_batches_normalise_per_channel_with_defaults_for_the_channel_count(channels, fmt, outputs):
    ds = imgtools.open(str(outputs[channels, fmt]))
    raw = np.stack([ds[j][0] for j in range(len(ds))])
    x, y = next(ds.batches(batch_size=8, shuffle=False, normalize=True, layout="NCHW"))
    assert x.shape == (8, channels, 32, 32) and x.dtype == np.float32
    mean, std = kernels.NORMALIZE_DEFAULTS[channels]
    np.testing.assert_allclose(x, kernels.hwc_to_chw(kernels.normalize_ref(raw, mean, std)), rtol=1e-5, atol=1e-5)
    mean, std = (0.5,) * channels, (0.25,) * channels
    x, _ = next(ds.batches(batch_size=8, shuffle=False, normalize=(mean, std)))
    np.testing.assert_allclose(x, kernels.normalize_ref(raw, mean, std), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=f"3 values for {channels} channels"):
        next(ds.batches(batch_size=8, normalize=((0.5,) * 3, (0.5,) * 3)))


@pytest.mark.torch
@pytest.mark.parametrize("channels", [1, 4])
def test_torch_stream_gives_nchw_batches_of_the_outputs_channels(channels, outputs):
    ds = imgtools.open(str(outputs[channels, "zarr"]))
    stream = ds.stream("32x32", batch_size=4, seed=0, normalize=True, layout="NCHW")
    batches = list(stream.loader())
    assert [tuple(x.shape) for x, _ in batches] == [(4, channels, 32, 32)] * 2
    rows = sorted(int(r) for _, y in batches for r in range(len(y)))
    assert len(rows) == len(ds)


@pytest.mark.parametrize("fmt", ["zarr", "png"])
@pytest.mark.parametrize("channels", [1, 4])
def test_show_puts_grey_tiles_grey_and_rgba_tiles_over_white(channels, fmt, outputs, tmp_path):
    ds = imgtools.open(str(outputs[channels, fmt]))
    sheet = ds.show(n=8, thumb=32, out=str(tmp_path / "sheet.png"))
    assert sheet.mode == "RGB" and (tmp_path / "sheet.png").exists()
    tiles = np.asarray(sheet)[: 3 * 46].reshape(3, 46, -1, 3)[:, :32]  # three rows of 32-pixel tiles + labels
    if channels == 1:
        assert (tiles[..., 0] == tiles[..., 1]).all() and (tiles[..., 1] == tiles[..., 2]).all()
    else:
        names = ds.manifest["relpath"].tolist()
        k = names.index("alpha.png")  # crop: the middle 90x90 of the pattern, its left part transparent red
        tile = np.asarray(sheet)[(k // 3) * 46 : (k // 3) * 46 + 32, (k % 3) * 32 : (k % 3) * 32 + 32]
        assert (tile[:, :4] == 255).all()  # the transparent red shows the white sheet
        assert (tile[-4:, -4:] == (0, 0, 255)).all()  # the opaque blue


@pytest.mark.parametrize("fmt", ["zarr", "npy"])
@pytest.mark.parametrize("channels", [1, 4])
def test_derive_keeps_the_channels_and_resamples_rgba_premultiplied(channels, fmt, outputs, tmp_path):
    dest = tmp_path / "d"
    shutil.copytree(outputs[channels, fmt], dest)
    derive(str(dest), "32x32", [16], workers=0)
    small = np.stack(read_back(dest, fmt, "16x16"))
    big = np.stack(read_back(dest, fmt, "32x32"))
    assert small.shape == (8, 16, 16, channels)
    names = pd.read_parquet(dest / "manifest.parquet")["relpath"].tolist()
    for name, s, b in zip(names, small, big):
        if channels == 4:
            s, b = over_white(s), over_white(b)
        pillow = np.asarray(Image.fromarray(b.squeeze(2) if channels == 1 else b).resize((16, 16),
                                                                                         Image.Resampling.BILINEAR))
        assert psnr(s, pillow.reshape(s.shape)) > 28, name
    if channels == 4:
        pattern = small[names.index("alpha.png")]
        seen = pattern[:, :, 3] > 0
        assert seen.any() and (pattern[seen][:, 0] <= 2).all()  # no red from under alpha 0
    assert imgtools.open(str(dest)).view("16x16")[0][0].shape == (16, 16, channels)


@pytest.mark.parametrize("channels", [1, 4])
def test_read_images_of_png_outputs_gives_their_channels_and_opencv_types(channels, outputs):
    from imgtools.spark import OCV_TYPES, to_array

    dest = outputs[channels, "png"]
    df = imgtools.read_images(str(dest / "32x32")).compute()
    assert len(df) == 8 and set(df["nChannels"]) <= {1, 3, 4} and (df["nChannels"] >= 1).all()
    if channels == 1:
        assert (df["nChannels"] == 1).all() and (df["mode"] == OCV_TYPES[1]).all()
    else:  # every file is RGBA; Spark's source gives 4 channels where there is transparency (the pattern)
        alpha = df[df["origin"].str.endswith("alpha.png")].iloc[0]
        assert (alpha["nChannels"], alpha["mode"]) == (4, OCV_TYPES[4])
    forced = imgtools.read_images(str(dest / "32x32"), channels=channels, channel_order="BGR").compute()
    assert (forced["nChannels"] == channels).all() and (forced["mode"] == OCV_TYPES[channels]).all()
    for _, row in forced.iterrows():
        with fsspec.open(row["origin"], "rb") as f, Image.open(f) as img:
            want = np.asarray(img.convert(MODES[channels]))
        got = to_array(row)
        if channels == 4:
            got = got[:, :, [2, 1, 0, 3]]  # BGRA, as Spark stores it
        assert np.array_equal(got.reshape(want.shape), want)


def test_read_images_brings_every_source_image_to_the_channels_asked(mixed):
    for channels in (1, 3, 4):
        df = imgtools.read_images(str(mixed), channels=channels).compute()
        assert len(df) == 8 and (df["nChannels"] == channels).all()
        for _, row in df.iterrows():
            with fsspec.open(row["origin"], "rb") as f:
                want = decode(f.read(), DecodeLimits(channels=Channels(channels))).pixels
            assert np.array_equal(imgtools.spark.to_array(row), want)


def test_an_output_recorded_before_channels_is_the_same_job_and_opens_as_rgb(mixed, tmp_path):
    dest = tmp_path / "old"
    presize(mixed, dest, 3, "npy")
    for name in (".imgtools/job.json", "imgtools.json"):  # as imgtools wrote them before --channels
        record = json.loads((dest / name).read_text())
        config = record["config"] if "config" in record else record["imgtools"]["config"]
        del config["channels"]
        (dest / name).write_text(json.dumps(record))
    again = presize(mixed, dest, 3, "npy")
    assert again.processed == 0 and again.chunks_done == 0 and again.chunks_resumed == 1
    ds = imgtools.open(str(dest))
    assert ds.channels == 3 and ds[0][0].shape == (32, 32, 3)
    with pytest.raises(imgtools.errors.DestinationError, match="channels: 3 there, 1 now"):
        presize(mixed, dest, 1, "npy")


@pytest.mark.parametrize("channels", [1, 4])
def test_webdataset_png_shards_hold_the_same_pixels_as_zarr(channels, mixed, outputs, tmp_path):
    presize(mixed, tmp_path / "wds", channels, "webdataset", shard_image="png", chunk=4)
    shards = imgtools.open(str(tmp_path / "wds"))
    arrays = imgtools.open(str(outputs[channels, "zarr"]))
    assert len(shards) == len(arrays) == 8
    for j in range(len(shards)):
        assert shards[j][0].shape == (32, 32, channels) and np.array_equal(shards[j][0], arrays[j][0])
    assert shards.show(n=8, thumb=32).mode == "RGB"
