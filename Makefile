# One command sets everything up and runs the job: `make demo`, `make test`, `make docs`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export PENGSTER_DATA_DIR ?= $(abspath ../shared/data)
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export NUMBA_NUM_THREADS ?= 1

.PHONY: setup demo test lint docs bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first, pinned to the CPU wheel: a bare `torch` requirement would pull a multi-GB CUDA build.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test,bench]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/pengster demo --out demo_output

test: setup
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest -q --durations=15

lint: setup
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

# accuracy benchmark vs MULTIVI, TOTALVI and baselines: results in benchmarks/results (about 2 h on 2 threads)
bench: setup
	$(BIN)/python benchmarks/accuracy.py

bench-quick: setup
	$(BIN)/python benchmarks/accuracy.py --quick --out bench_quick_output

$(VENV)/.docs: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[docs]"
	touch $@

docs: $(VENV)/.docs
	$(BIN)/sphinx-build -W --keep-going -b html docs docs/_build/html

clean:
	rm -rf $(VENV) docs/_build docs/generated docs/tutorials demo_output .pytest_cache
