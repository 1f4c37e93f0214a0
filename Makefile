# Two entry points for a fresh machine: `make quickstart` and `make test`. Both create the
# virtual environment in .venv on first use (Python 3.11+; PyPI only).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= workdir/minibench

.PHONY: setup test quickstart clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

# The whole test suite, on both cores.
test: setup
	$(BIN)/python -m pytest -q -n 2 tests

# Builds the built-in mini-bench, its split manifests and its training cache, and reads a batch.
quickstart: setup
	$(BIN)/python -m data_prep.minibench --out $(DATA)
	$(BIN)/python -m data_prep.split --data $(DATA) --protocol standard
	$(BIN)/python -m data_prep.split --data $(DATA) --protocol semantic --semantic cat
	$(BIN)/python -m data_prep.build_cache --data $(DATA) --spec "resize(64)|central_crop(64)"
	$(BIN)/python -m data_prep.inspect --data $(DATA) --manifest standard --split train

clean:
	rm -rf $(VENV) workdir
