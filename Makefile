# The front door: `make demo` shows the pipeline working, `make test` checks it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install test lint format validate demo bench bench-emulators clean plan apply run destroy produce consume

install: $(INSTALLED)

$(INSTALLED): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

test: install
	$(BIN)/pytest -q
	$(BIN)/pipeline test pipelines/

lint: install
	$(BIN)/ruff check runner tests
	$(BIN)/ruff format --check runner tests
	$(BIN)/lint-imports --no-cache --no-logo

format: install
	$(BIN)/ruff format runner tests
	$(BIN)/ruff check --fix runner tests

# The scenario end to end on the embedded local backend, in a fresh state folder of its own.
DEMO_STATE := .pipeline/demo
SOURCE := de-c2w2lab1-kinesis-data-stream
demo: export PIPELINE_STATE_DIR = $(DEMO_STATE)
demo: install
	@rm -rf $(DEMO_STATE)
	$(BIN)/pipeline apply pipelines/ecommerce.yaml
	$(BIN)/pipeline produce --stream $(SOURCE) --json "$$(cat pipelines/samples/session.json)"
	$(BIN)/pipeline produce --stream $(SOURCE) --synthetic --count 1000 --mean-gap 0 --seed 7
	$(BIN)/pipeline run pipelines/ecommerce.yaml --until-idle 2
	@echo; echo "Delivered files (JSON Lines, one record per line):"
	@cd $(DEMO_STATE) && find buckets -type f | sort | xargs wc -l
	@echo; echo "Explore it:  export PIPELINE_STATE_DIR=$(DEMO_STATE)"
	@echo "             $(BIN)/pipeline consume --stream de-c2w2lab1-usa-data-stream --no-follow"

# The common flows, on any spec and target: make plan|apply|run|destroy [SPEC=...] [TARGET=aws],
# make produce STREAM=... [COUNT=...], make consume STREAM=...; ARGS= passes more options.
SPEC ?= pipelines/ecommerce.yaml
TARGET ?= $(or $(PIPELINE_TARGET),local)
ARGS ?=
plan apply run destroy: install
	$(BIN)/pipeline $@ $(SPEC) --target $(TARGET) $(ARGS)

# Synthetic sessions: COUNT of them as fast as it goes, or without COUNT one every 10 s (GAP=).
produce: install
	$(if $(STREAM),,$(error STREAM is required, e.g. make produce STREAM=$(SOURCE) COUNT=100))
	$(BIN)/pipeline produce --stream $(STREAM) --target $(TARGET) --synthetic \
		$(if $(COUNT),--count $(COUNT) --mean-gap $(or $(GAP),0),$(if $(GAP),--mean-gap $(GAP))) $(ARGS)

consume: install
	$(if $(STREAM),,$(error STREAM is required, e.g. make consume STREAM=de-c2w2lab1-usa-data-stream))
	$(BIN)/pipeline consume --stream $(STREAM) --target $(TARGET) $(ARGS)

# Figures, not tests: the pipeline against a hand-written loop (BENCH_RECORDS=200000 by default).
bench: install
	$(BIN)/python bench/bench.py

# The local target against kinesalite (installed with npm into build/emulators) and a moto
# server, on the same records and spec (BENCH_EMULATOR_RECORDS=40000); says so without node.
bench-emulators: install
	$(BIN)/python bench/emulators.py

validate: install
	$(BIN)/pipeline validate pipelines/*.yaml

clean:
	rm -rf $(VENV) .pipeline .pytest_cache .ruff_cache *.egg-info build
