# editscope front door: `make demo` and `make test` each set up .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.editscope-installed
TORCH  := torch==2.13.0

.PHONY: demo test test-unit setup clean-venv

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

test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit tests/contract $(ARGS)

clean-venv:
	rm -rf $(VENV)
