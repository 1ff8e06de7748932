# The two commands a newcomer needs: `make up` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

SAM_VENV := .venv-sam
SAM := $(SAM_VENV)/bin/sam

.PHONY: up test lint bench soak clean sam-validate sam-build

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

## every benchmark (results in bench/results/, tables printed)
bench: $(STAMP)
	# Cold starts first: fresh processes timed on a machine no other benchmark just loaded.
	$(BIN)/python bench/cold_start.py
	$(BIN)/python bench/decision.py
	$(BIN)/python bench/limiter.py
	$(BIN)/python bench/worker.py
	$(BIN)/python bench/async_latency.py --quick
	$(BIN)/python bench/model_server.py --quick
	$(BIN)/python bench/gateway.py --rounds 3 --seconds 3

## ten minutes of mixed traffic: rate held, 5xx, memory growth, jobs lost
soak: $(STAMP)
	$(BIN)/python bench/soak.py --minutes 10

## static checks
lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy .
	$(BIN)/cfn-lint template.yaml

## the SAM CLI in its own environment (its pins are not ours)
$(SAM):
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SAM_VENV)/bin/python -m pip install --quiet aws-sam-cli==1.170.0

sam-validate: $(SAM)
	SAM_CLI_TELEMETRY=0 $(SAM) validate --lint --region us-east-1

sam-build: $(SAM)
	SAM_CLI_TELEMETRY=0 $(SAM) build --build-in-source --region us-east-1 --build-dir .aws-sam/build

## called by `sam build` (BuildMethod: makefile) for each function: our packages plus the
## Lambda requirements, built for the functions' runtime and architecture
build-ApiFunction build-AuthorizerFunction build-SweeperFunction:
	$(PYTHON) -m pip install --quiet --no-compile --target "$(ARTIFACTS_DIR)" \
		--platform manylinux2014_aarch64 --implementation cp --python-version 3.11 \
		--only-binary=:all: -r lambda-requirements.txt
	cp -r gateway functions "$(ARTIFACTS_DIR)/"
	# Only the AWS services the functions call: ~60 ms less of every cold start.
	$(PYTHON) infergw/lambda_package.py "$(ARTIFACTS_DIR)"
	find "$(ARTIFACTS_DIR)" -name __pycache__ -prune -exec rm -rf {} +
	# Bytecode in the package: the function's code directory is read-only, so without it
	# every cold start compiles every module it imports (~450 ms more for the API). Made by
	# CPython 3.11, the functions' runtime; unchecked: the zip's file times mean nothing.
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11) and "needs Python 3.11")'
	$(PYTHON) -m compileall -q -j 0 --invalidation-mode unchecked-hash "$(ARTIFACTS_DIR)"

clean:
	rm -rf $(VENV) $(SAM_VENV) .aws-sam .infergw .pytest_cache .mypy_cache .ruff_cache build *.egg-info
