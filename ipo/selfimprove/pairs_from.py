"""Train again on a finished run's pairs (DPO/ours.py, DPO/self_reward.py and DPO/reward_model.py --pairs_from
RUN): another beta, loss or learning rate without sampling and judging again (hours at 7B).

The new run is a run folder of its own. Its round takes the source round's ``pairs.jsonl`` (copied, so the run
is whole on its own) and the source round's judge summary, skips Sample, Judge and Pair, then trains, merges
and judges after with the new training settings. What decides the pairs is the source's, read from the source
run's config.json: model, prompts, prompt format, held-out split (--test_fraction, --seed), sampling and judge
settings; the command's own values of these are replaced (ipo/cli/selfimprove.py). The held-out split is
respected: only ``train`` pairs are trained on, the ``test`` pairs are the evaluation set, and --judge_after
samples and judges the held-out prompts only (the before scores are the source's judge on the same prompts,
same sampling streams), so metrics.json's "held_out" compares the judge before and after on prompts that no
training saw. The source pairs file and config.json are inputs of the new run: a resume after either changed
is refused with one line (ipo.runs.RunDir).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ipo import IpoError
from ipo.data import file_fingerprint
from ipo.runs import atomic_write_text, read_jsonl

logger = logging.getLogger("ipo")

# The source run's arguments that decide its pairs, its held-out split and its judge; --pairs_from takes them
# from the source's config.json (the training, output and loop flags stay the command's).
SOURCE_ARGS = (
    "model_name",
    "dataset_name",
    "split_name",
    "max_prompts",
    "prompt_format",
    "test_fraction",
    "seed",
    "num_return_sequences",
    "temperature",
    "max_new_tokens",
    "top_k",
    "top_p",
    "quantized",
    "trust_remote_code",
    "judge_max_length",
    "max_new_tokens_judge",
    "prefix_sharing",
    "reward_model",  # DPO/reward_model.py's judge: the held-out after-scores need the source's reward model
    "input_format",
    "reward_dtype",
    "reward_quantized",
)


@dataclass
class PairsSource:
    """A finished round of another run whose pairs a new run trains on."""

    run: Path  # the source run folder
    round_dir: Path  # its round_<k> folder
    round: int
    config: dict  # the source run's config.json
    metrics: dict  # the source round's metrics.json

    @property
    def pairs(self) -> Path:
        return self.round_dir / "pairs.jsonl"

    @property
    def config_path(self) -> Path:
        return self.run / "config.json"

    @property
    def args(self) -> dict:
        return self.config.get("args") or {}

    @property
    def policy(self) -> str:
        """The model that sampled and judged the round: the new run's policy and DPO reference."""
        return self.metrics.get("policy") or self.args["model_name"]

    @property
    def judge(self) -> str | None:
        """The source's judge name (config.json "resolved" holds the name, or once judged its settings)."""
        judge = (self.config.get("resolved") or {}).get("judge")
        return judge.get("name") if isinstance(judge, dict) else judge

    def describe(self) -> dict:
        """What metrics.json and results.md say about the source."""
        return {
            "run": str(self.run),
            "round": self.round,
            "pairs": str(self.pairs),
            "sha256": file_fingerprint(self.pairs)["sha256"],
            "n_train": self.metrics["pairs"]["n_train"],
            "n_test": self.metrics["pairs"]["n_test"],
        }


def find_source(path: str) -> PairsSource:
    """The run folder RUN (its round_1) or a round folder RUN/round_k with finished pairs; one line otherwise."""
    given = Path(path).expanduser()
    if (given / "config.json").is_file():
        run, round_dir = given, given / "round_1"
    elif given.name.startswith("round_") and (given.parent / "config.json").is_file():
        run, round_dir = given.parent, given
    else:
        raise IpoError(
            f"--pairs_from {path}: not a self-improvement run folder (no config.json in it or above it); give the "
            "<output_dir>/<run_name> of a DPO/ours.py, DPO/self_reward.py or DPO/reward_model.py run, or its "
            "round_<k> folder"
        )
    try:
        config = json.loads((run / "config.json").read_text(encoding="utf-8"))
        metrics = json.loads((round_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        metrics = None
    index = round_dir.name.removeprefix("round_")
    if not isinstance(metrics, dict) or "pairs" not in metrics or not (round_dir / "pairs.jsonl").is_file():
        raise IpoError(
            f"--pairs_from {path}: {round_dir} has no finished pairs (pairs.jsonl and its metrics.json); "
            "finish the source run up to its pairs first (--stop_after pairs)"
        )
    if not index.isdigit():
        raise IpoError(f"--pairs_from {path}: {round_dir.name} is not a round folder (round_<k>)")
    return PairsSource(run.resolve(), round_dir.resolve(), int(index), config, metrics)


def check_source_judge(source: PairsSource, judge_name: str) -> None:
    """The new run judges after training with its own judge: it must be the source's, or before and after differ
    by the judge as well."""
    if source.judge and source.judge != judge_name:
        raise IpoError(
            f"--pairs_from {source.run}: its pairs were judged by {source.judge}, this script's judge is "
            f"{judge_name}; train on them with the script that made them"
        )


def take_source_pairs(source: PairsSource, round_dir: Path, test_ids: set[str], main: bool = True) -> list[dict]:
    """The source round's pairs, copied into ``round_dir/pairs.jsonl`` (the main process writes), after checking
    that their split is the held-out split the new run computes from the same prompts, fraction and seed."""
    pairs = read_jsonl(source.pairs)
    wrong = [p["id"] for p in pairs if p.get("split") != ("test" if str(p["id"]) in test_ids else "train")]
    if wrong:
        raise IpoError(
            f"--pairs_from {source.run}: the split of {len(wrong)} pairs (e.g. id {wrong[0]}) is not the held-out "
            "split of its prompts now: its prompt file, --max_prompts, --test_fraction or --seed changed"
        )
    target = Path(round_dir) / "pairs.jsonl"
    if main and (not target.is_file() or target.read_bytes() != source.pairs.read_bytes()):
        atomic_write_text(target, source.pairs.read_text(encoding="utf-8"))
    n_train = sum(p["split"] == "train" for p in pairs)
    logger.info(
        "pairs from %s: %d training pairs, %d held-out pairs (evaluation only)",
        source.pairs,
        n_train,
        len(pairs) - n_train,
    )
    return pairs
