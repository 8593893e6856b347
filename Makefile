# Two commands: `make run` runs the whole system on embedded defaults; `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test lint typecheck pytest services bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

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
	$(BIN)/pytest -q

test: lint typecheck pytest

bench: $(VENV)/.installed services
	$(BIN)/wardlink bench contract
	$(BIN)/wardlink bench store
	$(BIN)/wardlink bench gateway

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
