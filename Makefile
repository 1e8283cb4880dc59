# Two commands for a newcomer: `make run` and `make test`. Everything else is optional.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: run test lint bench score fuzz chaos clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP) $@

run: $(STAMP)  ## create .venv, install, start the demo (embedded broker + worker + traffic)
	$(BIN)/spendwatch demo

# -n 2: two pytest processes (pytest-xdist), each with its own brokers on free ports and its own tmp dirs.
# Most of the suite waits on worker processes and wall-clock intervals: on 2 cores ~18 min in one process,
# ~8.5 min with -n 2
test: lint  ## install dev extras, lint and type-check, run the whole suite (starts its own brokers)
	$(BIN)/python -m pytest -n 2

lint: $(DEV_STAMP)  ## ruff and mypy, as configured in pyproject.toml
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)  ## throughput and latency against the ceiling, a naive baseline and the peer, same run; then the core alone
	$(BIN)/spendwatch bench
	$(BIN)/python -m spendwatch.bench.core

score: $(STAMP)  ## detector scorecard on generated scenarios (and ../shared/data when present)
	$(BIN)/spendwatch score

fuzz: $(DEV_STAMP)  ## property-based fuzzing with thousands of examples (make test runs a bounded few)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest tests/test_fuzz_engine.py tests/test_record_fuzz.py tests/test_schema_agreement.py -q

chaos: $(DEV_STAMP)  ## 200k events, 5 SIGKILLs of the worker (alone, then beside a second one), totals checked against ground truth (minutes)
	$(BIN)/python -m tests.chaos --events 200000 --workflows 60 --partitions 8
	$(BIN)/python -m tests.chaos --events 200000 --workflows 60 --partitions 8 --survivor

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info
