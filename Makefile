# boshreg: `make run` starts the registry, `make test` runs every check. Both set themselves up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run test lint typecheck unit bench faults databases tools clean

# On a terminal pip shows each package as it comes (about a minute the first time); in logs it stays quiet.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing boshreg and its dependencies into $(VENV) (about a minute the first time)"
	@if [ -t 1 ]; then quiet=; else quiet=--quiet; fi; \
	    $(BIN)/python -m pip install $$quiet --disable-pip-version-check --upgrade pip && \
	    $(BIN)/python -m pip install $$quiet --disable-pip-version-check --progress-bar off -e '.[dev]'
	@touch $(STAMP)
	@echo "installed: $(BIN)/boshreg (in a new shell: . $(VENV)/bin/activate)"

setup: $(STAMP)

## Start the registry with zero configuration (SQLite in ./.boshreg, port 25777); make run ARGS="--port 25800".
run: $(STAMP)
	@echo "boshreg is installed at $(BIN)/boshreg; in a new shell: . $(VENV)/bin/activate"
	$(BIN)/boshreg serve $(ARGS)

## Lint, types and the whole test suite against SQLite, PostgreSQL and MariaDB.
test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) databases tools
	$(BIN)/pytest

## Benchmarks on loopback: GET and PUT load (wrk) on SQLite, PostgreSQL and MariaDB against nginx, a 10,000-VM boot storm; bench/results.json.
bench: $(STAMP) databases
	@bash scripts/ensure-bench-tools.sh
	$(BIN)/python bench/run.py

## Fault tests, longer than in `make test`: SIGKILL mid-write and database outages on every backend; slow connections and header floods.
faults: $(STAMP) databases
	BOSHREG_FAULT_SECONDS=10 $(BIN)/pytest -m faults -s tests/test_faults.py tests/test_api_backends.py tests/test_front.py

## Start PostgreSQL and MariaDB if they are down (install them as root if missing).
databases:
	@bash scripts/ensure-databases.sh

## Install the Debian tools the tests use (genisoimage, iproute2, promtool, chromium, systemd-analyze) when missing, as root.
tools:
	@bash scripts/ensure-tools.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis src/*.egg-info
