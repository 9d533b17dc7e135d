# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test demo lint typecheck pytest bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

test: $(STAMP) lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check meshlib tests bench examples
	$(BIN)/ruff format --check meshlib tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench.route_decision
	$(BIN)/python -m bench.data_plane
	$(BIN)/python -m bench.tracing

SHARED := ../shared/istio-bookinfo

demo: $(STAMP)
	@echo "The Bookinfo services are not built yet; meanwhile, here is the mesh deciding"
	@echo "Istio's request-routing step (reviews-test-v2) for jason and for everyone else:"
	$(BIN)/meshctl explain -c $(SHARED)/destination-rule-all.yaml -c $(SHARED)/virtual-service-reviews-test-v2.yaml -H 'end-user: jason' GET http://reviews:9080/reviews/0
	$(BIN)/meshctl explain -c $(SHARED)/destination-rule-all.yaml -c $(SHARED)/virtual-service-reviews-test-v2.yaml GET http://reviews:9080/reviews/0

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
