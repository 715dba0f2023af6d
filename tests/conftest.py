"""Shared fixtures: datasets the tests make themselves (real photographs among them), a Dask cluster."""

from __future__ import annotations

import io
import os
import pathlib
import struct
import tarfile
import tempfile
import zipfile
import zlib

import numpy as np
import pytest
from fsspec.implementations.local import LocalFileSystem
from PIL import Image

# The GCS emulator lacks the bucket-layout call gcsfs makes unless told not to; set before any Dask
# worker process starts, so every process of the suite inherits it.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
# Remote outputs read back cache their chunks on local disk: in a folder of this run's, not the user's cache
os.environ.setdefault("IMGTOOLS_CACHE", tempfile.mkdtemp(prefix="imgtools-test-cache-"))


@pytest.fixture(scope="session")
def dask_client():
    """A real LocalCluster: two single-threaded worker processes."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    client = Client(cluster)
    yield client
    client.close()
    cluster.close()


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def gradient(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB picture with some texture: easy to check after resizing."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 255 * x / max(width - 1, 1)
    g = 255 * y / max(height - 1, 1)
    b = 128 + 100 * np.sin((x + y) / 7.0)
    img = np.stack([r, g, b], axis=-1) + rng.normal(0, 4, (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose valid IHDR claims ``width`` x ``height``, followed by garbage instead of pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    garbage = bytes(range(64))
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF)
            + struct.pack(">I", len(garbage)) + b"IDAT" + garbage + b"\x00" * 4)


def with_orientation(img: Image.Image, orientation: int) -> bytes:
    """A JPEG of ``img`` stored so that EXIF ``orientation`` brings it back upright."""
    inverse = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
               5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
               8: Image.Transpose.ROTATE_270}
    stored = img.transpose(inverse[orientation]) if orientation in inverse else img
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, "JPEG", quality=95, exif=exif)


def hostile_files() -> dict[str, bytes]:
    """Name -> bytes of every kind of awkward or broken input; names ending in ``!`` must fail."""
    rgb = Image.fromarray(gradient(120, 80))
    jpeg = encode(rgb, "JPEG", quality=90)
    png = encode(rgb, "PNG")
    rng = np.random.default_rng(1)
    corrupt_png = bytearray(png)
    corrupt_png[60:200] = rng.integers(0, 256, 140, dtype=np.uint8).tobytes()
    corrupt_jpeg = bytearray(jpeg)
    corrupt_jpeg[2:40] = b"\x00" * 38
    p_trans = Image.new("P", (40, 30))
    p_trans.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p_trans.paste(1, (10, 5, 30, 25))
    anim = [Image.new("RGB", (50, 40), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    gif = io.BytesIO()
    anim[0].save(gif, "GIF", save_all=True, append_images=anim[1:], duration=100, loop=0)
    i16 = Image.fromarray((np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16))
    return {
        "ok/plain.jpg": jpeg,
        "ok/with space.jpg": jpeg,
        "ok/hash#1.png": png,
        "ok/what?.png": png,
        "ok/[brackets].jpg": jpeg,
        "ok/ünïcödé-日本.jpg": jpeg,
        "ok/cmyk.jpg": encode(rgb.convert("CMYK"), "JPEG"),
        "ok/sixteen.png": encode(i16, "PNG"),
        "ok/palette-transparent.png": encode(p_trans, "PNG", transparency=0),
        "ok/palette-transparent.gif": encode(p_trans, "GIF", transparency=0),
        "ok/rotated6.jpg": with_orientation(rgb, 6),
        "ok/animated.gif": gif.getvalue(),
        "ok/one.png": encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"),
        "ok/thin.png": encode(Image.fromarray(gradient(4000, 3)), "PNG"),
        "ok/rgba.webp": encode(rgb.convert("RGBA"), "WEBP", lossless=True),
        "ok/bilevel.bmp": encode(rgb.convert("1"), "BMP"),
        "ok/x.jpg/inside.tif": encode(rgb, "TIFF"),
        "bad/empty.jpg!": b"",
        "bad/text.jpg!": b"this is not a picture\n" * 10,
        "bad/truncated.jpg!": jpeg[: len(jpeg) * 2 // 5],
        "bad/corrupt.png!": bytes(corrupt_png),
        "bad/corrupt.jpg!": bytes(corrupt_jpeg),
        "bad/huge-header.png!": png_header_only(40000, 40000),
        "bad/postscript.eps!": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
    }


@pytest.fixture
def hostile_dir(tmp_path) -> pathlib.Path:
    """A folder of awkward and broken files (see :func:`hostile_files`)."""
    root = tmp_path / "hostile"
    for name, data in hostile_files().items():
        path = root / name.rstrip("!")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def make_labelled(root: pathlib.Path, per_class: int = 20, classes: int = 4, seed: int = 0) -> list[tuple[str, int]]:
    """Write ``classes`` folders of distinguishable images of mixed sizes and formats; returns
    (relpath, class index) in sorted order."""
    rng = np.random.default_rng(seed)
    colors = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 210, 40), (200, 60, 200), (40, 200, 200)]
    out = []
    for c in range(classes):
        for i in range(per_class):
            w, h = int(rng.integers(40, 300)), int(rng.integers(40, 300))
            base = np.asarray(colors[c], np.float32) * rng.uniform(0.7, 1.0)
            arr = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
            fmt, ext = [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp")][i % 3]
            rel = f"class{c}/img{i:03d}.{ext}"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(encode(Image.fromarray(arr), fmt))
            out.append((rel, c))
    return sorted(out)


@pytest.fixture
def labelled_dir(tmp_path) -> pathlib.Path:
    root = tmp_path / "labelled"
    make_labelled(root)
    return root


def tree_bytes(root, fs=None, *, dirs: bool = False) -> dict[str, bytes | None]:
    """relpath (posix) -> bytes of every file under ``root``, in path order (folder by folder, as sorted
    ``Path`` objects go). On local disk, or on the fsspec filesystem ``fs`` when given (``root`` then in its
    terms, such as ``bucket/prefix``). With ``dirs``, every folder too, valued None: what a test that nothing
    at all was made needs (an empty folder holds no file)."""
    if fs is not None:
        root = str(root).rstrip("/")
        found = fs.find(root, withdirs=dirs, detail=True)
        return {path[len(root):].lstrip("/"): None if info["type"] == "directory" else fs.cat_file(path)
                for path, info in sorted(found.items(), key=lambda kv: kv[0].split("/")) if path != root}
    root = pathlib.Path(root)
    return {p.relative_to(root).as_posix(): p.read_bytes() if p.is_file() else None
            for p in sorted(root.rglob("*")) if dirs or p.is_file()}


def flip_last_byte(path: pathlib.Path) -> None:
    """Change ``path`` in place without changing its size: only a checksum can tell."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _tar(path: pathlib.Path, files, mode: str) -> None:
    with tarfile.open(path, mode) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _zip(path: pathlib.Path, files, compression: int) -> None:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in files:
            zf.writestr(name, data)


#: archive kind -> (suffix, writer of (member name, bytes) pairs to a path)
ARCHIVE_WRITERS = {
    "tar": (".tar", lambda p, f: _tar(p, f, "w")),
    "tar.gz": (".tar.gz", lambda p, f: _tar(p, f, "w:gz")),
    "tgz": (".tgz", lambda p, f: _tar(p, f, "w:gz")),
    "zip-deflate": (".zip", lambda p, f: _zip(p, f, zipfile.ZIP_DEFLATED)),
    "zip-stored": (".zip", lambda p, f: _zip(p, f, zipfile.ZIP_STORED)),
    "zip-bzip2": (".zip", lambda p, f: _zip(p, f, zipfile.ZIP_BZIP2)),
}


def make_archive(kind: str, files, folder: pathlib.Path, name: str = "images") -> pathlib.Path:
    """``folder/name.<suffix>``, an archive of ``kind`` (see :data:`ARCHIVE_WRITERS`) holding ``files``: (member
    name, bytes) pairs in archive order (a name may come twice), or a mapping such as :func:`tree_bytes` gives."""
    suffix, write = ARCHIVE_WRITERS[kind]
    path = folder / f"{name}{suffix}"
    write(path, files.items() if isinstance(files, dict) else files)
    return path


def read_back(dest: pathlib.Path, fmt: str, key: str) -> list[np.ndarray | None]:
    """The stored image of every manifest row of a local output at size ``key`` (None where there is
    none), whatever the form: read by zarr, np.load or Pillow, not by imgtools."""
    import pandas as pd
    import zarr

    from imgtools.config import OutputFormat
    from imgtools.sinks.files import output_relpath

    m = pd.read_parquet(dest / "manifest.parquet")
    ok = (m["status"] == "ok").to_numpy()
    if fmt == "zarr":
        arr = zarr.open_group(str(dest), mode="r")[f"{key}/images"][:]
    elif fmt == "npy":
        parts = sorted((dest / key).glob("part-*.npy"))
        arr = np.concatenate([np.load(p, mmap_mode="r") for p in parts])
        assert np.load(dest / "ok.npy").tolist() == ok.tolist()
    elif fmt == "webdataset":  # tar shards: each ok row's image member, keyed by its index
        import tarfile

        got: dict[int, np.ndarray] = {}
        for shard in sorted((dest / key).glob("shard-*.tar")):
            with tarfile.open(shard) as tar:
                for member in tar:
                    name, _, ext = member.name.partition(".")
                    if ext in ("jpg", "png", "webp"):
                        with Image.open(tar.extractfile(member)) as img:
                            got[int(name)] = np.asarray(img.convert("RGB"))
        assert sorted(got) == np.flatnonzero(ok).tolist()
        return [got.get(i) for i in range(len(m))]
    else:
        return [load_rgb(dest / key / output_relpath(r, OutputFormat(fmt))) if k else None
                for r, k in zip(m["relpath"], ok)]
    assert len(arr) == len(m)
    assert not arr[~ok].any()
    return [a if k else None for a, k in zip(arr, ok)]


def load_rgb(path: pathlib.Path) -> np.ndarray:
    """An image file's pixels as RGB, read by Pillow."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


@pytest.fixture(scope="module")
def slow_source(tmp_path_factory) -> pathlib.Path:
    """Enough real work (200 photo-sized JPEGs) that a run can be killed part-way."""
    root = tmp_path_factory.mktemp("slow")
    rng = np.random.default_rng(0)
    for i in range(200):
        arr = gradient(900, 700, seed=i) // 2 + rng.integers(0, 120, (700, 900, 3), dtype=np.uint8)
        (root / f"c{i % 3}").mkdir(exist_ok=True)
        (root / f"c{i % 3}" / f"img{i:03d}.jpg").write_bytes(encode(Image.fromarray(arr), "JPEG"))
    return root


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB, capped at 100 for identical images."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 100.0 if mse < 1e-10 else min(100.0, float(10 * np.log10(255.0**2 / mse)))


@pytest.fixture
def cli_env() -> dict[str, str]:
    """Environment for running the ``imgtools`` command in a subprocess."""
    env = dict(os.environ)
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    return env


def free_port() -> int:
    from imgtools.testing import free_port as free

    return free()


@pytest.fixture(scope="session")
def gcs_server():
    """gcp-storage-emulator on 127.0.0.1, for the whole session (see imgtools.testing)."""
    from imgtools.testing import gcs_emulator

    with gcs_emulator() as server:
        yield server


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1, for the whole session (see imgtools.testing)."""
    from imgtools.testing import s3_server as start

    with start() as server:
        yield server


_buckets = iter(range(10**6))


@pytest.fixture(params=["gs", "s3"])
def bucket(request):
    """A fresh, empty bucket on a real local server, one per test: (URL, storage_options, Server)."""
    server = request.getfixturevalue({"gs": "gcs_server", "s3": "s3_server"}[request.param])
    url = server.make_bucket(f"test-{next(_buckets):04d}-{os.getpid()}")
    return url, server.options(), server


@pytest.fixture
def dask_processes(tmp_path):
    """A real `dask scheduler` and two `dask worker` processes on 127.0.0.1 (each in its own process group,
    so a test can kill one); yields (scheduler address, dashboard port, worker processes)."""
    import subprocess
    import sys
    import time

    dask_cli = os.path.join(os.path.dirname(sys.executable), "dask")
    port, dash = free_port(), free_port()
    address = f"tcp://127.0.0.1:{port}"
    log = open(tmp_path / "dask.log", "w")  # noqa: SIM115 - closed below
    procs = [subprocess.Popen([dask_cli, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", f"127.0.0.1:{dash}"], stdout=log, stderr=log,
                              start_new_session=True)]
    time.sleep(1.0)
    workers = [subprocess.Popen([dask_cli, "worker", address, "--nthreads", "1", "--nworkers", "1",
                                 "--host", "127.0.0.1", "--no-dashboard"], stdout=log, stderr=log,
                                start_new_session=True) for _ in range(2)]
    procs += workers
    try:
        yield address, dash, workers
    finally:
        import signal

        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


class FlakyFileSystem(LocalFileSystem):
    """Local files under ``flaky://``, with faults on demand: ``faults[name] = n`` makes the next ``n``
    calls of ``open``, ``cat_ranges`` or ``pipe_file`` drop the connection (``ConnectionResetError``)."""

    protocol = "flaky"
    faults = {"open": 0, "cat_ranges": 0, "pipe_file": 0}

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        return super()._strip_protocol(path[len("flaky://"):] if path.startswith("flaky://") else path)

    def _fault(self, name: str) -> None:
        if self.faults[name] > 0:
            self.faults[name] -= 1
            raise ConnectionResetError(f"injected: connection dropped in {name}")

    def _open(self, path, *args, **kwargs):
        self._fault("open")
        return super()._open(path, *args, **kwargs)

    def cat_ranges(self, *args, **kwargs):
        self._fault("cat_ranges")
        return super().cat_ranges(*args, **kwargs)

    def pipe_file(self, *args, **kwargs):
        self._fault("pipe_file")
        return super().pipe_file(*args, **kwargs)


@pytest.fixture
def flaky_fs():
    """The ``flaky://`` filesystem, registered, with its faults reset before and after the test."""
    import fsspec

    fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)
    FlakyFileSystem.faults.update(dict.fromkeys(FlakyFileSystem.faults, 0))
    yield FlakyFileSystem
    FlakyFileSystem.faults.update(dict.fromkeys(FlakyFileSystem.faults, 0))


@pytest.fixture(scope="session")
def stores(tmp_path_factory) -> dict[str, str]:
    """One labelled tree (80 images in 4 classes, and one broken file) presized to each array layout:
    zarr stored as is (the default), zarr with LZ4 and with zstd, and npy; sizes 16x16 and 24x12, chunks
    of 16. Shared by the tests that only read (keyed by layout name, valued by DEST)."""
    import imgtools

    root = tmp_path_factory.mktemp("stores")
    make_labelled(root / "src")
    (root / "src" / "class2" / "broken.jpg").write_bytes(b"nope")
    out = {}
    for name, fmt, compression in [("zarr", "zarr", "none"), ("zarr-lz4", "zarr", "lz4"), ("zarr-zstd", "zarr", "zstd"),
                                   ("npy", "npy", "none")]:
        cfg = imgtools.PresizeConfig.build(sizes=[16, "24x12"], mode="crop", format=fmt, chunk=16,
                                           compression=compression)
        imgtools.presize(str(root / "src"), str(root / name), config=cfg, workers=0, progress=False)
        out[name] = str(root / name)
    return out


#: scikit-image's bundled photographs (inside its wheel: they load with no network), colour then grey
PHOTO_SOURCES = {
    "colour": ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
               "motorcycle_left", "motorcycle_right"],
    "grey": ["camera", "moon", "coins", "text"],
}


def _photo(name: str) -> np.ndarray:
    from skimage import data

    if name.startswith("motorcycle_"):
        left, right, _ = data.stereo_motorcycle()
        return left if name == "motorcycle_left" else right
    return getattr(data, name)()


def _crop(img: Image.Image, aspect: float, x: float) -> Image.Image:
    """The largest crop of ``img`` with width/height ``aspect``, its left edge at fraction ``x`` of the slack."""
    w, h = img.size
    cw, ch = (min(w, round(h * aspect)), h) if w / h >= aspect else (w, min(h, round(w / aspect)))
    left, top = round((w - cw) * x), (h - ch) // 2
    return img.crop((left, top, left + cw, top + ch))


def _cap(img: Image.Image, longest: int = 500) -> Image.Image:
    """Shrunk (never enlarged) so that its longer side is at most ``longest``, as ImageNet's photos are."""
    scale = longest / max(img.size)
    if scale >= 1:
        return img
    return img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory) -> pathlib.Path:
    """40 real photographs as JPEGs, made from scikit-image's bundled photos: each colour one whole (longer
    side 500, as ImageNet's), as a 500x375 landscape crop, as a 375x500 portrait crop and at its full
    resolution; the grey ones as greyscale (mode L) JPEGs. Mostly quality 90 and 4:2:0, some at 75 or 95,
    one progressive, one 4:4:4; three stored turned, with an EXIF orientation that brings them upright."""
    root = tmp_path_factory.mktemp("photos")
    turned = {("astronaut", "portrait"): 6, ("coffee", "portrait"): 8, ("rocket", "landscape"): 3}
    inverse = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
    for name in PHOTO_SOURCES["colour"]:
        full = Image.fromarray(_photo(name)).convert("RGB")
        variants = {"whole": _cap(full), "landscape": _cap(_crop(full, 4 / 3, 0.5)),
                    "portrait": _cap(_crop(full, 3 / 4, 0.3)), "full": full}
        for kind, img in variants.items():
            params = {"quality": 95 if kind == "full" else 90}
            if name in ("hubble_deep_field", "motorcycle_right") and kind == "whole":
                params["quality"] = 75
            if name == "chelsea" and kind == "whole":
                params["progressive"] = True
            if name == "immunohistochemistry" and kind == "landscape":
                params["subsampling"] = 0
            if (name, kind) in turned:
                exif = Image.Exif()
                exif[0x0112] = turned[name, kind]
                img, params["exif"] = img.transpose(inverse[turned[name, kind]]), exif
            (root / f"{name}_{kind}.jpg").write_bytes(encode(img, "JPEG", **params))
    for name in PHOTO_SOURCES["grey"]:
        (root / f"{name}_grey.jpg").write_bytes(encode(_cap(Image.fromarray(_photo(name)).convert("L")), "JPEG",
                                                       quality=90))
    return root


def reference(dest: str, size: str) -> np.ndarray:
    """Every row of one size of an array output, read by zarr itself or by np.load."""
    import zarr

    if pathlib.Path(dest, "zarr.json").exists():
        return zarr.open_group(dest, mode="r")[f"{size}/images"][:]
    parts = sorted(pathlib.Path(dest, size).glob("part-*.npy"))
    return np.concatenate([np.load(p) for p in parts])


def digest(img) -> str:
    """A hash of an image's pixels."""
    import hashlib

    return hashlib.sha1(np.ascontiguousarray(np.asarray(img)).tobytes()).hexdigest()


def rows_of(ds, xs) -> list[int]:
    """Manifest rows of the images in ``xs``, read at ``ds.size`` (the test images are all different)."""
    index = {digest(ds.image(int(r), ds.size)): int(r) for r in ds.rows}
    assert len(index) == len(ds.rows)
    return [index[digest(x)] for x in xs]

