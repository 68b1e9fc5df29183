# mxhook — every target installs what it needs on a fresh Debian 12 machine (run as root).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# gcc and libc6-dev build the fault tests' LD_PRELOAD shim (tests/fault/eio_preload.c); chromium,
# chromium-driver and python3-selenium run the console's browser tests (tests/web/test_console_browser.py).
APT_PACKAGES := postfix python3-milter python3-requests python3-idna python3-jinja2 sqlite-utils \
	python3-click python3-regex python3-cryptography python3-venv python3-pip swaks gcc libc6-dev \
	python3-spf python3-dkim python3-nacl python3-authheaders python3-authres python3-dnspython python3-publicsuffix2 \
	python3-flask python3-waitress python3-prometheus-client \
	python3-flaskext.wtf chromium chromium-driver python3-selenium dkimpy-milter \
	python3-user-agents python3-geoip2 python3-yaml python3-pytest-xdist python3-systemd
STAMP_APT := $(VENV)/.apt-done
STAMP_PIP := $(VENV)/.pip-done

# fresh-test / package-test-root: throw-away Debian roots (scripts/fresh-root.sh); KEEP=1 keeps
# the root, FRESH_POSTFIX='Local only' installs a configured system Postfix in it first.
DIST ?= bookworm
FRESH_ROOT := bash scripts/fresh-root.sh $(if $(KEEP),--keep) \
	$(if $(FRESH_POSTFIX),--postfix '$(FRESH_POSTFIX)')

.PHONY: setup demo test test-newest test-unit test-e2e test-fault test-fuzz fuzz-long test-python deb package-test \
	fresh-test package-test-root package-test-trixie bench clean

setup: $(STAMP_PIP)

# Debian's python3 with Debian's modules is what the .deb runs on, so the dev venv uses it too
# (--system-site-packages) and pip adds only the test tools and the project itself.
$(STAMP_APT): Makefile  # a package added to the list is installed by the next make
	@if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
		apt-get update -q && \
		echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(APT_PACKAGES); \
	fi
	/usr/bin/python3 -m venv --system-site-packages $(VENV)
	touch $@

$(STAMP_PIP): $(STAMP_APT) setup.cfg pyproject.toml
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

demo: setup
	$(PY) scripts/demo.py $(if $(KEEP),--keep)

# The package test and the newest-PyPI run (unit and milter suites; `make test-newest` runs
# them all, ~5 min more) come first so that pytest's summary stays the last line of the run.
# pytest-xdist runs the suites on every CPU (`-n auto`), a test file to a worker (`--dist
# loadfile`: a file's fixtures and its order stay together); the e2e tests mostly wait on
# Postfix and sockets, so two workers on 2 CPUs halve the run.
PYTEST_PARALLEL := -n auto --dist loadfile

test: setup
	bash scripts/package-test.sh
	SUITES="tests/unit tests/milter" PYTEST_ARGS="$(PYTEST_PARALLEL)" bash scripts/test-newest.sh
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_PARALLEL) tests

# The suites against the newest PyPI release of every dependency, in a second venv.
test-newest:
	bash scripts/test-newest.sh

test-fault: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/fault

test-fuzz: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/fuzz

# Long fuzzing run (hypothesis "long" profile, then atheris): FUZZ_SECONDS=... to bound it.
fuzz-long: setup
	bash scripts/fuzz-long.sh

test-python: setup
	$(PY) -m pytest -q -p no:cacheprovider tests

deb:
	packaging/build-deb.sh dist

package-test:
	bash scripts/package-test.sh

# The README's two commands on a fresh Debian (DIST=bookworm or trixie) made with mmdebstrap, on
# a clean copy of HEAD (committed files only). Too slow for .ci/run.
fresh-test:
	$(FRESH_ROOT) --dist $(DIST) -- bash -c 'for t in demo test; do s=$$SECONDS; make $$t || exit; \
		echo "fresh-test: make $$t passed in $$((SECONDS - s)) s"; done'

# The .deb built here (packaging/build-deb.sh), installed and tested by scripts/package-test.sh
# in a fresh Debian root (DIST; package-test-trixie: Debian 13).
package-test-root:
	@set -euo pipefail; out=$$(mktemp -d /tmp/mxhook-deb.XXXXXX); trap 'rm -rf "$$out"' EXIT; \
	s=$$SECONDS; deb=$$(packaging/build-deb.sh "$$out" | tail -n 1); \
	echo "package-test-root: built $$(basename "$$deb") in $$((SECONDS - s)) s"; \
	$(FRESH_ROOT) --dist $(DIST) --copy "$$deb" -- \
		env MXHOOK_PACKAGE_TEST_DEB="/root/in/$$(basename "$$deb")" bash scripts/package-test.sh

package-test-trixie:
	$(MAKE) package-test-root DIST=trixie

test-unit: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/unit tests/milter

test-e2e: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/e2e

bench: setup
	$(PY) bench/milter_throughput.py

clean:
	rm -rf $(VENV) build dist *.egg-info milter/*.egg-info demo-run
