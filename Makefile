# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
BENCH_ARGS ?=

.PHONY: test demo screenshots lint typecheck pytest bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,demo]'
	touch $(STAMP)

# make bench also needs the bench extra (aiohttp, matplotlib); make test does not.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[bench]'
	touch $(BENCH_STAMP)

test: $(STAMP) lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check meshlib tests bench examples
	$(BIN)/ruff format --check meshlib tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q

# make bench BENCH_ARGS=--quick: the side-by-side run in about 2 minutes instead of 10.
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.compare $(BENCH_ARGS)
	$(BIN)/python -m bench.route_decision
	$(BIN)/python -m bench.data_plane
	$(BIN)/python -m bench.mtls
	$(BIN)/python -m bench.authz
	$(BIN)/python -m bench.tracing
	$(BIN)/python -m bench.scaling
	$(BIN)/python -m bench.reload
	$(BIN)/python -m bench.memory
	$(BIN)/python -m bench.fast_fail
	$(BIN)/python -m bench.requests_adapter
	$(BIN)/python -m bench.store
	$(BIN)/python -m bench.dashboard
	$(BIN)/python -m bench.import_cost --clean

# The demo's own rule files (examples/bookinfo/networking); BOOKINFO_SAMPLES=DIR names another folder;
# BOOKINFO_STORE=etcd://host:port/prefix runs it on etcd (docs/distributed.md).
demo: $(STAMP)
	$(BIN)/python -m examples.bookinfo

screenshots: $(STAMP)
	BOOKINFO_SCREENSHOTS=docs/images $(BIN)/pytest -q tests/e2e/test_bookinfo_browser.py \
		tests/e2e/test_dashboard_browser.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
