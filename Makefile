# Quick start: `make demo` (offline demo on generated data) and `make test`.
# Both create or reuse .venv and install the project into it.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint install clean

$(PY):
	python3 -m venv $(VENV)

# Reinstall only when pyproject.toml changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) train.py experiment=demo

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check imgcap hydra_plugins tests benchmarks train.py evaluate.py caption.py
	$(PY) -m ruff format --check imgcap hydra_plugins tests benchmarks train.py evaluate.py caption.py

clean:
	rm -rf outputs wandb .pytest_cache
