"""pyproject.toml, environment.yml and binder/ name the same dependencies; the quick start is two commands."""

from __future__ import annotations

import pathlib
import re
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


#: conda-forge names that differ from PyPI's
_CONDA_NAMES = {"pytorch": "torch"}


def _conda(path: pathlib.Path) -> set[str]:
    import yaml

    deps = yaml.safe_load(path.read_text())["dependencies"]
    names = {_name(d) for d in deps if isinstance(d, str) and _name(d) not in ("python", "pip")}
    return {_CONDA_NAMES.get(n, n) for n in names}


def test_environment_files_name_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_name(r) for r in project["dependencies"]}
    notebooks = {_name(r) for r in project["optional-dependencies"]["notebooks"]}
    assert _conda(ROOT / "environment.yml") == core
    assert _conda(ROOT / "binder" / "environment.yml") == core | notebooks | {"dask-labextension"}


def test_binder_scripts_install_the_package_and_proxy_the_dashboard():
    post = (ROOT / "binder" / "postBuild").read_text()
    start = (ROOT / "binder" / "start").read_text()
    assert "pip install" in post and "imgtools sample" in post
    assert "DASK_DISTRIBUTED__DASHBOARD__LINK" in start and 'exec "$@"' in start


def test_readme_quick_start_is_one_bash_block_of_two_commands_and_ci_runs_the_second():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert len(blocks) == 1
    commands = [line for line in blocks[0].splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
