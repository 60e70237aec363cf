VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Stages run `python -m stages.<name>`: the venv must come first on PATH for dvc and for them.
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: install repro test bench

install: $(STAMP)

$(STAMP): requirements.txt
	python3 -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -r requirements.txt
	touch $(STAMP)

repro: $(STAMP)
	dvc repro

test: $(STAMP)
	pytest

bench: $(STAMP)
	python bench/benchmark.py
