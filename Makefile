# `make test` installs what the tests need (Python packages into .venv, the
# JavaScript client from the npm registry, Debian's chromium, redis-server and
# nginx when missing), then runs the whole suite; the tests start their own
# SecantusDB, redis-server and chat servers on free ports.
VENV ?= .venv
# The interpreter .venv is made from (see docs/deploy.md, "The Python interpreter").
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: test check deps system-deps python-deps js-deps api-docs demo soak bench

# The suite in two parts: most of it on JOBS workers at once (a test module stays
# on one worker, so its fixtures start once), then the tests that measure latency,
# memory or time, and those that write thousands of documents, alone: the parallel
# part would disturb their readings or push them past their time limits.
JOBS ?= 3

test: deps check
	$(PY) -m pytest -n $(JOBS) --dist loadfile -m "not slow and not serial" $(PYTEST_ARGS)
	$(PY) -m pytest -m "serial and not slow" $(PYTEST_ARGS)

# Static checks: types over the whole tree but tests, lint over all of it.
check: python-deps
	$(PY) -m mypy
	$(PY) -m ruff check .

demo: python-deps api-docs
	$(PY) -m server --demo

soak: deps
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

bench: python-deps
	bench/run

# The AsyncAPI page served at /docs (docs/api/build/index.html), built from docs/asyncapi.yaml
# when it is missing or older than what it is made of. Without npm the server still runs, and
# /docs says how to build it.
API_DOCS := docs/api/build/index.html
api-docs: $(API_DOCS)
$(API_DOCS): docs/asyncapi.yaml docs/api/build.mjs docs/api/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "npm not found: /docs will answer 404 until \`make api-docs\` runs"; exit 0; }; \
	cd docs/api && npm ci --no-audit --no-fund --silent && node build.mjs

deps: system-deps python-deps js-deps api-docs

system-deps:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || missing="$$missing nginx-light"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(PY):
	$(PYTHON) -m venv $(VENV)

python-deps: $(PY)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'

js-deps:
	@command -v npm >/dev/null 2>&1 || { echo "npm is required (Debian: apt-get install nodejs npm)"; exit 1; }
	cd clients/js && npm ci --no-audit --no-fund --silent
	cd tests/js && npm ci --no-audit --no-fund --silent
