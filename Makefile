# desktop-agent developer entry points.
#
#   make test   set up .venv if needed, then run the test suite (offscreen Qt)
#   make run    set up .venv if needed, then start the agent (--headless without a display)
#   make lint   ruff, mypy and the import-linter contracts
#   make clean  remove .venv and caches
#
#   make package        this platform's packaged app in dist/ (packaging/README.md):
#                       on Linux the wheel, the one-folder bundle dist/desktop-agent/,
#                       its .tar.gz and the .deb
#   make package-bundle the wheel, the bundle and the tarball only
#   make package-deb    the .deb from the bundle
#   make package-smoke  smoke-test the tarball (packaging/smoke-test.py; CI runs it)
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

# Runtime libraries PySide6's wheels load: the offscreen platform, and the
# xcb platform plugin with the X11 libraries it needs on a desktop.
QT_DEBS := libegl1 libgl1 libxkbcommon0 libxkbcommon-x11-0 libfontconfig1 \
           libdbus-1-3 libglib2.0-0 libxcb-cursor0 libx11-xcb1 libxcb-icccm4 \
           libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-shape0 \
           libxcb-randr0 libxcb-xfixes0 libxcb-sync1 libxcb-xkb1 libxcb-xinerama0
# restic is the oracle for the repository format in the tests; rclone serves
# REST repositories and openssh-server SFTP ones to the remote-backend tests.
TEST_DEBS := restic rclone openssh-server openssh-client dbus-daemon $(QT_DEBS)
RUN_DEBS := $(QT_DEBS)

.PHONY: run test venv lint clean debs-test debs-run
.PHONY: package package-bundle package-deb package-smoke debs-package debs-smoke

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

# ---------------------------------------------------------------- packaging
# The bundle is frozen from the wheel installed into a venv of its own
# (build/package/venv), never from the editable install in .venv: what is
# frozen is what a user installs, and no test tool ends up in the bundle.

PKG_VENV := build/package/venv
PKG_PY := $(PKG_VENV)/bin/python
PKG_VERSION = $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' desktop_agent/__init__.py)
PKG_TARBALL = dist/desktop-agent-$(PKG_VERSION)-linux-$(shell uname -m).tar.gz
# strip and objdump (binutils); the libraries the bundle leaves to the system
# must be installed here too: build-deb.py names their packages with dpkg -S.
PACKAGE_DEBS := binutils $(QT_DEBS) fontconfig-config libwayland-client0 libwayland-cursor0
# the smoke test's desktop: an X server, a system tray, and a way to find the icon in it
SMOKE_DEBS := $(PACKAGE_DEBS) xvfb trayer xdotool

debs-package:
	$(call ensure_debs,$(PACKAGE_DEBS))

debs-smoke:
	$(call ensure_debs,$(SMOKE_DEBS))

$(PKG_VENV)/.stamp-venv:
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "desktop-agent needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(PKG_VENV)
	touch $@

# The wheel is rebuilt every time (setuptools' build/lib is cleared first: a
# module deleted from the tree must not live on in it), then installed with
# the package extra (PyInstaller).
package-bundle: debs-package $(PKG_VENV)/.stamp-venv
	rm -rf build/lib build/bdist.* dist/desktop-agent dist/desktop_agent-*.whl dist/desktop-agent-*.tar.gz
	$(PKG_PY) -m pip wheel --disable-pip-version-check -q --no-deps -w dist .
	$(PKG_PY) -m pip install --disable-pip-version-check -q --force-reinstall --no-deps dist/desktop_agent-$(PKG_VERSION)-py3-none-any.whl
	$(PKG_PY) -m pip install --disable-pip-version-check -q 'dist/desktop_agent-$(PKG_VERSION)-py3-none-any.whl[package]'
	# from build/package: the source tree must not be importable during the analysis
	cd build/package && venv/bin/pyinstaller --noconfirm --log-level WARN \
	  --distpath ../../dist --workpath pyinstaller ../../packaging/pyinstaller/desktop-agent.spec
	tar --sort=name --owner=0 --group=0 --numeric-owner -C dist -cf - desktop-agent \
	  | gzip -6 > $(PKG_TARBALL)
	@du -sh dist/desktop-agent $(PKG_TARBALL)

package-deb: debs-package $(PKG_VENV)/.stamp-venv
	@test -x dist/desktop-agent/desktop-agent || { echo "make: no bundle in dist/desktop-agent: run make package-bundle first" >&2; exit 1; }
	$(PKG_PY) packaging/linux/build-deb.py dist/desktop-agent dist

# On Linux: everything. On other systems the spec is run by hand or by
# .github/workflows/package.yml (see packaging/windows/ and packaging/macos/).
package: package-bundle
	@if [ "$$(uname -s)" = Linux ] && command -v dpkg-deb >/dev/null 2>&1; then \
	  $(MAKE) --no-print-directory package-deb; \
	fi

package-smoke: debs-smoke
	@test -f $(PKG_TARBALL) || { echo "make: no $(PKG_TARBALL): run make package-bundle first" >&2; exit 1; }
	$(PKG_PY) packaging/smoke-test.py $(PKG_TARBALL)
