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

# the headline benchmark suites (hours on a CPU; each writes its records into benchmarks/results/ and
# regenerates benchmarks/RESULTS.md; `$(BIN)/python -m benchmarks --list` shows every suite)
bench: install
	$(BIN)/python -m benchmarks sasrec
	$(BIN)/python -m benchmarks towers
	$(BIN)/python -m benchmarks crbr
	$(BIN)/python -m benchmarks residual
	$(BIN)/python -m benchmarks ann
	$(BIN)/python -m benchmarks eval_memory
	$(BIN)/python -m benchmarks qformer_efficiency

clean:
	rm -rf $(VENV) runs .pytest_cache
