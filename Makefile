# The two commands of the README: `make run` (the main job) and `make test` (the test suite, then the tutorial notebook).
# Both create .venv and install what they need on first use.
PYTHON ?= python3
VENV ?= .venv
# the tested versions (constraints.txt's header says how to try the newest ones instead)
CONSTRAINTS ?= constraints.txt
BIN := $(VENV)/bin
PIP_INSTALL := $(BIN)/python -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: run test install constraints

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	bash scripts/install-system-packages.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip
	$(PIP_INSTALL) --no-deps recbole==1.2.1
	$(PIP_INSTALL) -e '.[dev]'
	$(BIN)/python -m pip check
	touch $@

constraints:   # record $(VENV)'s versions (after its `make test` passed) as the tested set, keeping the header
	{ sed '/^[^#]/,$$d' constraints.txt; $(BIN)/python -m pip freeze --all --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

run: install
	$(BIN)/recbole-gen benchmark

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider
	$(BIN)/python scripts/run_tutorial.py   # the tutorial notebook, top to bottom; prints its own wall time
