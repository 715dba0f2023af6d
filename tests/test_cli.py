"""The imgtools command: exit codes, one-line errors, hostile inputs, labels that stay with their images."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import zarr

from conftest import hostile_files

IMGTOOLS = [sys.executable, "-m", "imgtools.cli"]


def run(args, env=None, timeout=300):
    return subprocess.run(IMGTOOLS + [str(a) for a in args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.parametrize("args,message", [
    (["presize", "{missing}", "{dest}"], "does not exist"),
    (["presize", "{missing}", "{dest}", "--workers", "1"], "does not exist"),  # the cluster started early closes
    (["presize", "{src}", "{dest}", "--size", "0"], "size '0'"),
    (["presize", "{src}", "{dest}", "--size", "big"], "size 'big'"),
    (["presize", "{src}", "{dest}", "--mode", "stretch"], "--mode"),
    (["presize", "{src}", "{dest}", "--format", "gif"], "--format"),
    (["presize", "{src}", "{dest}", "--chunk", "0"], "chunk 0"),
    (["presize", "{src}", "{dest}", "--chunk", "many"], "--chunk"),
    (["presize", "{src}", "{dest}", "--mode", "shortest"], "varying size"),
    (["presize", "{src}", "{dest}", "--background", "nope"], "colour 'nope'"),
    (["presize", "{src}", "{dest}", "--storage-option", "novalue"], "key=value"),
    (["presize", "{src}", "{dest}", "--storage-option", "block_size:=big"], "'big' is not JSON"),
    (["presize", "{src}", "{dest}", "--workers", "-1"], "workers -1 must be 0"),
    (["presize", "{src}"], "required"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_usage_exits_2_with_one_line_naming_the_problem(args, message, labelled_dir, tmp_path, cli_env):
    subs = {"{missing}": tmp_path / "nowhere", "{dest}": tmp_path / "out", "{src}": labelled_dir}
    proc = run([subs.get(a, a) for a in args], env=cli_env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgtools: error:") and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


#: The CLI's main() in a process that then writes its own peak RSS (KiB) to argv[1]. The child's own
#: VmHWM, not os.wait4's ru_maxrss: that one also counts the parent's pages at fork time (pytest's, which
#: grow test after test), so it measured the test order, not the run.
_PEAK_OF_MAIN = """
import sys
from imgtools.cli import main
code = main(sys.argv[2:])
with open("/proc/self/status") as status:
    peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
open(sys.argv[1], "w").write(peak)
sys.exit(code)
"""


def test_hostile_folder_completes_with_exit_0_one_row_per_file_in_seconds(hostile_dir, tmp_path, cli_env):
    dest = tmp_path / "out"
    started = time.monotonic()
    peak = tmp_path / "peak.txt"
    proc = subprocess.run([sys.executable, "-c", _PEAK_OF_MAIN, str(peak), "presize", str(hostile_dir), str(dest),
                           "--size", "32", "--size", "64", "--workers", "0", "--quiet"],
                          env=cli_env, capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - started
    stdout, stderr = proc.stdout, proc.stderr
    assert proc.returncode == 0, stderr
    assert elapsed < 60
    assert int(peak.read_text()) < 1_500_000  # KiB: bounded memory
    expected = {name.rstrip("!"): name.endswith("!") for name in hostile_files()}
    expected = {k: v for k, v in expected.items() if not k.endswith(".eps")}  # not an image extension: not listed
    m = pd.read_parquet(dest / "manifest.parquet")
    assert (sorted(m["relpath"]) == sorted(p.split("/", 0)[0] for p in expected)
            and list(m["index"]) == list(range(len(m))))
    for rel, status, error in zip(m["relpath"], m["status"], m["error"]):
        assert status == ("failed" if expected[rel] else "ok"), (rel, error)
        assert (error is pd.NA) != expected[rel]
    assert f"{int((m.status == 'failed').sum())} failed" in stdout
    g = zarr.open_group(str(dest), mode="r")
    ok = g["ok"][:]
    assert ok.tolist() == (m["status"] == "ok").tolist()
    rotated = int(m.index[m["relpath"] == "ok/rotated6.jpg"][0])
    assert (m.loc[rotated, "width"], m.loc[rotated, "height"]) == (120, 80)
    img = g["64x64/images"][rotated].astype(int)  # crop of the upright gradient: red grows to the right
    assert img[32, 60, 0] - img[32, 3, 0] > 60 and abs(img[60, 32, 0] - img[3, 32, 0]) < 30


def test_strict_exits_1_when_any_image_failed(hostile_dir, tmp_path, cli_env):
    proc = run(["presize", hostile_dir / "bad", tmp_path / "o", "--size", "8", "--workers", "0", "--strict", "--quiet"],
               env=cli_env)
    assert proc.returncode == 1 and "failed:" in proc.stdout


def test_cli_on_a_local_cluster_prints_dashboard_progress_and_summary(labelled_dir, tmp_path, cli_env):
    proc = run(["presize", labelled_dir, tmp_path / "o", "--size", "16", "--workers", "2", "--chunk", "32"],
               env=cli_env)
    assert proc.returncode == 0, proc.stderr
    assert "dashboard: http" in proc.stderr and "presize: 100%" in proc.stderr
    assert "80 images: 80 ok, 0 failed" in proc.stdout
    again = run(["presize", labelled_dir, tmp_path / "o", "--size", "16", "--workers", "2", "--chunk", "32", "--quiet"],
                env=cli_env)
    assert again.returncode == 0 and "0 processed" in again.stdout and "3 chunks resumed" in again.stdout


def test_labels_stay_with_their_images_a_classifier_learns_them(labelled_dir, tmp_path, cli_env):
    from sklearn.linear_model import LogisticRegression

    dest = tmp_path / "o"
    assert run(["presize", labelled_dir, dest, "--size", "12", "--mode", "squash", "--workers", "0", "--chunk", "16",
                "--quiet"], env=cli_env).returncode == 0
    g = zarr.open_group(str(dest), mode="r")
    x = g["12x12/images"][:].reshape(80, -1).astype(np.float32) / 255
    y = g["labels"][:]
    assert sorted(set(y.tolist())) == [0, 1, 2, 3]
    order = np.random.default_rng(0).permutation(80)
    train, test = order[:40], order[40:]
    model = LogisticRegression(max_iter=2000).fit(x[train], y[train])
    assert model.score(x[test], y[test]) >= 0.95
    shuffled = np.random.default_rng(1).permutation(y)
    assert LogisticRegression(max_iter=2000).fit(x[train], shuffled[train]).score(x[test], shuffled[test]) < 0.7


def test_module_and_console_script_agree_on_version(cli_env):
    proc = run(["--version"], env=cli_env)
    assert proc.returncode == 0 and proc.stdout.startswith("imgtools ")
    script = os.path.join(os.path.dirname(sys.executable), "imgtools")
    assert subprocess.run([script, "--version"], capture_output=True, text=True).stdout == proc.stdout


@pytest.mark.parametrize("text,expected", [
    ("project=1234", ("project", "1234")),            # digits stay text: project numbers, secrets
    ("key=0012", ("key", "0012")),
    ("anon=true", ("anon", True)),
    ("token=null", ("token", None)),
    ("client_kwargs={\"region_name\": \"x\"}", ("client_kwargs", {"region_name": "x"})),
    ("block_size:=65536", ("block_size", 65536)),
    ("endpoint_url=http://127.0.0.1:9000/a=b", ("endpoint_url", "http://127.0.0.1:9000/a=b")),
])
def test_storage_option_values_stay_text_unless_json_is_asked_for(text, expected):
    from imgtools.cli import build_parser

    args = build_parser().parse_args(["presize", "src", "dest", "--storage-option", text, "--storage-option", "x=y"])
    assert args.storage_option == [expected, ("x", "y")]
