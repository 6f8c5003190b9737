# Two commands do all the set-up on a fresh machine:
#   make run    -> a standalone receiver on examples/receiver.toml
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

run: $(BIN)/receiver
	$(BIN)/receiver serve --config examples/receiver.toml

test: $(BIN)/receiver tools
	$(BIN)/pytest

# Tests drive real tools: wrk (the load benchmark's smoke test), nginx and openssl
# (examples/nginx.conf in front of receiver serve), chromium (the console's browser tests,
# driven by Playwright: never `playwright install`). Debian packages.
tools:
	@command -v wrk >/dev/null 2>&1 && command -v nginx >/dev/null 2>&1 \
		&& command -v openssl >/dev/null 2>&1 && test -x /usr/bin/chromium \
		|| { apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx openssl chromium; }

lint: $(BIN)/receiver
	$(BIN)/ruff check receiver tests examples bench plugins
	$(BIN)/mypy receiver

bench: $(BIN)/receiver tools
	$(BIN)/python bench/parse.py
	$(BIN)/python bench/load.py
