"""The ``imgtools`` command: parse, call the library, print. Nothing else lives here.

Exit codes: 0 when a run completes (even with per-image failures), 1 with ``--strict`` when any image
failed, when storage kept failing after retries (run again to resume) or when ``sync`` could not copy
a file, 2 for bad usage or a missing SOURCE (one line naming the problem, no traceback).

Option groups that several commands share (``--scheduler | --workers``, ``--storage-option``) are
defined once, as argparse parent parsers.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any, NoReturn

from ._version import __version__
from .config import (
    DEFAULT_IMAGE_TIMEOUT,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    Channels,
    Compression,
    LabelSource,
    OutputFormat,
    PresizeConfig,
    Resample,
    ResizeMode,
    ShardImage,
)
from .errors import ConfigError, ImgtoolsError, StorageError

__all__ = ["main", "console", "build_parser"]

DEFAULT_SAMPLE = "data/sample"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: ``imgtools: error: ...`` and exit 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"imgtools: error: {message}\n")
        raise SystemExit(2)


def _storage_option(text: str) -> tuple[str, Any]:
    """``key=value`` keeps the value as text, except ``true`` / ``false`` / ``null`` and JSON objects or
    lists (``{"region_name": "x"}``); ``key:=value`` takes the value as JSON, for numbers (``block_size:=1048576``).
    So a project number or a secret made of digits stays text.

    Examples
    --------
    >>> _storage_option("project=1234"), _storage_option("anon=true"), _storage_option("block_size:=65536")
    (('project', '1234'), ('anon', True), ('block_size', 65536))
    """
    key, sep, value = text.partition("=")
    as_json = key.endswith(":")
    key = key[:-1] if as_json else key
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"storage option {text!r} is not key=value or key:=json")
    if as_json or value in ("true", "false", "null") or value.lstrip()[:1] in ("{", "["):
        try:
            return key, json.loads(value)
        except ValueError:
            if as_json:
                raise argparse.ArgumentTypeError(f"storage option {text!r}: {value!r} is not JSON") from None
    return key, value


def _choices(enum_cls) -> list[str]:
    return [m.value for m in enum_cls]


def _cluster_options(workers_help: str = "local worker processes (0: in this process)") -> argparse.ArgumentParser:
    """The parent parser of the commands that run on Dask: ``--scheduler ADDRESS | --workers N``."""
    parent = argparse.ArgumentParser(add_help=False)
    where = parent.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="address of a running Dask scheduler")
    where.add_argument("--workers", type=int, metavar="N", help=workers_help)
    return parent


def _storage_options(help_text: str | None = None) -> argparse.ArgumentParser:
    """The parent parser of the commands that reach storage: ``--storage-option KEY=VALUE``, repeatable
    (see :func:`_storage_option`); collected as a list of ``(key, value)`` pairs."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--storage-option", action="append", type=_storage_option, default=[], metavar="KEY=VALUE",
                        help=help_text)
    return parent


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``imgtools`` command.

    Examples
    --------
    >>> args = build_parser().parse_args(["derive", "out.zarr", "--from", "64x64", "--size", "32", "--workers", "0"])
    >>> args.command, args.source_size, args.size, args.workers, args.storage_option
    ('derive', '64x64', ['32'], 0, [])
    """
    parser = _Parser(prog="imgtools", description="Presize image datasets for machine learning.")
    parser.add_argument("--version", action="version", version=f"imgtools {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    cluster, storage = _cluster_options(), _storage_options()

    p = sub.add_parser("presize", help="resize a folder, bucket or manifest of images into arrays or files",
                       parents=[_cluster_options("local worker processes (default: one per core; 0: in this process)"),
                                _storage_options("fsspec option for SOURCE and DEST, repeatable; "
                                                 "KEY:=JSON for a number")])
    p.add_argument("source", help="folder or URL of images, or a .csv/.parquet manifest with a 'path' column")
    p.add_argument("dest", help="folder or URL for the output (created when missing)")
    p.add_argument("--size", action="append", metavar="N|WxH", help="target size, repeatable (default 64)")
    p.add_argument("--mode", default="crop", choices=_choices(ResizeMode))
    p.add_argument("--format", default="zarr", choices=_choices(OutputFormat))
    p.add_argument("--labels", default="folder", choices=_choices(LabelSource))
    p.add_argument("--chunk", type=int, help="images per chunk and per task (default: 16-256, about 16 MiB a chunk; "
                   "webdataset: images per shard, default 1024)")
    p.add_argument("--resample", default="bicubic", choices=_choices(Resample))
    p.add_argument("--compression", default="none", choices=_choices(Compression),
                   help="zarr chunk codec (default none: one image reads as one byte range)")
    p.add_argument("--background", default="white", help="colour under transparent pixels (default white)")
    p.add_argument("--pad-color", default="black", help="colour of the padding in --mode pad (default black)")
    p.add_argument("--only-if-bigger", action="store_true", help="never enlarge an image")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse images with more decoded pixels (default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES,
                   help="refuse files bigger than this, unread, when the listing knows their size (default 1 GiB)")
    p.add_argument("--formats", help="comma-separated Pillow formats to accept (default JPEG,PNG,WEBP,GIF,BMP,TIFF)")
    p.add_argument("--quality", type=int, default=90, help="encoder quality for jpeg/webp output")
    p.add_argument("--image-timeout", type=float, default=DEFAULT_IMAGE_TIMEOUT, metavar="SECONDS",
                   help=f"fail an image whose decode and resize take longer (default {DEFAULT_IMAGE_TIMEOUT:g})")
    p.add_argument("--channels", type=int, default=3, choices=[c.value for c in Channels],
                   help="1: luminance (Pillow's L), 3: RGB (default), 4: RGBA with alpha kept (not jpeg)")
    p.add_argument("--shard-image", default="jpg", choices=_choices(ShardImage),
                   help="how images are encoded in --format webdataset shards (default jpg)")
    p.add_argument("--min-side", type=int, default=0, metavar="N",
                   help="skip images whose shorter side is below N pixels (default 0: off)")
    p.add_argument("--max-aspect", type=float, default=0.0, metavar="R",
                   help="skip images whose long side / short side is above R, at least 1 (default 0: off)")
    p.add_argument("--masks", metavar="FOLDER", help="label masks paired with the images by relative path")
    p.add_argument("--overwrite", action="store_true", help="delete an earlier output at DEST and start again")
    p.add_argument("--append", action="store_true",
                   help="add the inputs DEST does not hold yet after its rows, leaving those as they are "
                        "(same settings as DEST's)")
    p.add_argument("--allow-changed", action="store_true",
                   help="with --append: append even though inputs DEST holds changed or vanished since "
                        "(their rows stay as they are)")
    p.add_argument("--relist", action="store_true",
                   help="list SOURCE again when resuming (a resumed run takes the listing that the "
                        "interrupted run left in DEST)")
    p.add_argument("--dry-run", action="store_true",
                   help="list and plan only: print the inputs, labels, chunks, tasks and output size; write nothing")
    p.add_argument("--strict", action="store_true", help="exit 1 when any image failed")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar (and a local cluster started for the run has no dashboard)")

    d = sub.add_parser("derive", help="add smaller sizes to a zarr/npy output from a stored size, without decoding",
                       parents=[cluster, storage])
    d.add_argument("dest", help="a zarr or npy output of imgtools presize")
    d.add_argument("--from", dest="source_size", required=True, metavar="WxH", help="the stored size to start from")
    d.add_argument("--size", action="append", required=True, metavar="N|WxH", help="new size, repeatable")

    v = sub.add_parser("show", help="a contact sheet of a presized output, with labels and the failed inputs",
                       parents=[storage])
    v.add_argument("dest", help="an imgtools output")
    v.add_argument("--size", help="which size (default: the largest)")
    v.add_argument("--n", type=int, default=64, help="images on the sheet (default 64)")
    v.add_argument("--out", default="sheet.png", help="PNG to write (default sheet.png)")
    v.add_argument("--seed", type=int, default=0)

    i = sub.add_parser("inspect", help="what is in a dataset: formats, modes, sizes, broken files, duplicates",
                       parents=[cluster, storage])
    i.add_argument("source", help="folder or URL of images, or a .csv/.parquet manifest")
    i.add_argument("--json", action="store_true", help="print the summary as JSON")
    i.add_argument("--hist", metavar="PNG", help="write a histogram of image sizes")

    s = sub.add_parser("sample", help="write the sample dataset (labelled folders of mixed images, a few broken)")
    s.add_argument("dest", nargs="?", default=DEFAULT_SAMPLE, help=f"folder to write (default {DEFAULT_SAMPLE})")
    s.add_argument("--n", type=int, default=3000, help="number of files (default 3000)")
    s.add_argument("--seed", type=int, default=0)
    y = sub.add_parser("sync",
                       help="copy a file tree between two locations (local, gs://, s3://), in parallel, resumably",
                       parents=[_storage_options("fsspec option for SRC and DST, repeatable")])
    y.add_argument("src", help="folder, URL or file to copy")
    y.add_argument("dst", help="folder or URL to copy to; files already there with the same size and MD5 are skipped")
    y.add_argument("--dst-option", action="append", type=_storage_option, default=None, metavar="KEY=VALUE",
                   help="fsspec option for DST only (then --storage-option is for SRC only), repeatable")
    y.add_argument("--batch", type=int, default=64, help="files per concurrent batch (default 64)")
    y.add_argument("--parallel", type=int, default=4, help="batches in flight (default 4)")
    y.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _presize(args: argparse.Namespace) -> int:
    config = PresizeConfig.build(
        sizes=args.size or [64], mode=args.mode, format=args.format, labels=args.labels, chunk=args.chunk,
        resample=args.resample, compression=args.compression, background=args.background, pad_color=args.pad_color,
        only_if_bigger=args.only_if_bigger, max_pixels=args.max_pixels, max_bytes=args.max_bytes,
        quality=args.quality, channels=args.channels, min_side=args.min_side, max_aspect=args.max_aspect,
        formats=[f for f in args.formats.split(",") if f.strip()] if args.formats else None,
        shard_image=args.shard_image, image_timeout=args.image_timeout,
    )
    if args.dry_run and args.append:
        raise ConfigError("--dry-run does not plan an --append")
    if args.dry_run:
        from .pipeline import dry_run

        print(dry_run(args.source, args.dest, config=config, storage_options=dict(args.storage_option),
                      masks=args.masks))
        return 0
    from .cluster import EarlyCluster

    # a local cluster of N workers starts now, while the pipeline loads and SOURCE is listed; with --quiet
    # nobody is shown the dashboard's link, so it has none
    local = args.workers is not None and args.workers >= 1
    early = EarlyCluster(args.workers, dashboard=not args.quiet) if local else None
    try:
        from .pipeline import presize

        report = presize(args.source, args.dest, config=config, client=early, scheduler=args.scheduler,
                         workers=args.workers, storage_options=dict(args.storage_option), masks=args.masks,
                         overwrite=args.overwrite, progress=not args.quiet, append=args.append,
                         allow_changed=args.allow_changed, relist=args.relist)
    finally:
        if early is not None:
            early.close()
    print(report)
    if report.changed or report.vanished:
        first = (report.changed or report.vanished)[0]
        sys.stderr.write(f"imgtools: warning: {len(report.changed)} inputs changed and {len(report.vanished)} "
                         f"vanished since DEST was written (first: {first}); their rows are kept as they were\n")
    if report.failed:
        shown = report.failures.head(10)
        for origin, error in zip(shown["origin"], shown["error"]):
            print(f"  failed: {origin}: {error}")
        if report.failed > len(shown):
            print(f"  ... {report.failed - len(shown)} more in {report.dest}/manifest.parquet")
    return 1 if args.strict and report.failed else 0


def _derive(args: argparse.Namespace) -> int:
    from .derive import derive

    report = derive(args.dest, args.source_size, args.size, scheduler=args.scheduler, workers=args.workers,
                    storage_options=dict(args.storage_option))
    print(report)
    return 0


def _show(args: argparse.Namespace) -> int:
    from .readers import open as open_dataset

    if args.n < 1:
        raise ConfigError(f"n {args.n!r} must be at least 1")
    ds = open_dataset(args.dest, dict(args.storage_option))
    sheet = ds.show(size=args.size, n=args.n, seed=args.seed, out=args.out)
    print(f"{ds!r}\ncontact sheet {sheet.width}x{sheet.height}: {args.out}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from .inspect import inspect

    report = inspect(args.source, scheduler=args.scheduler, workers=args.workers,
                     storage_options=dict(args.storage_option))
    print(report.to_json() if args.json else report)
    if args.hist:
        report.histogram(args.hist)
    return 0


def _sample(args: argparse.Namespace) -> int:
    from .sample import make_sample

    info = make_sample(args.dest, n=args.n, seed=args.seed)
    print(f"sample dataset: {info.n} files in {len(info.classes)} labelled folders ({len(info.broken)} broken) "
          f"at {info.path}")
    return 0


def _sync(args: argparse.Namespace) -> int:
    from .sync import sync

    report = sync(args.src, args.dst, dict(args.storage_option),
                  dst_storage_options=None if args.dst_option is None else dict(args.dst_option),
                  batch=args.batch, parallel=args.parallel, progress=not args.quiet)
    print(report)
    for path, error in zip(report.failures["path"].head(10), report.failures["error"].head(10)):
        print(f"  failed: {path}: {error}")
    return 1 if report.failed else 0


_COMMANDS = {"presize": _presize, "derive": _derive, "show": _show, "inspect": _inspect, "sample": _sample,
             "sync": _sync}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``imgtools`` command line; returns the exit code.

    Examples
    --------
    >>> main(["presize", "photos/", "photos.zarr", "--size", "64", "--size", "224"])   # doctest: +SKIP
    """
    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except StorageError as exc:  # the storage, not the command, failed: what was done is kept
        sys.stderr.write(f"imgtools: error: {exc}; run the same command again to resume\n")
        return 1
    except ImgtoolsError as exc:
        sys.stderr.write(f"imgtools: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("imgtools: interrupted; run the same command again to resume\n")
        return 130


def console() -> NoReturn:
    """The ``imgtools`` script: :func:`main`, then the exit handlers, a flush, and an exit without the
    interpreter's teardown of what a run loaded (pandas, zarr, distributed: 0.2-1 s of a short run). A
    thread still at work (none of imgtools' own) gets the usual exit instead, which waits for it."""
    code = main()
    if any(not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    console()
