# The README's two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint install services catalogs clean

demo: install catalogs fonts
	$(BIN)/hospital db upgrade
	$(BIN)/hospital demo

test: install catalogs lint services
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

services:
	bash scripts/ensure-services.sh

# The gettext catalogs the pages, mail and PDFs are translated from, compiled from each stage's .po.
catalogs: install
	$(BIN)/python -m hospital.i18n_catalogs compile

# A font that covers Chinese, embedded in the PDFs (reports, invoices, receipts).
fonts:
	bash scripts/ensure-services.sh --fonts-only || echo "warning: fonts-noto-cjk could not be installed: Chinese text in PDFs will be missing glyphs"

clean:
	rm -rf $(VENV) instance *.egg-info
