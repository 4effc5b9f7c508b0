# Two commands matter (see README.md): `make demo` and `make test`.
# Each creates or refreshes the virtual environment in .venv by itself.
#
# torch is pinned to the CPU wheel by default.  CUDA users override it, e.g.
#   make test TORCH_SPEC="torch==2.13.0"  PIP_TORCH_ARGS="--index-url <your CUDA wheel index>"
# (any torch >= 2.1 works; the pin only keeps CI small and reproducible).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PIP_TORCH_ARGS ?=
MODEL  ?=
STAMP  := $(VENV)/.installed

.PHONY: venv demo test lint typecheck pytest docs bench clean

$(STAMP): pyproject.toml packages/grassbundle/pyproject.toml packages/llm-adapter/pyproject.toml requirements-dev.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" $(PIP_TORCH_ARGS)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet -e packages/grassbundle -e packages/llm-adapter
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	MODEL="$(MODEL)" $(PY) examples/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check packages tests benchmarks examples

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(PY) -m pytest

test: lint typecheck pytest

docs: $(STAMP)
	$(MAKE) -C docs html SPHINXBUILD=$(abspath $(VENV))/bin/sphinx-build

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) docs/_build docs/auto_examples
