# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8080
# Loopback by default: outside production /status (phone numbers) and /metrics answer without credentials.
HOST ?= 127.0.0.1
WEB_CONCURRENCY ?= 2

.PHONY: install run test bench drills postgres-binaries chromium clean

$(BIN)/.installed: requirements.txt requirements-test.txt
	@$(PYTHON) -m venv $(VENV) || { \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	        echo "Installing python3-venv with apt-get..."; \
	        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv \
	            && rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); \
	    else \
	        echo "$(PYTHON) cannot create a virtualenv; install it, e.g. 'sudo apt-get install python3-venv'." >&2; \
	        exit 1; \
	    fi; }
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-test.txt
	touch $@

install: $(BIN)/.installed

## Serve the whole service on port 8080 with the embedded SQLite default (or $DATABASE_URL):
## the web server and, beside it, the worker that sends messages and forwards reports.
## Ctrl-C or SIGTERM stops both; if either exits by itself, the other is stopped too (exit 1), so a
## worker refusing its settings never leaves a web server that accepts messages nobody sends.
run: install
	mkdir -p instance
	$(BIN)/flask --app app db-upgrade-locked
	@$(BIN)/flask --app app worker & worker=$$!; \
	$(BIN)/gunicorn --workers $(WEB_CONCURRENCY) --bind $(HOST):$(PORT) --access-logfile - wsgi:app & web=$$!; \
	stopped=0; trap 'stopped=1; kill $$worker $$web 2>/dev/null' INT TERM; \
	while [ $$stopped = 0 ] && kill -0 $$worker 2>/dev/null && kill -0 $$web 2>/dev/null; do sleep 1; done; \
	kill $$worker $$web 2>/dev/null; wait; \
	if [ $$stopped = 0 ]; then echo "make run: the worker or the web server exited; both stopped" >&2; exit 1; fi

## Run the whole suite against a throwaway PostgreSQL that the suite starts itself.
test: install postgres-binaries chromium
	$(BIN)/pytest

## Benchmarks against the machine's own ceilings (never part of `make test`); see docs/performance.md.
bench: install postgres-binaries
	@if ! command -v wrk >/dev/null 2>&1; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	        echo "Installing wrk with apt-get..."; \
	        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk \
	            || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }; \
	    else \
	        echo "The benchmarks need wrk (the HTTP load generator), which is missing." >&2; \
	        echo "Install it, e.g. 'sudo apt-get install wrk', then run 'make bench' again." >&2; \
	        exit 1; \
	    fi; \
	fi
	$(BIN)/python -m bench.run_all

## Fault drills (never part of `make test`): each breaks one thing under load, bounded in time, and
## asserts what must hold; writes docs/reliability.md; fails if any drill did not hold.
drills: install postgres-binaries
	$(BIN)/python -m drills.run

## The dashboard's browser test drives Debian's Chromium (not a browser Playwright downloads).
chromium:
	@if [ -x /usr/bin/chromium ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing Chromium with apt-get..."; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
	    echo "Chromium (/usr/bin/chromium) is missing; the dashboard's browser test needs it." >&2; \
	    echo "Install it, e.g. 'sudo apt-get install chromium'." >&2; \
	    exit 1; \
	fi

## The test suite needs PostgreSQL's server binaries (initdb, pg_ctl); install them if we can.
postgres-binaries:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 \
	    || [ -n "$$PG_BIN" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing PostgreSQL server binaries with apt-get..."; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	else \
	    echo "PostgreSQL server binaries (initdb, pg_ctl) are missing." >&2; \
	    echo "Install them, e.g. 'sudo apt-get install postgresql', or set PG_BIN=/path/to/bin." >&2; \
	    exit 1; \
	fi

clean:
	rm -rf $(VENV) instance .pytest_cache
