"""pyproject.toml, the environment files and binder/ name the same dependencies, with lower bounds; the quick
start is two commands."""

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
    """Every package an environment file names: conda-forge's (under PyPI's names) and its pip section's."""
    import yaml

    deps = yaml.safe_load(path.read_text())["dependencies"]
    names = {_name(d) for d in deps if isinstance(d, str) and _name(d) not in ("python", "pip")}
    pip = [r for d in deps if isinstance(d, dict) for r in d.get("pip", []) if not r.startswith("-e")]
    return {_CONDA_NAMES.get(n, n) for n in names} | {_name(r) for r in pip}


def test_environment_files_name_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    core = {_name(r) for r in project["dependencies"]}
    s3, notebooks = ({_name(r) for r in extras[name]} for name in ("s3", "notebooks"))
    assert "jupyterlab" in notebooks and "s3fs" not in core
    assert _conda(ROOT / "environment-workers.yml") == core | s3
    assert _conda(ROOT / "environment.yml") == core | s3 | notebooks | {"dask-labextension"}
    assert _conda(ROOT / "binder" / "environment.yml") == _conda(ROOT / "environment.yml")


def test_dependencies_have_lower_bounds_and_caps_only_with_a_reason():
    text = (ROOT / "pyproject.toml").read_text()
    project = tomllib.loads(text)["project"]
    for requirement in project["dependencies"] + [r for rs in project["optional-dependencies"].values() for r in rs]:
        assert "==" not in requirement, requirement
        assert ">=" in requirement, f"{requirement} has no lower bound"
        if "<" in requirement.replace("<=", "<").split(";")[0]:
            line = next(line for line in text.splitlines() if requirement in line)
            block = text[: text.index(line)].splitlines()[-4:]
            assert any(part.strip().startswith("#") for part in block), f"{requirement}: a cap without a comment"


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
