# The few commands people run. `make test` installs everything the tests need first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORPUS ?= tests/fixtures/demo

.PHONY: install test test-servers lint demo bench train eval

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || { apt-get update && apt-get install -y --no-install-recommends python3-venv && $(PYTHON) -m venv $(VENV); }

install: $(VENV)/.installed

# Reinstall only when the project's metadata changed (the install is editable).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

test-servers:
	tests/support/install-test-servers

test: install test-servers
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check guard tests benchmarks training
	$(BIN)/ruff format --check guard tests benchmarks training
	$(BIN)/mypy guard

demo: install test-servers
	$(BIN)/python tests/support/demo.py $(ARGS)

# Issue 6's benchmarks (~5 min): ARGS=--quick for a smoke run, ARGS=--write-readme to
# record the table in benchmarks/README.md, ARGS=--shared-corpus for real ham.
bench: install test-servers
	$(BIN)/python benchmarks/run.py $(ARGS)

# Issue 12: fit the learned scores (guard/policy/weights.toml) on the shared corpora and
# print fitted and held-out-writer figures. Reproducible: same corpora, same file.
CORPUS_ROOT ?= ../shared/corpus
train: install
	$(BIN)/python training/train.py --corpus-root $(CORPUS_ROOT) $(ARGS)

# Issue 12: one table, every corpus under CORPUS_ROOT x macro-F1, risky recall, ham flag
# rate, obfuscated / non-English recall, recall per category (an absent root: one line,
# status 0). ARGS=--misses lists each corpus's misses; ARGS='--format markdown' or json.
CORPUS_ROOT ?= ../shared/corpus
eval: install
	$(BIN)/inbox-guard eval --table $(CORPUS_ROOT) $(ARGS)
