# Together: every command installs what it needs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The official Delta Sharing connector, for the acceptance test of /delta-sharing, in an
# environment of its own: it pins pyarrow below the platform's, as an analyst's laptop might.
CONNECTOR_VENV := .venv-connector
CONNECTOR_STAMP := $(CONNECTOR_VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 8000
export TOGETHER_DATA_DIR ?= ./var

.PHONY: install install-browser run test test-fast lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(CONNECTOR_STAMP): tests/sharing/connector-requirements.txt
	test -x $(CONNECTOR_VENV)/bin/python || $(PYTHON) -m venv $(CONNECTOR_VENV)
	$(CONNECTOR_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CONNECTOR_VENV)/bin/python -m pip install --quiet -r tests/sharing/connector-requirements.txt
	touch $(CONNECTOR_STAMP)

install: $(STAMP) $(CONNECTOR_STAMP)

run: $(STAMP)
	TOGETHER_ENV=development $(BIN)/together db upgrade
	TOGETHER_ENV=development $(BIN)/together demo load --url http://$(HOST):$(PORT)
	TOGETHER_ENV=development $(BIN)/together serve --host $(HOST) --port $(PORT)

# The IG pages' browser test drives Debian's chromium (no browser download). Installed here when
# missing and we are root; otherwise that test skips, except under CI=true, where it fails.
install-browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium \
	    || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) \
	    || echo "chromium could not be installed: the browser test will skip"; \
	  else \
	    echo "chromium is missing and this is not root: the browser test will skip"; \
	  fi; \
	fi

# Tests run in TEST_WORKERS processes (pytest-xdist); TEST_WORKERS=0 runs them in this one.
TEST_WORKERS ?= 2

test: install install-browser
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

# Everything but the tests that start real processes or a browser (marked slow): the quick loop
# while changing code; `make test` runs them all.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -m "not slow"

# The layering (.importlinter, docs/architecture.md) is checked with the rest.
lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Every figure goes to var/bench/results.json as well as the screen; the last step prints them
# as one table and publishes it (docs/benchmarks.json and the README's table).
bench: install
	$(BIN)/python scripts/bench_report.py --reset
	$(BIN)/python scripts/bench_ingest.py
	$(BIN)/python scripts/bench_products.py
	$(BIN)/python scripts/bench_audit.py
	$(BIN)/python scripts/bench_sharing.py
	$(BIN)/python scripts/bench_storage.py
	$(BIN)/python scripts/bench_report.py --publish

clean:
	rm -rf $(VENV) $(CONNECTOR_VENV) var .pytest_cache .mypy_cache .ruff_cache
