# Set-up is part of every target: a fresh clone needs only `make run` or `make test`.
#
# The set-up installs exactly requirements/lock.txt (every package pinned with its hashes, made by
# pip-compile for CPython 3.11 on Linux x86_64 from pyproject.toml + requirements/torch.in), then miras
# itself without dependencies, then checks the environment with `pip check`. A torch already in the venv
# (e.g. your own CUDA build, `python3 -m venv .venv && .venv/bin/pip install torch`) is kept: the lock is
# installed without its torch entry.
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK := requirements/lock.txt
LOCK_INPUTS := pyproject.toml requirements/torch.in
EXTRAS := test,lmeval,hf,plots,yaml,search
PIP_TOOLS := pip-tools==7.7.0

$(VENV)/.installed: $(LOCK) pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	if $(PY) -c "import torch" 2>/dev/null; then \
		awk '/^torch==/ {skip = 1} skip { if ($$0 !~ /\\$$/) skip = 0; next } { print }' $(LOCK) > $(VENV)/lock.txt; \
	else cp $(LOCK) $(VENV)/lock.txt; fi
	$(PY) -m pip install -q --require-hashes --no-deps -r $(VENV)/lock.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $@

.PHONY: setup run demo test lock lock-upgrade test-latest
setup: $(VENV)/.installed

# The main job: train and compare the presets on the embedded MQAR default (tables + plots in runs/compare).
# Any other presets or flags: make run COMPARE="--presets kda,lact,atlas"
COMPARE ?=
run: $(VENV)/.installed
	$(VENV)/bin/miras compare $(COMPARE)

demo: $(VENV)/.installed
	$(VENV)/bin/miras demo

test: $(VENV)/.installed
	$(PY) -m pytest -n 2

# Regenerate the lock after a change to pyproject.toml, keeping every pin that is still allowed
# (`make lock-upgrade`: the newest versions the ranges allow). Needs the package index, not a venv of ours.
.venv-lock/bin/pip-compile:
	python3 -m venv .venv-lock
	.venv-lock/bin/pip install -q $(PIP_TOOLS)

COMPILE = .venv-lock/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
	--no-emit-index-url --no-emit-find-links $(addprefix --extra ,$(subst $(comma), ,$(EXTRAS))) \
	-o $(LOCK) $(LOCK_INPUTS)
comma := ,

lock: .venv-lock/bin/pip-compile
	$(COMPILE)

lock-upgrade: .venv-lock/bin/pip-compile
	$(COMPILE) --upgrade

# Drift check: a throwaway venv with the newest versions that pyproject.toml's ranges allow (torch stays the
# local CPU build), then the whole suite. Run it before users meet a new release.
test-latest:
	rm -rf .venv-latest
	python3 -m venv .venv-latest
	.venv-latest/bin/pip install -q -r requirements/torch.in
	.venv-latest/bin/python -c "import torch; print('torch==' + torch.__version__)" > .venv-latest/torch-pin.txt
	.venv-latest/bin/pip install -q --upgrade -c .venv-latest/torch-pin.txt -e ".[$(EXTRAS)]"
	.venv-latest/bin/pip list --format=freeze | grep -i -E "^(torch|transformers|lm.eval|accelerate|numpy|tokenizers|safetensors)=="
	.venv-latest/bin/python -m pytest -n 2
