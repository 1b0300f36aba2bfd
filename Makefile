# Two commands do all the set-up from a fresh clone:
#   make run   -> virtual environment + CPU torch + nmsparse, then the main job
#   make test  -> same set-up, then lint + type check + the whole test suite
# Other targets: make test-fast (unit + contract + kernels, the edit loop), make lint, make bench.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first, pinned, so that no later requirement lets pip pick a multi-GB CUDA build.
# On this project's machines `torch==2.13.0` resolves to a CPU wheel kept on disk; elsewhere pip takes it from
# PyPI, where that version is the CUDA build. To choose the build, override the pin and/or the source, e.g.
#   make test TORCH_PIN=torch==2.13.0 TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_PIN ?= torch==2.13.0
TORCH_PIP_ARGS ?=
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
STAMP := $(VENV)/.nmsparse-installed
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup run test test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) $(TORCH_PIP_ARGS) $(TORCH_PIN)
	$(PIP) -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/nmsparse train

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks tools
	$(VENV)/bin/ruff format --check src tests benchmarks tools
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -q -p no:cacheprovider

# The edit loop: the library's unit, contract and kernel tests (recipes, CLI, docs and benchmarks run in `make test`).
test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" --durations=10 tests/unit tests/contract tests/kernels

bench: $(STAMP)
	$(PY) benchmarks/bench_solvers.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
