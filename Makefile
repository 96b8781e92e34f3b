# The two set-up commands of the README. Each creates or updates .venv/ itself, installing the
# pinned dependencies (constraints.txt) before it runs.
#   make demo   the built-in default job, offline (conditioners, a dataset, a tiny ControlNet)
#   make test   the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_EXTRAS := demo,train
TEST_EXTRAS := dev,demo,distributed,blip,train
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check --constraint constraints.txt

.PHONY: demo test lint bench clean-venv

demo: $(VENV)/.installed-demo
	$(BIN)/landmark-controlnet demo --out-dir outputs/demo

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-test
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(VENV)/.installed-test
	$(BIN)/python benchmarks/conditioners.py
	$(BIN)/python benchmarks/build.py
	$(BIN)/python benchmarks/train_step.py

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-demo: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e ".[$(DEMO_EXTRAS)]"
	touch $@

$(VENV)/.installed-test: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e ".[$(TEST_EXTRAS)]"
	touch $@

clean-venv:
	rm -rf $(VENV)
