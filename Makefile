# The two commands a newcomer needs: `make up` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test lint bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "needs $(PYTHON)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## start the whole local stack in the foreground (Ctrl-C stops it)
up: $(STAMP)
	$(BIN)/infergw up

## run the whole test suite
test: $(STAMP)
	$(BIN)/python -m pytest

## static checks
lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy .
	$(BIN)/cfn-lint template.yaml

clean:
	rm -rf $(VENV) .infergw .pytest_cache .mypy_cache .ruff_cache build *.egg-info
