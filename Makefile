# One entry point for people and CI. `make run` and `make test` install what they need first.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= out
STAGE ?= dev

.PHONY: install run test test-fast lint bench clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

install: $(BIN)/.installed

## The whole event-driven pipeline on the bundled sample data (embedded AWS emulator).
run: install
	rm -rf $(OUT)
	$(BIN)/kpipe run sample-data/batch-1 sample-data/batch-2 --out $(OUT)

## The whole test suite (unit, functional on moto, end to end).
test: install
	$(BIN)/ruff check .
	$(BIN)/pytest -n 2 --dist worksteal -q

test-fast: install
	$(BIN)/pytest -q tests/unit

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .hypothesis

# make deploy STAGE=dev / make destroy STAGE=dev (see infra/README.md)
include infra/deploy.mk
