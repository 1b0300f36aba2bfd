# Two commands do all the set-up from a fresh clone:
#   make run   -> virtual environment + CPU torch + nmsparse, then the main job
#   make test  -> same set-up, then the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Pinned CPU wheel: a bare "torch" requirement could pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.nmsparse-installed

.PHONY: setup run test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH_PIN)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/nmsparse train

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_solvers.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
