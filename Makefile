# Fresh machine: `make demo` (install + the main job) and `make test` (install + tests).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow lint format bench browser clean

install: $(STAMP)

# torch is pinned in pyproject.toml (2.13.0, the CPU wheel); journal-digital (Swedish newsreel
# transcripts for the synthetic source) is installed without its dependencies because it pins
# pandas/tqdm versions that only its own scripts need; we read its data files.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[all,dev]'
	$(BIN)/pip install -q --no-deps 'journal-digital>=2025.12'
	touch $(STAMP)

# Debian's Chromium for the app's browser tests (never `playwright install`: it downloads).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium could not be installed: browser tests will be skipped"; }

demo: install
	$(BIN)/whisper-sv demo

test: install browser
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/python -m pytest -q

# The slow suite lists its ten slowest tests, to keep CI's second step in its time budget.
test-slow: install browser
	$(BIN)/python -m pytest -q -m slow --durations=10

bench: install
	for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

lint: install
	$(BIN)/ruff check src tests bench

format: install
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
