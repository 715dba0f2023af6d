# Set-up, the main job and the tests. Everything lives in .venv/ (git-ignored).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
SAMPLE := data/sample
RESULT := out/sample.zarr

.PHONY: setup demo test clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/imgtools sample $(SAMPLE)
	$(BIN)/imgtools presize $(SAMPLE) $(RESULT) --size 64 --size 224 --mode crop
	@echo "result: $(RESULT) (zarr: 64x64/images, 224x224/images, ok, labels; manifest: $(RESULT)/manifest.parquet)"

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) data out
