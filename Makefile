# Two commands do all the set-up on a fresh machine:
#   make run    -> a standalone receiver on examples/receiver.toml, port $RECEIVER_PORT (8000)
#   make test   -> the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench tools

# Demo keys for examples/receiver.toml; set your own in the environment.
export WHISPIR_KEY ?= demo-whispir-key
export ONEPOINT_SECRET ?= demo-onepoint-secret
export DIY_KEY ?= demo-diy-key

$(BIN)/receiver: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# Where `make run` serves: RECEIVER_PORT=9000 make run, or make run RECEIVER_PORT=9000
# (the same variables `receiver serve` reads).
RECEIVER_HOST ?= 127.0.0.1
RECEIVER_PORT ?= 8000

run: $(BIN)/receiver
	@echo "receiver on http://$(RECEIVER_HOST):$(RECEIVER_PORT) (examples/receiver.toml; another port: RECEIVER_PORT=N make run)"
	$(BIN)/receiver serve --config examples/receiver.toml --host $(RECEIVER_HOST) --port $(RECEIVER_PORT)

test: $(BIN)/receiver tools
	$(BIN)/pytest

# Tests drive real tools: wrk (the load benchmark's smoke test), nginx and openssl
# (examples/nginx.conf in front of receiver serve), chromium (the console's browser tests,
# driven by Playwright: never `playwright install`), PostgreSQL (the PostgreSQL journal's
# tests start its cluster themselves, tests/postgres.py; or set RECEIVER_TEST_POSTGRES).
# Debian packages.
tools:
	@command -v wrk >/dev/null 2>&1 && command -v nginx >/dev/null 2>&1 \
		&& command -v openssl >/dev/null 2>&1 && test -x /usr/bin/chromium \
		&& { test -n "$$RECEIVER_TEST_POSTGRES" || ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; } \
		|| { apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx openssl chromium \
			$$(test -n "$$RECEIVER_TEST_POSTGRES" || echo postgresql); }

lint: $(BIN)/receiver
	$(BIN)/ruff check receiver tests examples bench
	$(BIN)/ruff format --check receiver tests examples bench
	$(BIN)/mypy receiver

bench: $(BIN)/receiver tools
	$(BIN)/python bench/parse.py
	$(BIN)/python bench/load.py
