# Everything runs from a project-local virtual environment, made on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= config.toml
STAMP  := $(VENV)/.installed

.PHONY: run test test-all lint bench vendor clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/stream-proxy serve --config $(CONFIG)

# The README's test command. Tests that need the real S3 server start it
# themselves through ../shared/s3 (as root) and skip without it, except in CI.
# Two workers (pytest-xdist); the real S3 server's tests share one of them
# (tests/conftest.py), so one RGW is started. Tests marked `alone` time a lease,
# a drain or a crowd of clients: a second worker's load beside them made them fail
# where nothing is wrong, so they run afterwards in one process.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup -m "not alone"
	$(BIN)/python -m pytest -q -m alone

lint: $(STAMP)
	$(BIN)/ruff check proxy tests bench
	$(BIN)/ruff format --check proxy tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench

# The page's third-party scripts (tus-js-client, hls.js) from the npm registry at the
# versions pinned in proxy/page/vendor.py, checked and recorded in vendor/MANIFEST.json.
vendor: $(STAMP)
	$(BIN)/python -m proxy.page.vendor

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
