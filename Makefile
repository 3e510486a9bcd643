# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ocrbatch demo

test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check ocrbatch tests bench
	$(BIN)/ruff format --check ocrbatch tests bench
	$(BIN)/lint-imports  # the layers of README "Layout", as contracts in pyproject.toml
	$(BIN)/hadolint Dockerfile
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml

typecheck: $(STAMP)
	$(BIN)/mypy

# pytest exits 5 when it collects no tests, which fails this target as it should. Two workers:
# the suite mostly waits on loopback servers and subprocesses.
unit: $(STAMP)
	$(BIN)/pytest -n 2

# Not part of `make test`: timings, a few minutes each (see README, Performance and reliability).
bench: $(STAMP)
	$(BIN)/python -m bench.run

# `make soak ARGS="--profile ncp"`: 2 replicas on S3 as NAVER's, with Redis (see README, Soak).
soak: $(STAMP)
	$(BIN)/python -m bench.soak $(ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
