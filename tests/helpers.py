"""Test helpers. Tiny offline models and data: a locally trained byte-level BPE tokenizer and a random
2-layer Llama. A Llama config (not Qwen2) keeps AutoTokenizer from swapping the saved tokenizer for
another class on reload (transformers 5 loads a qwen2 folder's tokenizer as Qwen2Tokenizer, which rebuilds the
pre-tokenizer instead of reading the saved tokenizer.json).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "Yes",
    "No",
    " Yes",
    " No",
    "yes",
    "no",
    "Answer Yes/No.",
    "Yes No Yes No yes no",
    " Yes No No Yes",
    "Answer with just Yes/No",
    "Below is a question and its response. Assess if the response is helpful and correct.",
    "User : What is the capital of France?\n    Response : The capital of France is Paris.\n    ",
    "Given the following:\n    User : question\n    Response : answer\n    Is the response correct?",
    "Question:\nResponse:\n",
    "def add(a, b):\n    return a + b\n",
    "The answer is 42. Score: 5",
    "Review the user's question and the corresponding response using the additive 5-point scoring system.",
    "Hello, how are you today? I am fine, thank you. The weather is nice and the sky is blue.",
]


def build_tokenizer(chat_template: bool = True, with_yes_no: bool = True, vocab_size: int = 512, eos: bool = True):
    """A ByteLevel BPE tokenizer trained on a small corpus; Yes/No are single tokens if ``with_yes_no``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    # Without Yes/No, every "yes" and "no" in the corpus is broken up, so no merge can form them.
    corpus = (
        CORPUS
        if with_yes_no
        else [re.sub(r"(?i)(n)(o)", r"\1 \2", re.sub(r"(?i)(y)(es)", r"\1 \2", c)) for c in CORPUS]
    )
    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus * 20, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>" if eos else None,
        pad_token="<|endoftext|>",
        padding_side="left",
        model_max_length=4096,
    )
    if chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_model(tokenizer, seed: int = 0, hidden: int = 64, layers: int = 2):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return model.eval()


def save_tiny_model(
    path: Path, chat_template: bool = True, with_yes_no: bool = True, seed: int = 0, eos: bool = True
) -> Path:
    """``eos=False``: neither the tokenizer nor the configs name an end-of-sequence token."""
    tokenizer = build_tokenizer(chat_template=chat_template, with_yes_no=with_yes_no, eos=eos)
    model = build_model(tokenizer, seed=seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_tiny_reward_model(path: Path, num_labels: int = 1, chat_template: bool = True, seed: int = 1) -> Path:
    """A random 2-layer LlamaForSequenceClassification (the reward-model baseline's kind of model)."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tokenizer = build_tokenizer(chat_template=chat_template)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        num_labels=num_labels,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model = LlamaForSequenceClassification(config).eval()
    with torch.no_grad():  # a visible spread of rewards (the default init gives logits near 0)
        model.score.weight.normal_(0.0, 1.0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# ---------------------------------------------------------------------------------------------------
# Data in the benchmarks' schemas
# ---------------------------------------------------------------------------------------------------
REWARDBENCH_SUBSETS = [
    "alpacaeval-easy",
    "mt-bench-hard",
    "llmbar-natural",
    "refusals-dangerous",
    "xstest-should-respond",
    "math-prm",
    "hep-python",
    "donotanswer",
]


def rewardbench_rows(n: int = 16, subsets=REWARDBENCH_SUBSETS, long_responses: bool = False) -> list[dict]:
    rows = []
    for i in range(n):
        filler = " and the sky is blue" * (40 if long_responses and i % 3 == 0 else i % 4)
        rows.append(
            {
                "id": 1000 + i,
                "subset": subsets[i % len(subsets)],
                "prompt": f"What is {i} plus {i}?" + " Please explain." * (i % 3),
                "chosen": f"The answer is {2 * i}{filler}.",
                "rejected": f"The answer is {2 * i + 1}. Hello{filler}.",
                "chosen_model": "a",
                "rejected_model": "b",
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# Defects of a RewardBench input file that every script must report in one line.
BAD_REWARDBENCH_FILES = {
    "missing_column": "has no column 'chosen'",
    "not_json": "not valid JSON",
    "missing_file": "no such file",
    "empty": "empty",
}


def bad_rewardbench_file(case: str, tmp_path: Path) -> Path:
    """A RewardBench input file with the defect ``case`` (a key of BAD_REWARDBENCH_FILES)."""
    if case == "missing_column":
        return write_jsonl(
            tmp_path / "bad.jsonl", [{k: v for k, v in r.items() if k != "chosen"} for r in rewardbench_rows(3)]
        )
    if case == "not_json":
        path = tmp_path / "bad.json"
        path.write_text("this is not json")
        return path
    if case == "missing_file":
        return tmp_path / "nope.jsonl"
    if case == "empty":
        return write_jsonl(tmp_path / "empty.jsonl", [])
    raise ValueError(case)


# ---------------------------------------------------------------------------------------------------
# Running scripts
# ---------------------------------------------------------------------------------------------------
def load_script(relative_path: str):
    """Import a script (e.g. 'Preference_Comparison/Reward_Bench/ours.py') as a module."""
    path = REPO / relative_path
    name = "script_" + relative_path.replace("/", "_").replace(".py", "")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(relative_path: str, argv: list[str]) -> int:
    """Run a script's main(argv) in-process through ipo.cli.run (one-line errors, exit codes)."""
    from ipo import cli

    return cli.run(load_script(relative_path).main, argv)


def run_subprocess(relative_path: str, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a script as its own process, with this checkout's `ipo` first on the path."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, str(REPO / relative_path), *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=kwargs.pop("cwd", REPO),
        **kwargs,
    )


def rmbench_rows(n: int = 4, domain: str | None = None, first_id: int = 0, long_prompt: bool = False) -> list[dict]:
    """Rows in the official RM-Bench format: 3 chosen and 3 rejected responses, [concise, plain, markdown].

    ``domain`` adds the `domain` field of total_dataset.json; ``long_prompt`` makes the shared prompt long
    next to the responses (so the judge's shared-prefix path pays off).
    """
    rows = []
    for i in range(n):
        a = first_id + i
        detail = " It follows from adding the two numbers." * (1 + i % 3)
        row = {
            "id": a,
            "subset": "alpacaeval",
            "prompt": f"What is {a} plus {a}?" + " Please explain the steps carefully." * (8 if long_prompt else i % 3),
            "chosen": [f"{2 * a}.", f"The answer is {2 * a}.{detail}", f"**Answer:** {2 * a}\n\n-{detail}"],
            "rejected": [
                f"{2 * a + 1}.",
                f"The answer is {2 * a + 1}.{detail}",
                f"**Answer:** {2 * a + 1}\n\n-{detail}",
            ],
        }
        if domain:
            row["domain"] = domain
        rows.append(row)
    return rows


def flatten_rmbench_rows(rows: list[dict]) -> list[dict]:
    """The same rows in upstream's flattened Hub format (prompt, chosen_1..3, rejected_1..3)."""
    flat = []
    for row in rows:
        out = {"id": row["id"], "prompt": row["prompt"]}
        for side in ("chosen", "rejected"):
            out.update({f"{side}_{k + 1}": text for k, text in enumerate(row[side])})
        flat.append(out)
    return flat


def write_json(path: Path, rows) -> Path:
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------
# API judges (against tests/openai_server.py)
# ---------------------------------------------------------------------------------------------------
API_MODEL = "tiny-judge"  # the id the test server serves


def api_argv(server, data, out, *extra, run_name: str = "r") -> list[str]:
    """Arguments of an API judge script against the test server: --base_url at index 1, --model's value
    API_MODEL; ``data``: one path or a list (RM-Bench's several files)."""
    datasets = [str(d) for d in data] if isinstance(data, (list, tuple)) else [str(data)]
    return [
        "--base_url",
        server.base_url,
        "--model",
        API_MODEL,
        "--dataset",
        *datasets,
        "--output_dir",
        str(out),
        "--run_name",
        run_name,
        "--retry_base_delay",
        "0.001",
        "--log_level",
        "warning",
        *extra,
    ]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def load_run(run_dir: Path, key: str = "id") -> tuple[dict, dict]:
    """({record[key]: record} of predictions.jsonl, metrics.json) of a run folder."""
    predictions = {p[key]: p for p in read_jsonl(Path(run_dir) / "predictions.jsonl")}
    return predictions, json.loads((Path(run_dir) / "metrics.json").read_text())
