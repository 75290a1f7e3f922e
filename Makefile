# desktop-agent developer entry points.
#
#   make test   set up .venv if needed, then run the test suite (offscreen Qt)
#   make run    set up .venv if needed, then start the agent (--headless without a display)
#   make lint   ruff, mypy and the import-linter contracts
#   make clean  remove .venv and caches
#
# Each target sets up what it needs on a fresh machine: missing Debian packages
# (installed when we are root, otherwise listed), the virtualenv, and the
# project installed in editable mode. Stamp files inside .venv remember the
# installs, so a second run does not reinstall; editing pyproject.toml does.

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
PYTEST_ARGS ?=
ARGS ?=

# Runtime libraries PySide6's wheels load (the offscreen platform included).
QT_DEBS := libegl1 libgl1 libxkbcommon0 libxkbcommon-x11-0 libfontconfig1 \
           libdbus-1-3 libglib2.0-0 libxcb-cursor0
# restic is the oracle for the repository format in the tests.
TEST_DEBS := restic $(QT_DEBS)
RUN_DEBS := $(QT_DEBS)

.PHONY: run test venv lint clean debs-test debs-run

# $(1): Debian packages. Checked with dpkg -s on every run (cheap);
# apt-get runs only when something is missing.
define ensure_debs
	@if ! command -v dpkg >/dev/null 2>&1; then \
	  echo "make: not a Debian system; make sure these are installed: $(1)" >&2; \
	else \
	  missing=""; \
	  for p in $(1); do dpkg -s "$$p" >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ]; then \
	      echo "make: installing Debian packages:$$missing"; \
	      apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	    else \
	      echo "make: missing Debian packages:$$missing" >&2; \
	      echo "make: install them with: sudo apt-get install$$missing" >&2; \
	    fi; \
	  fi; \
	fi
endef

debs-test:
	$(call ensure_debs,$(TEST_DEBS))

debs-run:
	$(call ensure_debs,$(RUN_DEBS))

# The bare virtualenv. Its stamp has no prerequisites: it is made once.
$(VENV)/.stamp-venv:
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "desktop-agent needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	touch $@

# The project with its runtime dependencies; redone when pyproject.toml changes.
$(VENV)/.stamp-run: pyproject.toml $(VENV)/.stamp-venv
	$(VPY) -m pip install --disable-pip-version-check -e .
	touch $@

# The project with its test extra; redone when pyproject.toml changes.
$(VENV)/.stamp-test: pyproject.toml $(VENV)/.stamp-venv
	$(VPY) -m pip install --disable-pip-version-check -e '.[test]'
	touch $@

venv: $(VENV)/.stamp-test

test: debs-test $(VENV)/.stamp-test
	QT_QPA_PLATFORM=offscreen $(VPY) -m pytest -n 2 $(PYTEST_ARGS)

run: debs-run $(VENV)/.stamp-run
	@if [ -z "$${DISPLAY:-}" ] && [ -z "$${WAYLAND_DISPLAY:-}" ]; then \
	  echo "make: no DISPLAY or WAYLAND_DISPLAY: starting headless"; \
	  exec $(VENV)/bin/desktop-agent --headless $(ARGS); \
	else \
	  exec $(VENV)/bin/desktop-agent $(ARGS); \
	fi

lint: $(VENV)/.stamp-test
	$(VENV)/bin/ruff check desktop_agent tests
	$(VENV)/bin/mypy desktop_agent
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache \
	       .hypothesis .import_linter_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
