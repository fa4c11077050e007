# The README's two commands are `make demo` and `make test`; both set up .venv first, with
# the demo extra (trustme: the demo's and the tests' throw-away certificates) and the tests'.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean generated

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[demo,test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/nbwss demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

# The man page and the shell completions, written from the parser (tests check they are current).
generated: $(STAMP)
	$(PY) -m nbwss.generate man > man/nbwss.1
	$(PY) -m nbwss.generate bash > completion/nbwss.bash
	$(PY) -m nbwss.generate zsh > completion/_nbwss

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
