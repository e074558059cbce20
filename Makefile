# The one task runner. `make up` runs the local stack; `make test` runs the tests.
# Both create the virtualenv and install everything on first use; the Kafka
# broker jars are fetched by Maven on first start and cached in ~/.cache/leadflow.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: bench chaos chromium up test test-unit test-integration test-slow lint fmt typecheck check kafka-start kafka-stop clean

# The dashboard test drives Debian's headless Chromium; install it once if missing.
CHROMIUM := $(shell command -v chromium || command -v chromium-browser)

chromium:
	@if [ -z "$(CHROMIUM)" ]; then \
	  echo "installing Debian's chromium for the dashboard test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

up: $(STAMP)            ## the local stack with sample leads; Ctrl-C stops it
	$(BIN)/leadflow up

test: $(STAMP) chromium ## lint, type-check, then every test of the default suite
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -m "not slow"

test-unit: $(STAMP)
	$(BIN)/pytest tests/unit

test-integration: $(STAMP) chromium
	$(BIN)/pytest tests/integration -m "not slow"

test-slow: $(STAMP)     ## long runs kept out of `make test`
	$(BIN)/pytest -m slow

chaos: $(STAMP)         ## the full fault drill: every fault repeated, a table of lost/doubled
	CHAOS_REPORT=bench-results/chaos.json $(BIN)/pytest -m chaos -s tests/reliability

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

bench: $(STAMP)         ## benchmarks (figures printed and written to bench-results/)
	$(BIN)/leadflow bench queries
	$(BIN)/leadflow bench upload
	$(BIN)/leadflow bench ingest --out bench-results/ingest.json
	$(BIN)/leadflow bench pipeline --persons 8000 --frames on,off --latency-seconds 5 --out bench-results/pipeline.json
	$(BIN)/leadflow bench scoring --out bench-results/scoring.json
	$(BIN)/leadflow bench nurture --enrolled 10000 --wait-seconds 60 --out bench-results/nurture.json
	$(BIN)/leadflow bench nurture --enrolled 20000 --fire-rate 50 --wait-seconds 60 --out bench-results/nurture-steady.json

kafka-start: $(STAMP)
	$(BIN)/leadflow kafka start

kafka-stop: $(STAMP)
	$(BIN)/leadflow kafka stop

clean:
	rm -rf $(VENV) .leadflow .pytest_cache .mypy_cache .ruff_cache
