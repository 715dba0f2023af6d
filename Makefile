# Set-up, the main job and the tests. Everything lives in .venv/ (git-ignored); the Python 3.12 run (Colab's
# Python) in .venv312/, where this machine has a python3.12 (on PATH, or one that pyenv installed).
PYTHON    ?= $(shell command -v python3.11 || command -v python3)
PYTHON312 ?= $(firstword $(shell python3.12 -c 'import sys; print(sys.executable)' 2>/dev/null) \
                         $(wildcard $(shell pyenv root 2>/dev/null)/versions/3.12*/bin/python3.12))
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
VENV312  := .venv312
STAMP312 := $(VENV312)/.installed-stamp
SAMPLE := data/sample
RESULT := out/sample.zarr

.PHONY: setup demo test test311 test312 clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

$(STAMP312): pyproject.toml
	test -x $(VENV312)/bin/python || $(PYTHON312) -m venv $(VENV312)
	$(VENV312)/bin/python -m pip install --quiet --upgrade pip
	$(VENV312)/bin/python -m pip install --quiet -e ".[test]"
	touch $(STAMP312)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/imgtools sample $(SAMPLE)
	$(BIN)/imgtools presize $(SAMPLE) $(RESULT) --size 64 --size 224 --mode crop
	@echo "result: $(RESULT) (zarr: 64x64/images, 224x224/images, ok, labels; manifest: $(RESULT)/manifest.parquet)"

# lint (ruff, once), then the whole suite on Python 3.11, then on 3.12 where this machine has it
test: test311
ifneq ($(strip $(PYTHON312)),)
	$(MAKE) --no-print-directory test312
else
	@echo "no python3.12 on this machine: the suite ran on $$($(BIN)/python --version) only"
endif

test311: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

test312: $(STAMP312)
	@echo "Python 3.12 ($(PYTHON312)): tests that need PyTorch are left out (marker torch, tests/test_torch.py, imgtools/loaders.py doctests): no CPU build of it is at hand for 3.12 here"
	$(VENV312)/bin/python -m pytest -m "not torch" --ignore=tests/test_torch.py --ignore=imgtools/loaders.py

clean:
	rm -rf $(VENV) $(VENV312) data out
