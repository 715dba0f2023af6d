"""Start-up of imgtools from the shell: imports, Numba's first compile, and the fixed cost of a CLI run.

    python -m benchmarks.startup --data ../shared/datasets/imagenet-sample [--rounds 3] [--workers 2]

Every figure is the wall time of fresh processes started from here, in rounds (the median of the rounds is
printed, with the spread, min-max), all in one run, so the rows compare within it:
- import: ``python -c "import imgtools"`` and ``python -m imgtools.cli --help``, less ``python -c pass``;
- first run vs second: ``imgtools presize`` of a 10-image folder (one chunk: in this process) and of the
  N images with ``--workers``, the first time with Numba's cache in a new empty folder
  (``NUMBA_CACHE_DIR``), then again with it; the difference is what a fresh environment pays to compile;
- read-only site-packages: the 10-image run again from a copy of the package whose ``__pycache__`` cannot
  be a folder (a file of that name: so even root cannot write there) and a new empty ``XDG_CACHE_HOME``;
  where the kernels' cache went is printed;
- fixed cost: t(N) - N / rate, rate = 3N / (t(4N) - t(N)) (a manifest of the N files listed four times),
  with a warm Numba cache: what a run costs beyond its images (imports, cluster, workers, closing); with
  ``--quiet`` (no progress bar, so no dashboard) and again without it (a progress bar and the dashboard).

It runs the tree it sits in (``PYTHONPATH`` is that tree) and, with ``--compare DIR``, another checkout
of imgtools (``git archive <rev> | tar -x -C DIR``) in turns with it, round by round, as a second column:
on a shared machine only figures taken side by side compare. Not a timed test: it prints a table.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _env(root: pathlib.Path, **extra: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "PYTHONPATH")}
    env["PYTHONPATH"] = str(root)
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _timed(cmd: list[str], env: dict[str, str], cwd: pathlib.Path) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    took = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return took


def _presize(source: str, dest: pathlib.Path, env: dict[str, str], cwd: pathlib.Path,
             workers: int | None = None, quiet: bool = True) -> float:
    cmd = [sys.executable, "-m", "imgtools.cli", "presize", source, str(dest)] + (["--quiet"] if quiet else [])
    cmd += [] if workers is None else ["--workers", str(workers)]
    try:
        return _timed(cmd, env, cwd)
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def _cache_files(folder: pathlib.Path) -> int:
    return sum(1 for _ in folder.rglob("*.nbi")) if folder.exists() else 0


def _read_only_copy(root: pathlib.Path, site: pathlib.Path) -> pathlib.Path:
    """The package of ``root`` copied to ``site``, with a file where each ``__pycache__`` folder would be."""
    shutil.copytree(root / "imgtools", site / "imgtools", ignore=shutil.ignore_patterns("__pycache__"))
    for folder in [site / "imgtools", *(p for p in (site / "imgtools").rglob("*") if p.is_dir())]:
        (folder / "__pycache__").write_text("not a folder: mimics a read-only site-packages\n")
    return site


def _round(root: pathlib.Path, data: str, small: pathlib.Path, manifest4: pathlib.Path, n: int,
           workers: int, add) -> str:
    """One round of the presize figures for the tree at ``root``; returns where the read-only run's cache went."""
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="round-", dir=small.parent))
    env = _env(root, NUMBA_CACHE_DIR=str(tmp / "numba"))  # empty: a fresh environment
    add("10 images, 1st run (cold cache)", _presize(str(small), tmp / "o", env, root))
    add("10 images, 2nd run", _presize(str(small), tmp / "o", env, root))
    site = _read_only_copy(root, tmp / "site")
    ro = _env(site, XDG_CACHE_HOME=str(tmp / "xdg"))  # (the package's own modules compile from source each time)
    add("10 images, read-only package, 1st run", _presize(str(small), tmp / "o", ro, tmp))
    add("10 images, read-only package, 2nd run", _presize(str(small), tmp / "o", ro, tmp))
    landed = f"{_cache_files(tmp / 'xdg')} cache index files under XDG_CACHE_HOME, {_cache_files(site)} in the package"
    env = _env(root, NUMBA_CACHE_DIR=str(tmp / "numba-w"))
    add(f"{n} images, 1st run (cold cache)", _presize(data, tmp / "o", env, root, workers))

    def steady(quiet: bool) -> tuple[float, float, float]:
        """(t(N), t(4N), images/s in steady state) of N and 4N images from the shell."""
        once = _presize(data, tmp / "o", env, root, workers, quiet=quiet)
        four = _presize(str(manifest4), tmp / "o", env, root, workers, quiet=quiet)
        return once, four, 3 * n / max(four - once, 1e-9)

    t1, t4, rate = steady(quiet=True)
    add(f"{n} images, 2nd run", t1)
    add(f"{4 * n} images (manifest)", t4)
    add("steady rate, images/s", rate)
    add(f"fixed cost of a {n}-image run", t1 - n / rate)
    # the same, shown: a progress bar on stderr and the cluster's dashboard, whose link is printed
    shown1, _, shown_rate = steady(quiet=False)
    add(f"fixed cost of a {n}-image run, progress bar and dashboard", shown1 - n / shown_rate)
    shutil.rmtree(tmp, ignore_errors=True)
    return landed


def main() -> None:
    parser = argparse.ArgumentParser(description="imgtools start-up, from the shell")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "imagenet-sample"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--imports", type=int, default=7, help="processes per import figure")
    parser.add_argument("--compare", metavar="DIR", help="another checkout of imgtools, measured in turns")
    args = parser.parse_args()

    files = sorted(str(p.resolve()) for p in pathlib.Path(args.data).iterdir() if p.is_file())
    n = len(files)
    data = str(pathlib.Path(args.data).resolve())
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="imgtools-startup-"))
    small = tmp / "small"
    small.mkdir()
    for f in files[:10]:
        os.symlink(f, small / pathlib.Path(f).name)
    manifest4 = tmp / "four.csv"
    manifest4.write_text("path\n" + "".join(f"{f}\n" for f in files * 4))
    trees = {"this tree": ROOT}
    if args.compare:
        trees["--compare"] = pathlib.Path(args.compare).resolve()
    results: dict[str, dict[str, list[float]]] = {tag: {} for tag in trees}
    landed: dict[str, str] = {}
    py = sys.executable

    for _ in range(args.imports):  # interleaved, so that the machine's drift hits all alike
        for tag, root in trees.items():
            def add(key: str, value: float, tag=tag) -> None:
                results[tag].setdefault(key, []).append(value)

            env = _env(root)
            bare = _timed([py, "-c", "pass"], env, root)
            add("python -c pass", bare)
            add("import imgtools (less python)", _timed([py, "-c", "import imgtools"], env, root) - bare)
            add("imgtools --help (less python)", _timed([py, "-m", "imgtools.cli", "--help"], env, root) - bare)
            pipeline = _timed([py, "-c", "import imgtools.pipeline"], env, root)
            add("import imgtools.pipeline (less python)", pipeline - bare)

    for _ in range(args.rounds):
        for tag, root in trees.items():
            def add(key: str, value: float, tag=tag) -> None:
                results[tag].setdefault(key, []).append(value)

            landed[tag] = _round(root, data, small, manifest4, n, args.workers, add)
            got = results[tag]
            for what, first, second in [
                    ("10 images", "10 images, 1st run (cold cache)", "10 images, 2nd run"),
                    ("10 images, read-only package", "10 images, read-only package, 1st run",
                     "10 images, read-only package, 2nd run"),
                    (f"{n} images", f"{n} images, 1st run (cold cache)", f"{n} images, 2nd run")]:
                add(f"first-run compile, {what} (1st - 2nd)", got[first][-1] - got[second][-1])

    print(f"imgtools start-up from the shell; Python {sys.version.split()[0]}; {os.cpu_count()} cores; "
          f"--workers {args.workers}; {n} images from {args.data}")
    print(f"seconds unless said; median of {args.imports} (imports) or {args.rounds} rounds (the rest) [min-max]")
    for tag, root in trees.items():
        print(f"  {tag}: {root}")
    keys = list(results["this tree"])
    width = max(map(len, keys)) + 2
    print("\n" + f"{'':<{width}}" + "".join(f"{tag:>24}" for tag in trees))
    for key in keys:
        cells = []
        for tag in trees:
            values = results[tag].get(key, [])
            cells.append(f"{statistics.median(values):8.2f} [{min(values):.2f}-{max(values):.2f}]" if values else "")
        print(f"{key:<{width}}" + "".join(f"{c:>24}" for c in cells))
    for tag in trees:
        print(f"\n{tag}, read-only package: {landed.get(tag, '')}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
