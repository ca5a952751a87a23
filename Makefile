# Two commands set up everything on a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs what it needs into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Torch is pinned: these builds lie on the development machines' disk.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test install install-test bench clean

$(VENV)/.base:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	touch $@

$(VENV)/.installed: $(VENV)/.base pyproject.toml
	$(PIP) install -q -e '.[all]' $(TORCH_PINS)
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(PIP) install -q -e '.[all,test]' $(TORCH_PINS)
	# DeepSpeed builds against the torch already in the venv (no isolated build env).
	$(PIP) install -q --no-build-isolation 'deepspeed>=0.14' $(TORCH_PINS)
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(VENV)/bin/bestckpt demo --run-dir runs/demo

test: $(VENV)/.installed-test
	$(VENV)/bin/ruff check src tests bench scripts examples
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

bench: $(VENV)/.installed-test
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
