# The two commands (README): `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench browser codex-cli clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/accountpool demo

# Debian's Chromium for the browser tests (Playwright drives it; it never downloads a browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; }

# Codex CLI for the real-client tests, from the npm registry, into tests/.codex-cli (ignored by git).
codex-cli:
	@test -x tests/.codex-cli/node_modules/.bin/codex || { command -v npm >/dev/null 2>&1 && \
		npm install --silent --prefix tests/.codex-cli @openai/codex@0 >/dev/null 2>&1 || \
		echo "codex-cli: npm install failed; the Codex CLI test will be skipped"; }

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) browser codex-cli lint
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) data test-artifacts benchmarks/out tests/.codex-cli
