# Quick start: `make demo` and `make test` both set everything up on a fresh machine.
# make test = make lint (ruff, mypy) + make docs (mkdocs --strict) + the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo bench lint docs clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[export,demo,serve,bench,ray,dev]'
	touch $(STAMP)

# Two workers (pytest-xdist); each test file stays on one worker, so its module fixtures are built once.
test: lint docs
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

demo: install
	$(BIN)/fashionrec demo

bench: install
	$(BIN)/python -m benchmarks

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

# The documentation site (docs/, mkdocs.yml) into site/; --strict: a broken link fails the build.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache site *.egg-info
