VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Stages run `python -m stages.<name>`: the venv must come first on PATH for dvc and for them.
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1

# PyPI's torch for Linux is the CUDA build (a 5.8 GB environment). Without an NVIDIA GPU:
# `make install CPU=1` takes PyTorch's CPU wheels from its CPU index, or TORCH_INDEX=<url> from any index.
CPU_INDEX := https://download.pytorch.org/whl/cpu
TORCH_INDEX ?= $(if $(CPU),$(CPU_INDEX))

.PHONY: install repro test bench chromium show

install: $(STAMP)

$(STAMP): requirements.txt
	python3 -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(if $(TORCH_INDEX),$(BIN)/pip install --index-url $(TORCH_INDEX) torch torchvision)
	$(BIN)/pip install -r requirements.txt
	touch $(STAMP)

repro: $(STAMP)
	python -m cifar_study.observe.live
	dvc repro

# The workspace, HEAD and every experiment: headline metrics and changed params in 120 columns.
show: $(STAMP)
	python -m cifar_study.show

test: $(STAMP) chromium
	pytest

# tests/test_plots_page.py opens the `dvc plots` pages in headless Chromium. Install Debian's package
# where we can (root with apt-get, as in CI); elsewhere that test says how to get it.
chromium:
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1 || { \
	  echo "installing chromium (apt-get) for the browser test"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    chromium fonts-liberation; } >/tmp/chromium-install.log 2>&1 || \
	  echo "warning: could not install chromium (see /tmp/chromium-install.log)"; }

bench: $(STAMP)
	python bench/benchmark.py
