# dicomserver: `make run` serves on http://127.0.0.1:$(PORT); `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
PORT ?= 8080
HOST ?= 127.0.0.1
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run dev install install-test test test-unit test-live clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python setup.cfg setup.py
	$(BIN)/python -m pip install --quiet -e '.[codecs,render]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[codecs,render,postgres,test]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test
	@missing=""; \
	command -v curl >/dev/null 2>&1 || missing="$$missing curl"; \
	command -v dcm2json >/dev/null 2>&1 || missing="$$missing dcmtk"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq $$missing; \
		else echo "the full suite needs:$$missing (apt-get install as root)"; fi; \
	fi

## Serve with gunicorn, local blob storage and SQLite under ./data
run: install
	mkdir -p data
	$(BIN)/gunicorn -c python:dicomserver.gunicorn_conf --bind $(HOST):$(PORT) wsgi:app

## Flask's development server with the same app and defaults
dev: install
	mkdir -p data
	$(BIN)/flask --app wsgi run --host $(HOST) --port $(PORT) --debug

## Everything: unit tests and end-to-end tests against real gunicorn processes
test: install-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: install-test
	$(BIN)/python -m pytest --ignore=tests/live $(PYTEST_ARGS)

test-live: install-test
	$(BIN)/python -m pytest tests/live $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
