# Two commands: `make run` runs the whole system on embedded defaults; `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test lint typecheck pytest services bench bench-all soak fuzz lock sbom clean screenshots

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Dependencies come from the lock files (exact versions; `make lock` regenerates them from pyproject.toml),
# then Wardlink itself without resolving anything more. The dev install also writes the SBOM.
$(VENV)/.installed: pyproject.toml requirements.lock | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml requirements-dev.lock | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(MAKE) --no-print-directory sbom
	touch $@ $(VENV)/.installed

lock: | $(BIN)/python
	$(BIN)/python -m pip install --quiet 'pip-tools>=7.4'
	$(BIN)/pip-compile --quiet --strip-extras --no-emit-index-url --no-emit-find-links -o requirements.lock pyproject.toml
	$(BIN)/pip-compile --quiet --strip-extras --no-emit-index-url --no-emit-find-links --extra dev \
	  -o requirements-dev.lock pyproject.toml

# A CycloneDX SBOM of what is installed in the virtual environment (no advisory database is reachable from
# the build machines, so no online audit step: feed this file to the hospital's own scanner).
sbom:
	@mkdir -p build
	$(BIN)/cyclonedx-py environment --pyproject pyproject.toml --of JSON -o build/sbom.cdx.json $(BIN)/python

run: $(VENV)/.installed
	$(BIN)/wardlink run

# Services the tests start themselves (a Mosquitto or a victoria-metrics per test on a free port): install when
# missing.
services:
	@command -v mosquitto >/dev/null && command -v mosquitto_pub >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients; }
	@test -x /usr/bin/victoria-metrics || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    victoria-metrics >/dev/null; }
	@# The console's browser tests drive Debian's headless Chromium through its own chromedriver (never a download).
	@test -x /usr/bin/chromium && test -x /usr/bin/chromedriver || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    chromium chromium-driver >/dev/null; }
	@# The relational-state tests run against PostgreSQL on 127.0.0.1:5432 as well as SQLite.
	@command -v pg_ctlcluster >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }
	@pg_isready -q -h 127.0.0.1 -p 5432 || \
	  pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql | sort -V | tail -1) main start

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

pytest: $(VENV)/.installed-dev services
	$(BIN)/pytest -q --durations=25

test: lint typecheck pytest

bench: $(VENV)/.installed services
	$(BIN)/wardlink bench contract
	$(BIN)/wardlink bench store
	$(BIN)/wardlink bench gateway

# The long runs (under 30 minutes in all): the 2,000-bed load soak and the long fault tests. `-m soak` overrides
# the default `-m "not soak"` of pyproject.toml, so these are never silently skipped: they run here.
soak: $(VENV)/.installed-dev services
	$(BIN)/pytest -q -m soak -p no:cacheprovider --timeout 1500 -o log_cli=true -o log_cli_level=INFO

# Coverage-guided fuzzing (atheris, libFuzzer) of every parser of untrusted bytes, FUZZ_SECONDS per target; a crash
# or a hang (-timeout) stops it and leaves the input in build/fuzz/. atheris goes to build/atheris, apart from the
# virtual environment, so the lock files stay what the suite runs with. Not part of `make test`.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := wlb1 hl7 batch rfid waste modbus files
fuzz: $(VENV)/.installed-dev
	@test -d build/atheris/atheris || $(BIN)/python -m pip install --quiet --target build/atheris 'atheris==3.0.0'
	@for target in $(FUZZ_TARGETS); do \
	  mkdir -p build/fuzz/corpus-$$target && echo "fuzz $$target: $(FUZZ_SECONDS) s" && \
	  PYTHONPATH=build/atheris:. $(BIN)/python tests/fuzz/fuzz_parsers.py $$target -max_total_time=$(FUZZ_SECONDS) \
	    -timeout=5 -max_len=65536 -rss_limit_mb=2048 -artifact_prefix=build/fuzz/$$target- \
	    build/fuzz/corpus-$$target 2>&1 | grep -E '^(Done|==|INFO: Seed)|Uncaught|Error|crash|timeout' || exit 1; \
	  test -z "$$(ls build/fuzz/$$target-* 2>/dev/null)" || { echo "fuzz $$target: failing input in build/fuzz/"; exit 1; }; \
	done

# Every benchmark, and docs/benchmarks.md's machine header and summary table regenerated from the run.
bench-all: $(VENV)/.installed services
	$(BIN)/wardlink bench all --write docs/benchmarks.md

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache

# The console's pages as PNGs for the docs: the browser tests write them, this copies them into docs/.
screenshots: $(VENV)/.installed-dev services
	@dir=$$(mktemp -d) && WARDLINK_SCREENSHOTS=$$dir $(BIN)/pytest -q tests/test_console.py && \
	  mkdir -p docs/screenshots && cp $$dir/*.png docs/screenshots/ && rm -r $$dir
