# Two entry points for a fresh machine: `make quickstart` and `make test`. Both create the
# virtual environment in .venv on first use (Python 3.11+; PyPI only).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
QUICKSTART ?= workdir/quickstart

.PHONY: setup test quickstart clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

# The reference PyTorch models (torchvision) the parity tests and benchmarks compare against, and
# the diffusers/transformers stack of the benchmark-construction stage.
$(VENV)/.reference: $(VENV)/.installed setup.py
	$(BIN)/python -m pip install -q -e '.[test,reference,generate]'
	touch $@

# The whole test suite, on both cores.
test: $(VENV)/.reference
	$(BIN)/python -m pytest -q -n 2 tests

# Builds the built-in mini-bench on first use, trains the small CNN on the standard task and on
# the cat semantic task, tests each at the 7 degradation levels, and prints the paper's Table 3.
quickstart: setup
	$(BIN)/python -m iab_jax.main --config configs/quickstart.py:standard --workdir $(QUICKSTART)/standard
	$(BIN)/python -m iab_jax.main --config configs/quickstart.py:semantic1 --workdir $(QUICKSTART)/semantic_cat
	$(BIN)/python -m iab_jax.report --runs $(QUICKSTART)/standard $(QUICKSTART)/semantic_cat --out $(QUICKSTART)/report

clean:
	rm -rf $(VENV) workdir
