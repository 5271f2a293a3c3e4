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
SYSTEM_PACKAGES := dbus gnome-keyring libsecret-tools xvfb postgresql \
                   libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0

.PHONY: test lint typecheck pytest venv sysdeps bench clean package

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[gateway,dev]'
	touch $(STAMP)

sysdeps:
	@bash scripts/install-system-packages.sh $(SYSTEM_PACKAGES)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy

pytest: venv sysdeps
	$(PY) -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

# A PyInstaller one-folder bundle of the laptop client with its manifest, SBOM and self-test.
package: venv sysdeps
	bash packaging/build.sh
	$(PY) packaging/verify.py

bench: venv
	$(PY) -m bench

clean:
	rm -rf $(VENV) build dist demo-out .mypy_cache .pytest_cache .ruff_cache
