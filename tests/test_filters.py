"""Write-time filters (``--min-side``, ``--max-aspect``): images outside them are ``skipped`` rows with the
reason, known from the header, counted apart from failures, kept as not-ok rows in arrays, written nowhere
as image files, and final when a run resumes."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from PIL import Image

import imgtools
from conftest import encode, gradient, png_header_only, read_back
from imgtools.cli import main
from imgtools.config import OutputFormat, PresizeConfig
from imgtools.engine import process_image
from imgtools.errors import ConfigError, DestinationError
from imgtools.schema import Status
from imgtools.sinks.files import output_relpath

FORMATS = ["zarr", "npy", "jpeg"]
#: width x height of each input (sorted as listed); broken.jpg is not a picture
SIDES = {"a/small.png": (100, 48), "a/square.png": (80, 80), "a/wide.jpg": (520, 100),
         "b/photo.jpg": (150, 100), "b/tall.png": (60, 250)}
BROKEN = "b/broken.jpg"
#: filter -> (its settings, the reason of each input it skips)
FILTERS = {
    "min_side": ({"min_side": 64}, {"a/small.png": "shorter side 48 < --min-side 64",
                                    "b/tall.png": "shorter side 60 < --min-side 64"}),
    "max_aspect": ({"max_aspect": 3}, {"a/wide.jpg": "aspect 5.2 > --max-aspect 3",
                                       "b/tall.png": "aspect 4.167 > --max-aspect 3"}),
}
CLI_FLAGS = {"min_side": ["--min-side", "64"], "max_aspect": ["--max-aspect", "3"]}


@pytest.fixture
def mixed_dir(tmp_path):
    """Pictures of every kind of side and aspect under two labels, and one broken file (two chunks of 3)."""
    root = tmp_path / "src"
    for k, (rel, (w, h)) in enumerate(SIDES.items()):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        fmt = "PNG" if rel.endswith(".png") else "JPEG"
        (root / rel).write_bytes(encode(Image.fromarray(gradient(w, h, seed=k)), fmt))
    (root / BROKEN).write_bytes(b"not a picture")
    return root


def _presize(src, dest, fmt: str, **filters):
    config = PresizeConfig.build(sizes=[16], format=fmt, chunk=3, **filters)
    return imgtools.presize(str(src), str(dest), config=config, workers=0, progress=False)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(FILTERS))
def test_images_outside_a_filter_are_skipped_with_the_reason_and_counted_apart(mixed_dir, tmp_path, fmt, name):
    settings, reasons = FILTERS[name]
    dest = tmp_path / "out"
    report = _presize(mixed_dir, dest, fmt, **settings)
    assert (report.total, report.ok, report.failed, report.skipped) == (6, 3, 1, 2)
    assert report.failures["origin"].str.endswith("broken.jpg").tolist() == [True]
    assert "2 skipped" in str(report)
    m = pd.read_parquet(dest / "manifest.parquet").set_index("relpath")
    skipped = m[m["status"] == Status.SKIPPED.value]
    assert dict(zip(skipped.index, skipped["error"])) == reasons
    for rel in reasons:  # the original's sides, upright, from the header
        assert (m.at[rel, "width"], m.at[rel, "height"]) == SIDES[rel]
    assert m.at[BROKEN, "status"] == Status.FAILED.value
    stored = dict(zip(m.index, read_back(dest, fmt, "16x16")))  # arrays: zeros and ok false where not ok
    assert {rel for rel, img in stored.items() if img is None} == set(reasons) | {BROKEN}
    if fmt == "jpeg":  # nothing written for them
        assert not any((dest / "16x16" / output_relpath(rel, OutputFormat.JPEG)).exists() for rel in reasons)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(FILTERS))
def test_reading_ok_images_leaves_skipped_rows_out(mixed_dir, tmp_path, fmt, name):
    settings, reasons = FILTERS[name]
    _presize(mixed_dir, tmp_path / "out", fmt, **settings)
    ds = imgtools.open(str(tmp_path / "out"))
    kept = set(ds.manifest["relpath"].iloc[ds.rows])
    assert kept == set(SIDES) - set(reasons) and len(ds) == 3
    everything = ds.view(failed=True)
    assert len(everything) == 6 and not ds.ok[ds.manifest["relpath"].isin(list(reasons)).to_numpy()].any()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(FILTERS))
def test_a_resumed_run_keeps_skipped_rows_without_reading_them_again(mixed_dir, tmp_path, fmt, name):
    settings, reasons = FILTERS[name]
    dest = tmp_path / "out"
    first = _presize(mixed_dir, dest, fmt, **settings)
    for rel in reasons:  # read again, they would fail now
        (mixed_dir / rel).write_bytes(b"garbage")
    again = _presize(mixed_dir, dest, fmt, **settings)
    # arrays trust every done chunk; image files redo the chunk with the failed image, and only that image
    expected = (2, 0) if fmt != "jpeg" else (1, 1)
    assert (again.chunks_resumed, again.processed) == expected
    assert (again.ok, again.failed, again.skipped) == (first.ok, first.failed, first.skipped) == (3, 1, 2)
    m = pd.read_parquet(dest / "manifest.parquet").set_index("relpath")
    assert dict(zip(m.index[m["status"] == "skipped"], m["error"][m["status"] == "skipped"])) == reasons


@pytest.mark.parametrize("name", list(FILTERS))
def test_a_skipped_image_is_known_from_its_header_alone(name):
    settings, _ = FILTERS[name]
    header_only = png_header_only(40, 400)  # a valid header, no pixels behind it
    skipped = process_image(header_only, PresizeConfig.build(sizes=[16], **settings))
    assert (skipped.status, skipped.width, skipped.height) == (Status.SKIPPED, 40, 400)
    assert f"--{name.replace('_', '-')}" in skipped.error
    assert process_image(header_only, PresizeConfig.build(sizes=[16])).status is Status.FAILED


@pytest.mark.parametrize("name", list(FILTERS))
def test_the_cli_prints_the_skipped_count(mixed_dir, tmp_path, capsys, name):
    code = main(["presize", str(mixed_dir), str(tmp_path / "out"), "--size", "16", "--workers", "0", "--quiet",
                 "--strict", *CLI_FLAGS[name]])
    out = capsys.readouterr().out
    assert "6 images: 3 ok, 1 failed, 2 skipped" in out
    assert code == 1 and out.count("  failed:") == 1  # --strict counts the broken file, not the skipped ones


@pytest.mark.parametrize("args,named", [
    (["--min-side", "-1"], "min_side -1"),
    (["--max-aspect", "0.5"], "max_aspect 0.5"),
    (["--max-aspect", "-2"], "max_aspect -2"),
    (["--max-aspect", "abc"], "--max-aspect"),
    (["--min-side", "big"], "--min-side"),
])
def test_a_bad_filter_exits_2_with_one_line_naming_it(mixed_dir, tmp_path, capsys, args, named):
    try:
        code = main(["presize", str(mixed_dir), str(tmp_path / "out"), "--workers", "0", "--quiet", *args])
    except SystemExit as exc:  # argparse's own refusal
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("imgtools: error:") and named in err, err
    assert args[1] in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("settings,named", [
    ({"min_side": 1.5}, "min_side 1.5"), ({"min_side": True}, "min_side True"),
    ({"max_aspect": 0.99}, "max_aspect 0.99"), ({"max_aspect": "nan"}, "max_aspect nan"),
])
def test_a_bad_filter_value_is_a_config_error_naming_it(settings, named):
    with pytest.raises(ConfigError, match=named):
        PresizeConfig.build(**settings)


def test_filters_off_by_zero_or_none_and_round_trip_through_the_config():
    assert PresizeConfig.build(min_side=0, max_aspect=None) == PresizeConfig()
    cfg = PresizeConfig.build(min_side="64", max_aspect="2.5")
    assert (cfg.min_side, cfg.max_aspect) == (64, 2.5) and PresizeConfig.from_dict(cfg.to_dict()) == cfg
    assert (cfg.limits.min_side, cfg.limits.max_aspect) == (64, 2.5)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_changed_filter_is_another_job_and_an_older_job_record_still_resumes(mixed_dir, tmp_path, fmt):
    dest = tmp_path / "out"
    _presize(mixed_dir, dest, fmt)
    with pytest.raises(DestinationError, match="min_side"):
        _presize(mixed_dir, dest, fmt, min_side=64)
    job_file = dest / ".imgtools" / "job.json"
    job = json.loads(job_file.read_text())
    del job["config"]["min_side"], job["config"]["max_aspect"]  # as an imgtools before the filters wrote it
    job_file.write_text(json.dumps(job))
    again = _presize(mixed_dir, dest, fmt)
    assert again.chunks_resumed == (2 if fmt != "jpeg" else 1) and again.skipped == 0

