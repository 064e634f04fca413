# lending-grpc developer commands. `make run` and `make test` set themselves up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# One virtualenv, two stamps: `make run` installs what the server needs, `make test` (and the other
# developer targets) add the development tools on top.
RUN_STAMP := $(VENV)/.run-installed
DEV_STAMP := $(VENV)/.dev-installed
# pip's own progress, not --quiet: a progress bar on a terminal, plain lines in logs and CI.
PIP_INSTALL = $(BIN)/python -m pip install --disable-pip-version-check \
	--progress-bar "$$(if [ -t 1 ]; then echo on; else echo off; fi)"
BUF_VERSION := 1.75.0
PROTOS := $(wildcard protos/lending/v1/*.proto)

.PHONY: help setup run demo test proto proto-check lint buf-lint buf-breaking buf-baseline bench bench-scale clean \
	prometheus-rule docs docs-serve docs-check docs-reference

help:
	@echo "make run          serve on 127.0.0.1:50051 (SQLite under ./var/)"
	@echo "make demo         walk a loan from registration to payoff with the command line client"
	@echo "make test         run the whole test suite"
	@echo "make proto        regenerate generated/ from protos/"
	@echo "make proto-check  fail when generated/ is stale"
	@echo "make docs         regenerate the API reference, then build the docs site into site/ (strict)"
	@echo "make docs-serve   serve the docs site on http://127.0.0.1:8000, rebuilt as you edit"
	@echo "make docs-check   fail when docs/reference/api.md or methods.md is stale"
	@echo "make docs-reference  regenerate docs/reference/api.md and methods.md from protos/"
	@echo "make lint         ruff + buf lint + the CI workflow against GitHub's schema"
	@echo "make buf-breaking fail when protos/ breaks clients of the baseline in api-baseline/"
	@echo "make buf-baseline record the current protos as the new baseline (a deliberate API release)"
	@echo "make prometheus-rule  copy deploy/prometheus/*.rules.yml into the Kubernetes PrometheusRule"
	@echo "make bench        throughput and latency against the echo and raw-sqlite3 ceilings"
	@echo "make bench-scale  1,000 vs 1,000,000 loans: per-call cost, portfolio pages, bytes per loan"
	@echo "make clean        remove the virtualenv, caches, ./var and site/"

setup: $(DEV_STAMP)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	@echo "installing dependencies into $(VENV), first run only"
	@$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	@if [ -e $@ ]; then echo "pyproject.toml changed: updating the dependencies in $(VENV)"; fi
	@$(PIP_INSTALL) -e .
	@touch $@

# Everything `make run` needs is part of it, so its stamp is renewed too.
$(DEV_STAMP): pyproject.toml | $(BIN)/python
	@if [ -e $@ ]; then echo "pyproject.toml changed: updating the development tools in $(VENV)"; \
	else echo "installing the development tools into $(VENV) (pytest, ruff, ...), first time only"; fi
	@$(PIP_INSTALL) -e '.[dev]'
	@touch $@ $(RUN_STAMP)

# A simple command, so make runs it without a shell in between: a Ctrl-C (SIGINT to the terminal's
# process group) or a SIGTERM to make's process group reaches the server itself. make also passes a
# SIGTERM it receives on to the server; the server treats a repeated SIGTERM as the same request.
run: $(RUN_STAMP)
	$(BIN)/lending-grpc serve

demo: $(RUN_STAMP)
	bash examples/demo.sh

test: $(DEV_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

proto: $(DEV_STAMP)
	rm -rf generated/lending
	mkdir -p generated
	$(BIN)/python -m grpc_tools.protoc -Iprotos \
		--python_out=generated --pyi_out=generated --grpc_python_out=generated $(PROTOS)
	touch generated/lending/__init__.py generated/lending/v1/__init__.py

proto-check: proto
	@git diff --exit-code --stat -- generated || \
		(echo "generated/ is stale: run 'make proto' and commit the result" >&2; exit 1)
	@test -z "$$(git status --porcelain -- generated)" || \
		(echo "generated/ has untracked files: run 'make proto' and commit the result" >&2; exit 1)

# The docs site (mkdocs.yml, docs/). The API reference is generated from the comments in
# protos/ by tools/api_reference.py and committed; `docs-check` is its drift check.
# NO_MKDOCS_2_WARNING: Material prints a banner about MkDocs 2 on every run otherwise.
MKDOCS := NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs

docs-reference: $(DEV_STAMP)
	$(BIN)/python -m tools.api_reference

docs: docs-reference
	$(MKDOCS) build --strict --site-dir site

docs-serve: docs-reference
	$(MKDOCS) serve --dev-addr 127.0.0.1:8000

docs-check: $(DEV_STAMP)
	$(BIN)/python -m tools.api_reference --check

buf-lint:
	npx --yes @bufbuild/buf@$(BUF_VERSION) lint

# Compared against a committed image, not a git ref: CI's clean clone always has it,
# and additions (new RPCs, fields) pass while removals and renames fail.
BUF_BASELINE := api-baseline/lending-v1.json

buf-breaking:
	npx --yes @bufbuild/buf@$(BUF_VERSION) breaking --against $(BUF_BASELINE)

# JSON, pretty-printed, so a review sees what the new baseline contains.
buf-baseline: $(RUN_STAMP)
	npx --yes @bufbuild/buf@$(BUF_VERSION) build --exclude-source-info -o $(BUF_BASELINE)
	$(BIN)/python -m json.tool --indent 1 $(BUF_BASELINE) $(BUF_BASELINE).tmp
	mv $(BUF_BASELINE).tmp $(BUF_BASELINE)

lint: $(DEV_STAMP) buf-lint
	$(BIN)/ruff check lending_grpc tests tools bench
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/ci.yml

# The alerting rules are written once, in deploy/prometheus; the Operator's copy is generated.
prometheus-rule: $(DEV_STAMP)
	$(BIN)/python deploy/prometheus/render_prometheus_rule.py

bench: $(DEV_STAMP)
	@command -v h2load >/dev/null || { echo "make bench needs h2load: apt-get install nghttp2-client" >&2; exit 1; }
	$(BIN)/python bench/run.py

bench-scale: $(DEV_STAMP)
	$(BIN)/python bench/scale.py

clean:
	rm -rf $(VENV) var site .pytest_cache .hypothesis build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
