# dicomserver: `make run` serves on http://127.0.0.1:$(PORT); `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
PORT ?= 8080
HOST ?= 127.0.0.1
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# make bench: data sizes (comma-separated instance counts, each measured on its own), rounds per server, extra bench/run.py flags
N ?= 500,3000
REPEAT ?= 3
BENCH_ARGS ?=
# make fuzz: examples per property test (default: the "fuzz" profile's), seconds per atheris target
FUZZ_EXAMPLES ?=
FUZZ_SECONDS ?= 120

.PHONY: run dev install install-test install-bench install-lint install-e2e lint test test-unit test-live e2e fuzz bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python setup.cfg setup.py pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[codecs,render]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[codecs,render,postgres,s3,test]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test
	@missing=""; \
	command -v curl >/dev/null 2>&1 || missing="$$missing curl"; \
	command -v dcm2json >/dev/null 2>&1 || missing="$$missing dcmtk"; \
	command -v wrk >/dev/null 2>&1 || missing="$$missing wrk"; \
	command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || missing="$$missing nginx"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	test -x /usr/sbin/Orthanc || missing="$$missing orthanc"; \
	test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so || missing="$$missing orthanc-dicomweb"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
		else echo "the full suite needs:$$missing (apt-get install as root)"; fi; \
	fi

$(VENV)/.installed-lint: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[codecs,render,lint]'
	touch $@

install-lint: $(VENV)/.installed-lint

$(VENV)/.installed-bench: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[codecs,render,bench]'
	touch $@

# The benchmark's tools from Debian: Orthanc + DICOMweb plugin (the comparison), wrk (the
# load generator), nginx (the ceiling), DCMTK (storescu, the DIMSE C-STORE client). Installed
# when run as root, else listed.
install-bench: $(VENV)/.installed-bench
	@missing=""; \
	command -v dcm2json >/dev/null 2>&1 || missing="$$missing dcmtk"; \
	test -x /usr/sbin/Orthanc || missing="$$missing orthanc"; \
	test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so || missing="$$missing orthanc-dicomweb"; \
	command -v wrk >/dev/null 2>&1 || missing="$$missing wrk"; \
	command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || missing="$$missing nginx"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
		else echo "the benchmark needs:$$missing (apt-get install as root)"; fi; \
	fi

## Serve with gunicorn, local blob storage and SQLite under ./data
run: install
	mkdir -p data
	$(BIN)/gunicorn -c python:dicomserver.gunicorn_conf --bind $(HOST):$(PORT) wsgi:app

## Flask's development server with the same app and defaults
dev: install
	mkdir -p data
	$(BIN)/flask --app wsgi run --host $(HOST) --port $(PORT) --debug

## ruff (the rules are in pyproject.toml) and mypy (dicomserver/ and backends/, every def typed);
## both run, and any finding of either fails
lint: install-lint
	@status=0; \
	$(BIN)/ruff check dicomserver backends bench tests wsgi.py setup.py || status=1; \
	$(BIN)/mypy || status=1; \
	exit $$status

## Everything: lint, then unit tests and end-to-end tests against real gunicorn processes
test: install-test lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: install-test
	$(BIN)/python -m pytest --ignore=tests/live $(PYTEST_ARGS)

test-live: install-test
	$(BIN)/python -m pytest tests/live $(PYTEST_ARGS)

# The browser tests' tools: node and Debian's chromium (apt-get, when run as root), playwright-core
# (npm ci, again only when e2e/package-lock.json changed), and the prebuilt OHIF viewer pinned in
# e2e/package.json (npm pack into npm's cache, unpacked into e2e/.cache once). No browser download.
install-e2e: install-test
	@missing=""; \
	command -v node >/dev/null 2>&1 || missing="$$missing nodejs"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
		else echo "make e2e needs:$$missing (apt-get install as root)"; exit 1; fi; \
	fi
	@cd e2e && if [ ! node_modules/.installed -nt package-lock.json ] || [ ! node_modules/.installed -nt package.json ]; then \
		npm ci --ignore-scripts --no-audit --no-fund && touch node_modules/.installed; \
	fi
	node e2e/fetch-ohif.mjs

## OHIF (the pinned @ohif/app) against a dicomserver on loopback, and dicomserver's own pages, in
## Debian's chromium driven by playwright-core (tests/e2e); screenshots in e2e/artifacts/
e2e: install-e2e
	$(BIN)/python -m pytest tests/e2e $(PYTEST_ARGS)

## The HTTP fuzz tests (tests/fuzz) with thousands of random examples each (hypothesis profile
## "fuzz"; failures are saved in tests/fuzz/examples/db and tried first next time), then the
## atheris harnesses of the multipart and QIDO parsers if atheris is installed (not in CI)
fuzz: install-test
	@status=0; \
	DICOMSERVER_FUZZ_PROFILE=fuzz DICOMSERVER_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) \
		$(BIN)/python -m pytest tests/fuzz --hypothesis-show-statistics $(PYTEST_ARGS) || status=1; \
	if $(BIN)/python -c "import atheris" 2>/dev/null; then \
		for target in multipart qido; do \
			echo "atheris: $$target for $(FUZZ_SECONDS) s"; \
			$(BIN)/python tests/fuzz/atheris_harness.py $$target -max_total_time=$(FUZZ_SECONDS) \
				-artifact_prefix=tests/fuzz/examples/ || status=1; \
		done; \
	else echo "atheris is not installed: the parser harnesses were skipped (pip install atheris)"; fi; \
	exit $$status

## dicomserver beside Orthanc and nginx at N=500 and N=3000 side by side (DICOMweb, and DIMSE C-STORE by storescu),
## written to docs/benchmarks.md (about 45 min on 2 cores; one size: make bench N=3000; more flags:
## BENCH_ARGS="--servers dicomserver --ops metadata"; measure some rows again and keep the others:
## BENCH_ARGS="--ops dimse-store --update")
bench: install-bench
	BENCH_INVOKED_AS="make bench N=$(N) REPEAT=$(REPEAT)$(if $(BENCH_ARGS), BENCH_ARGS='$(BENCH_ARGS)')" \
		$(BIN)/python bench/run.py --n $(N) --repeat $(REPEAT) $(BENCH_ARGS)

## The same in about a minute (small N, one round, 1 s per test), into bench/.data/ (not committed)
bench-quick: install-bench
	$(BIN)/python bench/run.py --quick --out bench/.data/benchmarks-quick.md $(BENCH_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis .mypy_cache .ruff_cache
	rm -rf e2e/node_modules e2e/.cache e2e/artifacts
