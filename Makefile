# The two commands of the README: `make run` (the app) and `make test` (the tests, as CI runs them).
# Both create .venv and install the project on first use; nothing has to be installed by hand.
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

.PHONY: install run test bench
install: $(STAMP)

# The default model (qwen2.5-coder-1.5b) is pulled once and verified, unless a running Ollama serves it; offline,
# the app still opens, with the small model shipped in the install (and says so).
run: $(STAMP)
	$(VENV)/bin/sleepy models setup || true
	$(VENV)/bin/sleepy

test: $(STAMP)
	$(PY) -m ruff check sleepy_tui tests bench
	$(PY) -m pytest -q -n auto

bench: $(STAMP)
	for b in bench/bench_*.py; do $(PY) $$b || exit 1; done
