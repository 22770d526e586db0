# Setup is two commands on a fresh machine: `make quickstart` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install quickstart test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# the CPU build of torch first (a plain `torch` would pull a multi-GB CUDA build)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

quickstart: install
	$(BIN)/crbr quickstart

test: install
	$(BIN)/python -m pytest -q tests

bench: install
	$(BIN)/python benchmarks/run_sasrec.py

clean:
	rm -rf $(VENV) runs .pytest_cache
