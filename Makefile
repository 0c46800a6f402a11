# Two commands for a fresh machine: `make run` and `make test`.
# Every target installs what it needs first; a second run skips finished steps.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
TORCH_VERSION := 2.14.1
TORCHVISION_VERSION := 0.29.1
STAMP := $(VENV)/.vlseg-installed

.PHONY: setup run test test-fast lint format phantoms preview browser clean

setup: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# torch first and pinned, so the project install below never pulls another build.
$(VENV)/.torch-installed: | $(PY)
	@$(PY) -c "import torch, torchvision, sys; sys.exit(torch.__version__.split('+')[0] != '$(TORCH_VERSION)')" 2>/dev/null \
	  || $(PIP) install torch==$(TORCH_VERSION) torchvision==$(TORCHVISION_VERSION)
	@touch $@

$(STAMP): pyproject.toml setup.py $(VENV)/.torch-installed
	$(PIP) install -e ".[all]" torch==$(TORCH_VERSION) torchvision==$(TORCHVISION_VERSION)
	@touch $@

# Debian chromium for the headless browser test (playwright never downloads its own).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The chat app on the embedded default, bound to 127.0.0.1:7860 (python app.py --help for options).
run: setup
	HF_HUB_OFFLINE=1 $(PY) app.py

test: setup browser
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

test-fast: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow"

# The suite with CPU kernels capped at AVX2 (ATen, oneDNN, MKL), whatever this machine has: the
# float comparisons must hold across ISAs (an AVX-512/AMX machine sums in other orders than CI).
.PHONY: test-isa
test-isa: setup browser
	HF_HUB_OFFLINE=1 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
	  $(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) runs .pytest_cache
