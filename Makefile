# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

# $(call debian,command:package ...,what to run when they cannot be installed): the Debian
# packages whose commands are missing, installed when we are root on a Debian-like system.
define debian
@missing=""; for p in $(1); do command -v $${p%%:*} >/dev/null 2>&1 || missing="$$missing $${p##*:}"; done; \
if [ -n "$$missing" ]; then \
  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
  else $(2); fi; fi
endef

.PHONY: run test chaos soak harvest-full bench bench-quick bench-tools install install-test check lint clean browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $(STAMP) $@

install: $(STAMP)
install-test: $(TEST_STAMP)

## Start the gate on http://127.0.0.1:$${API_PORT:-8000} with embedded PostgreSQL and ./data
run: $(STAMP)
	$(BIN)/docgate server

## Run the whole test suite against real PostgreSQL (embedded unless TEST_DATABASE_URL is set).
## TEST_WORKERS pytest processes (default 4: most tests wait on processes and sockets, not the CPU)
## take test files as they free up, each with its own embedded PostgreSQL; TEST_WORKERS=0 runs
## them one by one in this process.
TEST_WORKERS ?= 4
test: $(TEST_STAMP) browser
	$(BIN)/python -m pytest -q -m "not chaos_full and not soak" -n $(TEST_WORKERS) --dist worksteal --durations=15 $(PYTEST_ARGS)

## Three 2,000-task chaos seeds with every fault, the checker's negative controls, a longer fuzz run
chaos: $(TEST_STAMP)
	$(BIN)/python -m pytest -q -s -m "chaos" tests/chaos $(PYTEST_ARGS)
	FUZZ_EXAMPLES=150 $(BIN)/python -m pytest -q tests/test_api_fuzz.py $(PYTEST_ARGS)

## The chaos mix for SOAK_MINUTES (default 30), with gate and client memory over time
soak: $(TEST_STAMP)
	$(BIN)/python -m pytest -q -s -m soak tests/chaos/test_soak.py $(PYTEST_ARGS)

## The whole-registry harvest at the issue's own size: 20,000 decisions, a cap of 1,000 (about a minute).
harvest-full: $(TEST_STAMP)
	HARVEST_DECISIONS=20000 $(BIN)/python -m pytest -q tests/test_harvests.py -k whole_registry $(PYTEST_ARGS)

## Benchmarks (not part of `make test`): every scenario, results in benchmarks/results/, see BENCHMARKS.md.
## They run in their own environment (.venv-bench, with pgqueuer, matplotlib, py-spy).
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed

$(BENCH_STAMP): pyproject.toml
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet -e '.[bench]'
	touch $@

bench: $(BENCH_STAMP) bench-tools
	$(BENCH_VENV)/bin/python -m benchmarks.run $(BENCH_ARGS)

## A quick subset (about three minutes): small sizes, one run of each measurement
bench-quick: $(BENCH_STAMP) bench-tools
	$(BENCH_VENV)/bin/python -m benchmarks.run --quick $(BENCH_ARGS)

## The peers and the origin the data-plane benchmark runs: aria2, wget2, curl, nginx, GNU time
bench-tools:
	$(call debian,aria2c:aria2 wget2:wget2 curl:curl nginx:nginx /usr/bin/time:time,\
	  echo "install these Debian packages first:$$missing"; exit 1)

## Debian packages the suite drives for real: chromium (dashboard), nginx (deployment), openssl.
## Installed here when missing and we are root; otherwise those tests say what to install.
browser:
	$(call debian,chromium:chromium nginx:nginx openssl:openssl,\
	  echo "missing Debian packages:$$missing (the browser and nginx tests need them)")

## Format, lint (ruff, with the ASYNC rules), types (mypy --strict) and import rules (import-linter)
lint: $(TEST_STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy protocol common storage server client docgate
	$(BIN)/lint-imports

## Everything CI runs: lint, then the whole suite
check: lint test

clean:
	rm -rf $(VENV) $(BENCH_VENV) data .pytest_cache
