# Two entry points for a fresh clone: `make demo` (the whole pipeline at tiny scale) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHARED ?= $(abspath ../shared)
PYTEST_ARGS ?=

.PHONY: install postgres test test-stack lint format demo bench gpu-check clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,servers,detect,export]'
	@touch $(STAMP)

install: $(STAMP)

# PostgreSQL server binaries for tests/stack: Debian's package, installed (as root) only when missing.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || { \
	  test "$$(id -u)" = 0 || { echo "PostgreSQL is missing: run 'make postgres' as root" >&2; exit 1; }; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql; }

test: $(STAMP) postgres
	LAFS_SHARED=$(SHARED) $(BIN)/python -m pytest $(PYTEST_ARGS)

# Only the stack tests: PostgreSQL, MLflow and Prefect servers and a worker on 127.0.0.1 (also part of `make test`).
test-stack: $(STAMP) postgres
	LAFS_SHARED=$(SHARED) $(BIN)/python -m pytest tests/stack $(PYTEST_ARGS)

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

# One prepared GPU check that stops itself before 9 minutes (docs/benchmarks.md, "GPU"); it installs nothing.
# DEVICE=cpu rehearses every phase at tiny sizes in under a minute. GPU_PYTHON: an interpreter with the project.
DEVICE ?= cuda
OUT ?= runs/gpu-check
GPU_PYTHON ?= $(BIN)/python

gpu-check:
	@command -v $(GPU_PYTHON) >/dev/null || { echo "gpu-check: no python at $(GPU_PYTHON): run 'make install' or pass GPU_PYTHON=" >&2; exit 2; }
	LAFS_SHARED=$(SHARED) $(GPU_PYTHON) -m bench.gpu_check --device $(DEVICE) --out $(OUT)

clean:
	rm -rf $(VENV) .prefect mlflow.db mlartifacts runs .pytest_cache .ruff_cache
