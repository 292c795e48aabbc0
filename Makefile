# Shortcuts; each target is what README and .ci/run spell out.
VENV := .venv
PY := $(VENV)/bin/python

$(VENV): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(VENV)

.PHONY: test lint fmt demo ci
test: $(VENV)
	$(VENV)/bin/pytest

lint: $(VENV)
	$(VENV)/bin/ruff check worker tests bench
	$(VENV)/bin/mypy

fmt: $(VENV)
	$(VENV)/bin/ruff check --fix worker tests bench

demo: $(VENV)
	$(VENV)/bin/signfeed demo

ci:
	bash .ci/run
