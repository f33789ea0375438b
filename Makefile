# mawstron: `make test` and `make demo` work on a fresh machine; both build .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first and on its own, so that no dependency ever makes pip resolve another build.
# On a CPU machine 2.13.0 is the CPU wheel; on a GPU cluster pass the build you want, e.g. TORCH=torch==2.13.0.
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=
STAMP := $(VENV)/.installed-stamp

.PHONY: install test demo clean

$(STAMP): setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/mawstron models

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
