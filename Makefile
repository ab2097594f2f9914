# jitaccess — `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help run test check lint typecheck bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml tests/plugin_example/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps -e tests/plugin_example
	@touch $(STAMP)

run: $(STAMP) ## Set up and start the server on SQLite with the demo policy
	$(BIN)/jitaccess demo --port $${PORT:-8000}

test: $(STAMP) ## Set up and run the whole test suite
	$(BIN)/pytest -q

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP) ## mypy --strict
	$(BIN)/mypy

check: lint typecheck test ## ruff + mypy --strict + pytest

bench: $(STAMP) ## Run the benchmarks and update bench/README.md
	$(BIN)/python -m bench.run

clean: ## Remove the virtualenv and demo data
	rm -rf $(VENV) var
