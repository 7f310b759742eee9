# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The KServe SDK, for the integration tests' client, in a venv of its own: it pins protobuf 5,
# tritonclient's gRPC client protobuf 6.
KSERVE_VENV := .venv-kserve
KSERVE_STAMP := $(KSERVE_VENV)/.installed

.PHONY: setup demo test lint typecheck check bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

$(KSERVE_STAMP):
	$(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/pip install -q --upgrade pip
	$(KSERVE_VENV)/bin/pip install -q 'kserve>=0.14' numpy
	touch $(KSERVE_STAMP)

setup: $(STAMP) $(KSERVE_STAMP)

demo: $(STAMP)
	$(BIN)/kairos-demo --config config.json

test: $(STAMP) $(KSERVE_STAMP) lint typecheck
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(KSERVE_VENV) .kairos .pytest_cache .mypy_cache .ruff_cache
