# Flow Manager: `make run` starts everything on SQLite; `make test` runs ruff and the suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8000

.PHONY: run test install install-dev dotenv lint bench bench-engine bench-pages bench-api browser migrate clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Installs are keyed on pyproject.toml so repeated runs skip pip.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# The checkout's git-ignored .env: DEBUG=1 and a generated SECRET_KEY, written once (an existing
# file is kept). Settings read it, so manage.py in any shell of this checkout shares the key of
# the web server and the worker. Standard library only, so it needs no virtualenv.
dotenv:
	@$(PYTHON) -m flowmanager.localenv

migrate: install dotenv
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0

run: migrate
	$(BIN)/python manage.py bootstrap
	@echo "Flow Manager: http://127.0.0.1:$(PORT)/  (API docs: /docs, admin: /admin/)"
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/honcho start -f Procfile -p $(PORT)

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The browser test drives Debian's Chromium (Playwright never downloads one here). Install it
# when it is missing; quick and quiet when it is there. CI runs as root.
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing chromium for the browser test"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }; \
	  else \
	    echo "$(CHROMIUM) missing and not root: the browser test will be skipped"; \
	  fi; }

test: install-dev browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

# The suite: SQLite and PostgreSQL + Redis stacks, Celery and Prefect peers, one table, written
# to BENCHMARKS.md (~5 min). make bench BENCH_ARGS="--quick --skip-peers"; see bench/README.md
bench: install
	$(BIN)/python bench/suite.py $(BENCH_ARGS)

# Engine overhead per step alone: make bench-engine BENCH_ARGS="--profile --runs 10"
bench-engine: install
	$(BIN)/python bench/engine_overhead.py $(BENCH_ARGS)

# Server time of the operator pages over 10,000 executions; see bench/README.md
bench-pages: install
	$(BIN)/python bench/pages.py $(BENCH_ARGS)

# API requests/s and latency under wrk (apt-get install -y wrk); see bench/README.md
bench-api: install
	$(BIN)/python bench/api_load.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) staticfiles db.sqlite3 db.sqlite3-wal db.sqlite3-shm
