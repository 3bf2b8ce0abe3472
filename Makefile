# The two commands of the README: `make run` (the main job) and `make test` (the test suite, then the tutorial notebook).
# Both create .venv and install what they need on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: run test install

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	bash scripts/install-system-packages.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --no-deps recbole==1.2.1
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

run: install
	$(BIN)/recbole-gen benchmark

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider
	$(BIN)/python scripts/run_tutorial.py   # the tutorial notebook, top to bottom; prints its own wall time
