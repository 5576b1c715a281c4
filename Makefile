# Two entry points for a fresh clone: `make demo` (the whole pipeline at tiny scale) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHARED ?= $(abspath ../shared)
PYTEST_ARGS ?=

.PHONY: install test lint format demo bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	LAFS_SHARED=$(SHARED) $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint docker/Dockerfile.cpu docker/Dockerfile.cuda

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

demo: $(STAMP)
	LAFS_SHARED=$(SHARED) $(BIN)/lafs demo

bench: $(STAMP)
	LAFS_SHARED=$(SHARED) $(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) .prefect mlflow.db mlartifacts runs .pytest_cache .ruff_cache
