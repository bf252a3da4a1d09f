# Two commands on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: serve test lint unit jobs bench instructions faults clean-db

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(INSTALLED)

serve: $(INSTALLED)  ## migrate, seed the demo program, serve on 127.0.0.1:8000
	$(BIN)/loyalty serve

test: $(INSTALLED) lint  ## the whole suite on a real PostgreSQL (embedded unless DATABASE_URL is set)
	$(BIN)/python -m pytest

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: $(INSTALLED)
	$(BIN)/python -m pytest tests/unit

bench: $(INSTALLED)
	$(BIN)/python -m bench.ledger_throughput

instructions: $(INSTALLED)  ## server instructions per grant, per batched grant and per TPC-B transaction (callgrind; needs valgrind; ~1 min)
	$(BIN)/python -m bench.instructions

faults: $(INSTALLED)  ## kill the app, restart PostgreSQL, exhaust the pool, each under load (~1 min; docs/performance.md)
	$(BIN)/python -m bench.faults all

jobs: $(INSTALLED)  ## run the scheduled jobs once (expire holds and points, seal the chain)
	$(BIN)/loyalty jobs run

clean-db: $(INSTALLED)  ## stop and delete the embedded database
	$(BIN)/loyalty stop-db
	rm -rf pgdata
