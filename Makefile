# Quick start: `make demo` and `make test` both set everything up on a fresh machine.
# make test = make lint (ruff, mypy) + make docs (mkdocs --strict) + the test suite.
# The venv holds the tested versions of constraints.txt; `make constraints` tries the newest.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS := export,demo,serve,bench,ray,dev
CONSTRAINTS := constraints.txt
LATEST := .venv-latest
# pip freeze's lines as canonical names, sorted by name: one `name==version` a line
SORT_PINS := 'import sys; from packaging.utils import canonicalize_name as c; \
	pins = sorted((c(n), v) for n, v in (line.strip().split("==") for line in sys.stdin)); \
	print(*(f"{n}=={v}" for n, v in pins), sep="\n")'

.PHONY: install test demo bench lint docs clean constraints figures

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e '.[$(EXTRAS)]'
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

# The pictures of the docs from seed-0 random-weights models exported now (what the demo serves
# offline): docs/demo-desktop.png, docs/demo-phone.png, docs/demo-screenshots.json (the model's
# fingerprint and the captions shown; a test checks the fingerprint) and docs/evaluation-sample.png.
FIGURES := .cache/figures
SAMPLE := fashionrec_onnx/data/fashion-mnist-sample
figures: install
	rm -rf $(FIGURES)
	mkdir -p $(FIGURES)
	$(BIN)/fashionrec export --weights random --seed 0 --out $(FIGURES)/model-224.onnx
	$(BIN)/fashionrec export --weights random --seed 0 --size 64 --out $(FIGURES)/model-64.onnx
	$(BIN)/python -m fashionrec_demo.screenshot --model $(FIGURES)/model-224.onnx --home $(FIGURES)/demo --out docs
	$(BIN)/fashionrec index $(SAMPLE) --catalog $(FIGURES)/catalog --model $(FIGURES)/model-224.onnx \
		--metadata $(SAMPLE)/labels.csv --quiet
	$(BIN)/fashionrec index $(SAMPLE) --catalog $(FIGURES)/catalog-64px --model $(FIGURES)/model-64.onnx \
		--metadata $(SAMPLE)/labels.csv --quiet
	$(BIN)/fashionrec evaluate --catalog $(FIGURES)/catalog --label-field category \
		--compare $(FIGURES)/catalog-64px --out $(FIGURES)/report
	cp $(FIGURES)/report/summary.png docs/evaluation-sample.png

# The newest versions the ranges of pyproject.toml allow, in a venv of their own: constraints.txt
# is rewritten from them (header kept), what moved is printed, then ruff and the suite run there.
# Commit constraints.txt when green; when red, the failing test shows the drift.
constraints:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet --upgrade pip
	$(LATEST)/bin/pip install --quiet --upgrade -e '.[$(EXTRAS)]'
	{ grep '^#' $(CONSTRAINTS) | grep -v '^# Resolved '; \
	  echo "# Resolved $$(date -u +%F) with Python $$($(LATEST)/bin/python -c 'import sys; print(*sys.version_info[:2], sep=".")') on $$(uname -s) $$(uname -m)."; \
	  $(LATEST)/bin/pip freeze --exclude-editable --exclude fashionrec-onnx | $(LATEST)/bin/python -c $(SORT_PINS); \
	} > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	@echo "versions that moved (git diff constraints.txt):"
	@git diff --no-color -U0 -- $(CONSTRAINTS) | grep '^[-+][^-+#]' || echo "  none"
	$(LATEST)/bin/ruff check .
	$(LATEST)/bin/mypy
	$(LATEST)/bin/python -m pytest -q -n 2 --dist loadfile

clean:
	rm -rf $(VENV) $(LATEST) .pytest_cache .ruff_cache .mypy_cache site *.egg-info
