"""The notebooks in notebooks/: each runs top to bottom (parameters injected after its "parameters" cell,
papermill-style, so that everything lands in tmp_path), is stored without outputs, starts with the Colab
install cell, and is linked from the README with an "Open in Colab" and a Binder badge."""

from __future__ import annotations

import pathlib
import re

import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ["01-quickstart", "02-buckets", "03-why-presize", "04-train-and-infer"]
GITHUB = "imgtools/imgtools"

#: per notebook: the parameters the test injects (paths are relative to tmp_path, made absolute below)
#: and the files, relative to tmp_path, that a run must leave behind
PARAMETERS = {
    "01-quickstart": {"SAMPLE": "data/sample", "OUT": "out", "N_IMAGES": 1200, "WORKERS": 2},
    "02-buckets": {"BUCKET": "", "SAMPLE": "data/sample-300", "N_IMAGES": 300, "WORKERS": 2},
    "03-why-presize": {"SAMPLE": "data/sample", "OUT": "out", "N_IMAGES": 1200, "WORKERS": 2},
    "04-train-and-infer": {"SAMPLE": "data/sample", "OUT": "out", "N_IMAGES": 1200, "WORKERS": 2},
}
PRODUCES = {
    "01-quickstart": ["out/contact-sheet.png", "out/quickstart.zarr/manifest.parquet"],
    "02-buckets": ["data/sample-300/README.txt"],
    "03-why-presize": ["out/why-presize.png", "out/why.zarr/manifest.parquet", "out/why-npy/manifest.parquet"],
    "04-train-and-infer": ["out/train.zarr/predictions.parquet"],
}
PATH_PARAMETERS = ("SAMPLE", "OUT")


def _read(name: str):
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def _code_cells(nb) -> list:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def _inject(nb, values: dict) -> int:
    """Insert a cell assigning ``values`` right after the cell tagged "parameters"; its position."""
    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, "a notebook needs exactly one cell tagged 'parameters'"
    source = "\n".join(f"{key} = {value!r}" for key, value in values.items())
    nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    return tagged[0] + 1


def test_notebooks_folder_holds_exactly_the_four_notebooks():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_valid_and_stored_without_outputs(name):
    nb = _read(name)
    nbformat.validate(nb)
    for k, cell in enumerate(_code_cells(nb)):
        assert cell.outputs == [], f"{name}: code cell {k} has stored outputs"
        assert cell.execution_count is None, f"{name}: code cell {k} has an execution count"
    assert "widgets" not in nb.metadata, f"{name}: stored widget state"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_starts_with_markdown_intro_then_the_colab_install_cell(name):
    nb = _read(name)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    first = _code_cells(nb)[0].source
    assert 'IN_COLAB = "google.colab" in sys.modules' in first
    install = re.search(r"^if IN_COLAB:\n\s+.*pip.*install.*imgtools.*git\+", first, re.M)
    assert install, f"{name}: the first code cell must install imgtools only when IN_COLAB"
    assert f'REPO = "https://github.com/{GITHUB}"' in first


@pytest.mark.parametrize("name", NAMES)
def test_notebook_has_one_parameters_cell_naming_what_the_test_injects(name):
    nb = _read(name)
    tagged = [cell for cell in nb.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1
    assigned = set(re.findall(r"^([A-Z_]+) = ", tagged[0].source, re.M))
    assert set(PARAMETERS[name]) <= assigned, f"{name}: parameters cell lacks {set(PARAMETERS[name]) - assigned}"


def test_readme_links_every_notebook_with_colab_and_binder_badges():
    readme = (ROOT / "README.md").read_text()
    assert "\n## Notebooks\n" in readme
    section = readme.split("\n## Notebooks\n", 1)[1].split("\n## ", 1)[0]
    for name in NAMES:
        colab = (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
                 f"(https://colab.research.google.com/github/{GITHUB}/blob/main/notebooks/{name}.ipynb)")
        binder = (f"[![Binder](https://mybinder.org/badge_logo.svg)]"
                  f"(https://mybinder.org/v2/gh/{GITHUB}/main?labpath=notebooks%2F{name}.ipynb)")
        assert colab in section, f"README's Notebooks section lacks the Colab badge of {name}"
        assert binder in section, f"README's Notebooks section lacks the Binder badge of {name}"
        assert f"notebooks/{name}.ipynb" in section


#: notebooks that read through PyTorch's DataLoader (left out of the Python 3.12 run with the `torch` marker)
TORCH = {"03-why-presize", "04-train-and-infer"}


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.torch) if n in TORCH else n for n in NAMES])
def test_notebook_runs_top_to_bottom_without_errors(name, tmp_path):
    from nbclient import NotebookClient

    nb = _read(name)
    values = {k: str(tmp_path / v) if k in PATH_PARAMETERS else v for k, v in PARAMETERS[name].items()}
    _inject(nb, values)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()  # raises CellExecutionError, with the cell and its traceback, on the first error
    finally:
        nbformat.write(nb, tmp_path / f"{name}.executed.ipynb")  # for a look after a failure
    for rel in PRODUCES[name]:
        assert (tmp_path / rel).is_file(), f"{name} did not write {rel}"
    errors = [out for cell in _code_cells(nb) for out in cell.get("outputs", []) if out.output_type == "error"]
    assert not errors
