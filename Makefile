# Set-up is part of every target: a fresh clone needs only `make run` or `make test`.
# TORCH: the torch requirement installed first. The default is the local CPU build; GPU users
# install their own CUDA torch into the venv first, or run `make TORCH=torch test`.
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

.PHONY: setup run demo test
setup: $(VENV)/.installed

# The main job: train and compare five presets on the embedded MQAR default (tables + plots in runs/compare).
run: $(VENV)/.installed
	$(VENV)/bin/miras compare

demo: $(VENV)/.installed
	$(VENV)/bin/miras demo

test: $(VENV)/.installed
	$(PY) -m pytest -n 2
