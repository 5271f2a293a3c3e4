# Gatehouse: the two commands a newcomer runs are `make demo` and `make test`.
# Everything they need is installed from here: a .venv with the project and its dev tools,
# and (when run as root on Debian) the system packages the tests use.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export QT_QPA_PLATFORM ?= offscreen

# System packages the test suite uses: a real Secret Service (gnome-keyring inside
# dbus-run-session) for the keyring tests, Xvfb for the UI journey, PostgreSQL 15 for the
# gateway's scale path. Installed only when missing and only when we are root on Debian.
# A third-party FHIR R4 server for the sync tests (Medplum's FHIR router on Node 20+), installed
# from the npm registry at the versions its package-lock.json pins (tests/support/medplum_server.py).
MEDPLUM_DIR   := tests/support/medplum
MEDPLUM_STAMP := $(MEDPLUM_DIR)/node_modules/.installed
# A second one that offers Bulk Data $export and _history (sekmet-fhir from PyPI, FastAPI), in its
# OWN venv so its dependencies never reach the project's (tests/support/sekmet_server.py).
SEKMET_DIR    := tests/support/sekmet
SEKMET_VENV   := $(SEKMET_DIR)/.venv
SEKMET_STAMP  := $(SEKMET_VENV)/.installed

SYSTEM_PACKAGES := dbus gnome-keyring libsecret-tools xvfb postgresql \
                   libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0

.PHONY: medplum sekmet test lint typecheck pytest pytest-postgres soak venv sysdeps bench clean package demo demo-frozen

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[gateway,dev]'
	touch $(STAMP)

medplum: $(MEDPLUM_STAMP)

$(MEDPLUM_STAMP): $(MEDPLUM_DIR)/package.json $(MEDPLUM_DIR)/package-lock.json
	cd $(MEDPLUM_DIR) && npm ci --no-audit --no-fund --ignore-scripts
	touch $(MEDPLUM_STAMP)

sekmet: $(SEKMET_STAMP)

$(SEKMET_STAMP): $(SEKMET_DIR)/requirements.txt
	$(PYTHON) -m venv $(SEKMET_VENV)
	$(SEKMET_VENV)/bin/python -m pip install --quiet -r $(SEKMET_DIR)/requirements.txt
	touch $(SEKMET_STAMP)

sysdeps:
	@bash scripts/install-system-packages.sh $(SYSTEM_PACKAGES)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy

pytest: venv sysdeps medplum sekmet
	GATEHOUSE_REQUIRE_POSTGRES=1 $(PY) -m pytest -m "not frozen_bundle" $(PYTEST_ARGS)

# The gateway's scale path: the same gateway suite against a real PostgreSQL 15 that the tests
# start in a temporary folder (under make test a missing PostgreSQL fails the run, with the reason).
pytest-postgres: venv sysdeps sekmet
	GATEHOUSE_REQUIRE_POSTGRES=1 GATEHOUSE_TEST_STORE=postgres $(PY) -m pytest tests/gateway -q

# Kill -9 harnesses at soak depth (CI runs 200 rounds as part of `make test`).
soak: venv sysdeps
	GATEHOUSE_KILL_ROUNDS=3000 $(PY) -m pytest tests/sync/test_sync_crash.py tests/client/test_crash_consultation.py -q

# The same tests as `pytest pytest-postgres`, the two at once (scripts/run-tests.sh).
test: lint typecheck venv sysdeps medplum sekmet
	bash scripts/run-tests.sh

# A PyInstaller one-folder bundle of the laptop client with its manifest, SBOM and self-test.
package: venv sysdeps
	bash packaging/build.sh
	$(PY) packaging/verify.py
	$(PY) -m pytest -q -m frozen_bundle tests/packaging

# Local gateway with synthetic data, a provisioned device and the client; with no display (or
# HEADLESS=1) the same journey runs headless and writes demo-out/NN-screen.png + summary.json.
# With Node and Medplum (tried here; a failure only means no upstream) the patients come from an
# upstream FHIR server and the note is shown filed in the health record (scripts/demo_upstream.py).
demo: venv sysdeps
	-@$(MAKE) --no-print-directory medplum
	bash scripts/demo.sh

# The same journey with the frozen laptop bundle (dist/gatehouse) against the demo gateway.
demo-frozen: package
	bash packaging/demo_frozen.sh

bench: venv medplum sekmet
	$(PY) -m bench

clean:
	rm -rf $(VENV) build dist demo-out .mypy_cache .pytest_cache .ruff_cache
