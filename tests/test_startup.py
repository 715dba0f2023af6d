"""Start-up: ``import imgtools`` and the CLI load no heavy library until a command needs it, the client of a
run never loads Numba, the kernels' Numba cache lands in a writable folder when the package's own folder
cannot hold it (a read-only site-packages), and the workers of imgtools' local clusters are warmed and
close cleanly. Functional checks only: the timings are benchmarks/startup.py's."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

import imgtools

PACKAGE = pathlib.Path(imgtools.__file__).parent
HEAVY = ("pandas", "numba", "zarr", "dask", "distributed", "pyarrow", "PIL")


def fresh_python(script: str, env: dict[str, str] | None = None, cwd: pathlib.Path | None = None) -> object:
    """Run ``script`` in a new interpreter; it prints one JSON value last."""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


LOADED = "import json, sys\n{imports}\nprint(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))"


@pytest.mark.parametrize("imports, allowed", [
    ("import imgtools", ()),
    ("import imgtools.cli; imgtools.cli.build_parser()", ()),  # what `imgtools --help` loads
    ("import imgtools.pipeline", ("pandas", "zarr", "dask", "distributed", "pyarrow", "PIL")),  # no Numba
])
def test_imports_load_only_what_they_need(imports, allowed):
    loaded = fresh_python(LOADED.format(imports=imports, heavy=HEAVY))
    assert set(loaded) <= set(allowed), loaded


def test_public_names_resolve_on_first_use_and_inspect_stays_the_function():
    got = fresh_python("import json, imgtools\n"
                       "from imgtools.inspect import InspectReport\n"  # the submodule first: no shadowing
                       "import imgtools.inspect\n"
                       "names = {n: callable(getattr(imgtools, n)) for n in imgtools.__all__ if n != '__version__'}\n"
                       "print(json.dumps([names, imgtools.inspect.__module__, imgtools.InspectReport is InspectReport,"
                       " sorted(set(imgtools.__all__) - set(dir(imgtools)))]))")
    names, home, same, missing = got
    assert all(names.values()), names
    assert home == "imgtools.inspect" and same and missing == []
    with pytest.raises(AttributeError, match="no_such_name"):
        imgtools.no_such_name  # noqa: B018


LEAN_NUMBA = """
import json, sys, threading
import numpy as np
import imgtools.jit as lazy
from imgtools.config import PresizeConfig
from imgtools.resize import resize_all
# several threads reach Numba's first import at once (as a DataLoader's threads can)
threads = [threading.Thread(target=lazy.import_numba) for _ in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
resize_all(np.zeros((8, 8, 3), np.uint8), PresizeConfig.build(sizes=[4]), (8, 8))
import numba
from numba.np import arraymath, linalg
lean = "scipy.linalg" not in sys.modules
restored = linalg.ensure_blas is not lazy._deferred and arraymath.ensure_blas is linalg.ensure_blas
recorded = arraymath._HAVE_BLAS

@numba.njit
def uses_blas(a, b):
    return np.dot(a, b), np.correlate(a, b)[0]

got = uses_blas(np.arange(3.0), np.ones(3))
imported_on_compile = "scipy.linalg" in sys.modules  # Numba's own check ran when np.dot was compiled
print(json.dumps([lean, restored, recorded, imported_on_compile, arraymath._check_blas(),
                  [float(v) for v in got]]))
"""


def test_kernels_load_without_scipy_linalg_and_numba_keeps_its_blas_check():
    lean, restored, recorded, imported_on_compile, checked, got = fresh_python(LEAN_NUMBA)
    assert lean, "loading the resampler imported scipy.linalg"
    assert restored, "Numba's ensure_blas was left replaced"
    assert recorded == checked  # the answer Numba's own check gives
    assert imported_on_compile == checked  # with SciPy, compiling np.dot ran the real check (it imports it)
    assert got == [3.0, 3.0]  # a jitted np.dot and np.correlate still work


RESIZE_AND_CONVERT = """
import json, os, numpy as np
import imgtools
from imgtools import kernels, resample
from imgtools.config import PresizeConfig
from imgtools.resize import resize_all

out = resize_all(np.zeros((40, 30, 3), np.uint8), PresizeConfig.build(sizes=[8]), (30, 40))
gray = kernels.to_rgb(np.zeros((3, 4), np.uint8), kernels.ChannelLayout.GRAY)
stats = [resample._rows_transposed.stats, kernels._gray_to_rgb.stats]
print(json.dumps({"file": imgtools.__file__, "cache": os.environ.get("NUMBA_CACHE_DIR"),
                  "hits": [sum(s.cache_hits.values()) for s in stats],
                  "misses": [sum(s.cache_misses.values()) for s in stats]}))
"""


@pytest.mark.slow
def test_kernel_cache_lands_in_the_user_cache_when_the_package_folder_cannot_hold_it(tmp_path):
    # a copy of the package with a *file* where each __pycache__ folder would be: not writable, even by root
    site = tmp_path / "site"
    shutil.copytree(PACKAGE, site / "imgtools", ignore=shutil.ignore_patterns("__pycache__"))
    for folder in [site / "imgtools", *(p for p in (site / "imgtools").rglob("*") if p.is_dir())]:
        (folder / "__pycache__").write_text("not a folder\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(PYTHONPATH=str(site), XDG_CACHE_HOME=str(tmp_path / "xdg"))
    first = fresh_python(RESIZE_AND_CONVERT, env=env, cwd=tmp_path)
    assert pathlib.Path(first["file"]).parent == site / "imgtools"
    assert first["cache"] == str(tmp_path / "xdg" / "imgtools" / "numba")
    assert first["misses"] == [1, 1] and first["hits"] == [0, 0]  # compiled, and written there
    written = sorted(p.name for p in (tmp_path / "xdg" / "imgtools" / "numba").rglob("*.nbi"))
    assert any(n.startswith("resample._rows_transposed") for n in written), written
    assert any(n.startswith("kernels._gray_to_rgb") for n in written), written
    assert not any(p.is_dir() for p in site.rglob("__pycache__"))
    second = fresh_python(RESIZE_AND_CONVERT, env=env, cwd=tmp_path)
    assert second["hits"] == [1, 1] and second["misses"] == [0, 0]  # loaded from there, not compiled again


def test_numba_cache_dir_given_by_the_user_is_kept(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "mine"))
    got = fresh_python("import json, os, imgtools; print(json.dumps(os.environ['NUMBA_CACHE_DIR']))", env=env)
    assert got == str(tmp_path / "mine")


WARMED = """
import json, sys, time
from imgtools.localcluster import start_local_cluster

def warmed():  # on the worker, with no task run: the preload's thread imported and loaded the kernels
    kernel = getattr(sys.modules.get("imgtools.resample"), "_rows_transposed", None)  # (maybe still importing)
    return bool(getattr(kernel, "signatures", None)) and "imgtools.pipeline" in sys.modules

client = start_local_cluster(1)
cluster = client.cluster
deadline = time.monotonic() + 120
while not all(client.run(warmed).values()) and time.monotonic() < deadline:
    time.sleep(0.1)
ready = all(client.run(warmed).values())
result = client.submit(lambda x: x + 1, 1).result()
(nanny,) = cluster.workers.values()
process = nanny.process.process
client.close()
cluster.close()
print(json.dumps([ready, result, process.exitcode]))
"""


@pytest.mark.slow
def test_local_cluster_workers_are_warmed_and_close_cleanly():
    ready, result, exitcode = fresh_python(WARMED)
    assert ready and result == 2
    assert exitcode == 0  # closed normally: left without the teardown, with the usual exit code
