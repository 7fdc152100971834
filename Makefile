# Set-up is part of every target: a fresh clone needs only `make run` or `make test`.
# TORCH: the torch requirement installed first. The default is the local CPU build; GPU users
# install their own CUDA torch into the venv first, or run `make TORCH=torch test`.
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python

# PIN: whatever torch is in the venv stays (no dependency may swap in another build, e.g. a multi-GB CUDA one).
PIN := $(VENV)/torch-pin.txt

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -c "import torch; print('torch==' + torch.__version__)" > $(PIN)
	$(PY) -m pip install -q -c $(PIN) -e ".[test]"
	touch $@

# The test suite also covers the optional lm-evaluation-harness adapter (~730 MB of dependencies; not for `run`).
$(VENV)/.installed-lmeval: $(VENV)/.installed
	$(PY) -m pip install -q -c $(PIN) -e ".[test,lmeval]"
	touch $@

.PHONY: setup run demo test
setup: $(VENV)/.installed

# The main job: train and compare five presets on the embedded MQAR default (tables + plots in runs/compare).
run: $(VENV)/.installed
	$(VENV)/bin/miras compare

demo: $(VENV)/.installed
	$(VENV)/bin/miras demo

test: $(VENV)/.installed-lmeval
	$(PY) -m pytest -n 2
