# The front door: `make demo` shows the pipeline working, `make test` checks it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install test lint format validate demo clean

install: $(INSTALLED)

$(INSTALLED): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

test: install
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check runner tests
	$(BIN)/ruff format --check runner tests

format: install
	$(BIN)/ruff format runner tests
	$(BIN)/ruff check --fix runner tests

validate: install
	$(BIN)/pipeline validate pipelines/*.yaml

clean:
	rm -rf $(VENV) .pipeline .pytest_cache .ruff_cache *.egg-info
