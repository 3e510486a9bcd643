# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench soak clean vendor-htmx

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

# The console's htmx, from the npm registry at this version and digest (its licence beside it);
# the copy lives in the package, so nothing is fetched at build or run time.
HTMX_VERSION := 2.0.11
HTMX_SHA256 := d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717
vendor-htmx:
	tmp=$$(mktemp -d) && cd $$tmp && npm pack --silent htmx.org@$(HTMX_VERSION) >/dev/null \
		&& tar xzf htmx.org-$(HTMX_VERSION).tgz \
		&& echo "$(HTMX_SHA256)  package/dist/htmx.min.js" | sha256sum --check --quiet - \
		&& cp package/dist/htmx.min.js $(CURDIR)/ocrbatch/console/static/htmx.min.js \
		&& cp package/LICENSE $(CURDIR)/ocrbatch/console/static/htmx.LICENSE && rm -rf $$tmp
