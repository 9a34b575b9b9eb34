# Two entry points: `make repro` (train, evaluate and compare on the embedded data) and `make test`.
# Both create .venv from requirements.lock on first use; nothing needs activating.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# Stage commands in dvc.yaml call `python3`; with .venv/bin first it is the project's interpreter.
RUN := PATH="$(BIN):$$PATH" TF_CPP_MIN_LOG_LEVEL=2

.PHONY: install repro test lint
install: $(VENV)/.installed

# The locked dependencies, then the cxr package itself (editable, no deps) so that cxr-predict
# works from any directory.
$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

repro: install
	$(RUN) dvc repro

# One worker per core, at most four (pytest-xdist): much of the suite waits on dvc and MLflow
# subprocesses, so two workers keep two cores busy (docs/development.md has the timings). Each
# test file runs on one worker, in order (--dist loadfile): some modules' tests build on each
# other, and a module's costly fixtures are built once.
test: install
	$(RUN) python -m pytest -n auto --maxprocesses 4 --dist loadfile

lint: install
	$(RUN) ruff check . && $(RUN) ruff format --check . && $(RUN) mypy
