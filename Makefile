# The README's two set-up commands: `make demo` and `make test`.
# Each creates .venv on first use and installs mlbseg with the pinned set in constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: demo test test-all lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) install -c constraints.txt -e .
	@touch $@

$(VENV)/.installed-test: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) install -c constraints.txt -e '.[test]'
	@touch $@ $(VENV)/.installed

DEMO ?= demo
# Phantoms -> prepared data -> baseline, views_meta and MLB-Seg at L1 -> evaluation, figures, tables (about
# 7 min on 2 cores). A rerun reuses what is finished; `rm -rf demo` or `mlbseg demo --overwrite` starts afresh.
demo: $(VENV)/.installed
	$(BIN)/mlbseg demo --out $(DEMO)

test: $(VENV)/.installed-test
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-all: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -m "slow or not slow"

lint: $(VENV)/.installed-test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/prepare.py
	$(BIN)/python benchmarks/meta_step.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
