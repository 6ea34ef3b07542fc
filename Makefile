# The two commands a newcomer needs (see README):
#   make demo   runs the main job on the embedded default (no internet, no keys)
#   make test   checks the package is in sync with the notebooks, runs nbdev's doc processing, the notebooks' tests and pytest
# Each one alone sets up .venv; the install is skipped while pyproject.toml is unchanged.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED ?= ../shared

.PHONY: demo test venv export-check docs-check nbtest pytest clean-venv

venv:
	@bash scripts/ensure-venv.sh "$(PYTHON)" "$(VENV)"

demo: venv
	@if [ -d "$(SHARED)/data/bcn" ]; then \
	  echo "Barcelona boundaries found in $(SHARED)/data/bcn: seeding the offline cache (geoloc demo --city barcelona uses them)"; \
	  $(BIN)/geoloc cache-seed --city barcelona --src "$(SHARED)/data/bcn" >/dev/null; fi
	$(BIN)/geoloc demo

export-check: venv
	@bash scripts/check-export.sh "$(BIN)"

docs-check: venv
	$(BIN)/python scripts/check-docs.py

nbtest: venv
	$(BIN)/nbdev-test --n-workers 2 --timing

# Test files run side by side (pytest-xdist, one file per worker at a time: module fixtures are made once);
# on this project's 2-core CI that halves the wall time of the subprocess- and server-bound tests.
pytest: venv
	$(BIN)/python -m pytest tests/ -n auto --maxprocesses 4 --dist loadfile --durations=15

test: export-check docs-check nbtest pytest

clean-venv:
	rm -rf $(VENV)
