# The two set-up commands of the README. Each creates or updates .venv/ itself, installing the
# hash-pinned third-party binaries (binaries.txt), then the pinned dependencies (constraints.txt).
#   make demo   the built-in default job, offline (conditioners, a dataset, a tiny ControlNet)
#   make test   the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_EXTRAS := demo,train,torch
TEST_EXTRAS := dev,demo,distributed,blip,train,torch,spiga,animal,app
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check --constraint constraints.txt
BINARIES := $(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r binaries.txt
# The detectors of the spiga and animal extras, which pip cannot install through an extra: SPIGA's
# declared requirements are wrong for us, and openpifpaf pins torch 1.13.1 and builds C++ against
# the torch already installed (a C++17 compiler is needed; about 2 minutes).
SPIGA := spiga==0.0.6
OPENPIFPAF := openpifpaf==0.13.11
# The Studio's web framework, beside the app extra's pinned requirements (pyproject.toml says why).
GRADIO := gradio==6.31.0

# The Studio's browser tests drive Debian's Chromium through Playwright (no browser download).
CHROMIUM := /usr/bin/chromium

.PHONY: demo test lint bench clean-venv

demo: $(VENV)/.installed-demo
	$(BIN)/landmark-controlnet demo --out-dir outputs/demo

test: $(VENV)/.installed-test $(CHROMIUM)
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-test
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(VENV)/.installed-test
	$(BIN)/python benchmarks/conditioners.py
	$(BIN)/python benchmarks/build.py
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/hand_repair.py
	$(BIN)/python benchmarks/dry_run.py
	$(BIN)/python benchmarks/small_hands.py --out benchmarks/results/small_hands_2cpu.json

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-demo: pyproject.toml constraints.txt binaries.txt | $(BIN)/python
	$(BINARIES)
	$(PIP) -e ".[$(DEMO_EXTRAS)]"
	touch $@

$(VENV)/.installed-test: pyproject.toml constraints.txt binaries.txt | $(BIN)/python
	$(BINARIES)
	$(PIP) -e ".[$(TEST_EXTRAS)]"
	$(PIP) --no-deps $(SPIGA)
	$(PIP) --no-deps --no-build-isolation --no-cache-dir $(OPENPIFPAF)
	$(PIP) --no-deps $(GRADIO)
	touch $@

$(CHROMIUM):
	apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium)

clean-venv:
	rm -rf $(VENV)
