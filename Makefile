# editscope front door: `make demo` and `make test` each set up .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.editscope-installed
TORCH  := torch==2.13.0

BROWSER_STAMP := $(VENV)/.editscope-browser

.PHONY: demo test test-unit setup browser clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/pins.txt requirements/bundled.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -c requirements/pins.txt -e '.[dev]' $(TORCH)
	$(BIN)/python -m pip install --quiet --no-deps -r requirements/bundled.txt
	touch $(STAMP)

# Few-shot GLUE/MMLU task files for the downstream columns of the demo, where a copy exists.
DOWNSTREAM_DIR ?= $(firstword $(wildcard ../shared/data/knowledge_editing_glue_eval/jsonl))

demo: $(STAMP)
	$(BIN)/editscope demo $(if $(DOWNSTREAM_DIR),--downstream-dir $(DOWNSTREAM_DIR)) $(ARGS)

# Headless Chromium for the report's browser test (Debian packages; as root or with passwordless
# sudo). Without chromedriver and apt-get the test is skipped and says why; the stamp is only
# written once chromedriver is there, so a failed install is retried on the next run.
browser: $(BROWSER_STAMP)

$(BROWSER_STAMP):
	@if command -v chromedriver >/dev/null 2>&1; then \
		touch $@; \
	elif command -v apt-get >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi; \
		if [ "$$SUDO" = none ]; then \
			echo "make: chromedriver missing and apt-get needs root; the browser test will be skipped"; \
		else \
			echo "make: installing chromium and chromium-driver (apt-get) for the report's browser test"; \
			$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null \
				&& touch $@ || echo "make: apt-get could not install chromium; the browser test will be skipped"; \
		fi; \
	else \
		echo "make: no chromedriver and no apt-get; the browser test will be skipped"; \
	fi

test: $(STAMP) $(BROWSER_STAMP)
	$(BIN)/python -m pytest -q --durations=15 $(ARGS)

test-unit: $(STAMP) $(BROWSER_STAMP)
	$(BIN)/python -m pytest -q tests/unit tests/contract $(ARGS)

clean-venv:
	rm -rf $(VENV)
