"""Supervised fine-tuning: the stage before DPO/RPO, on the chosen responses of a preference dataset or on instructions.

RPO (Yin et al. 2024) starts every preference run from a model fine-tuned on the chosen responses of its
data; a base model is SFT'd first (e.g. on databricks-dolly-15k) before it can be a preference-training
policy. Data: a preference dataset (its chosen responses), prompt/completion rows, or instruction rows
(Dolly: instruction/context/response; Alpaca: instruction/input/output), a Hub id or a local file. The
loss is TRL's SFTTrainer NLL on the completion tokens only, with a LoRA adapter (or --no_lora).

On the embedded SmolLM2-135M-Instruct and 64 Anthropic HH chosen responses (a minute on a CPU, offline once the
data file is here: harmless-base/test.jsonl.gz of the Hub dataset Anthropic/hh-rlhf, downloaded to the current folder):

    python DPO/sft.py --model_name_or_path "$(python -m ipo.assets smollm2)" \\
        --dataset test.jsonl.gz --as_messages \\
        --max_steps 3 --per_device_train_batch_size 4 --lora_r 8 --lora_alpha 16 --max_length 256 --limit 64 \\
        --merge_adapters

Then train the preference loss from the merged model (policy and reference):

    python DPO/train_preferences.py --model_name_or_path outputs/<run_name>/merged --loss_type rpo_paired ...

The run folder <output_dir>/<run_name>/ holds config.json, sft_config.json, checkpoints/, train_log.jsonl,
adapter/ (model/ with --no_lora), merged/ (--merge_adapters) and train_summary.json; re-running the same
command resumes from the newest complete checkpoint (one cut off by a kill is skipped, with a log line).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ipo import cli, hub
from ipo.cli.training import options_from_args, parse_sft_args, sft_parser
from ipo.parallel import wait_for_everyone
from ipo.runs import RunDir, atomic_write_json, read_jsonl, seed_everything
from ipo.training.distributed import is_main_process
from ipo.training.dpo import train_summary
from ipo.training.merge import merge_adapter
from ipo.training.options import TRAIN_LOG_FILE, check_options
from ipo.training.preference_data import load_sft_data
from ipo.training.sft import train_sft

logger = cli.logger

SUMMARY_FILE = "train_summary.json"
DESCRIPTION = __doc__.split("\n\n")[0]


def build_parser(default_model: str | None = None) -> argparse.ArgumentParser:
    """The flags (ipo/cli/training.py; SFT defaults where they differ from the DPO step's: cli.training.SFT_DEFAULTS)."""
    return sft_parser(default_model, DESCRIPTION)


def parse_args(argv=None) -> argparse.Namespace:
    return parse_sft_args(argv, DESCRIPTION)


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.log_level)
    seed_everything(args.seed)
    options = options_from_args(args)
    check_options(options)

    data = load_sft_data(
        args.dataset,
        args.dataset_split,
        args.dataset_format,
        messages=args.as_messages,
        preference_format=args.preference_format,
    )
    records = data.records[: args.limit] if args.limit else data.records
    logger.info("%s%s", data.summary(), f"; using the first {len(records)}" if args.limit else "")
    dataset_name = Path(args.dataset).name.split(".")[0] if Path(args.dataset).suffix else args.dataset.split("/")[-1]
    run = RunDir(
        args.output_dir,
        args.run_name or f"sft-{cli.model_short_name(args.model_name)}-{dataset_name}",
        overwrite=args.overwrite,
        inputs={args.dataset: "dataset", args.model_name: "model"},
    )
    run.check(cli.public_args(args), fingerprint_extra={"limit": args.limit})
    repo = hub.model_repo(args.hub_repo_id or run.path.name) if args.push_to_hub else None  # fails before training
    if is_main_process():
        run.start(
            cli.public_args(args),
            resolved={"n_train": len(records), "format": data.format},
            fingerprint_extra={"limit": args.limit},
        )
    wait_for_everyone()

    options.run_name = run.path.name
    result = train_sft(
        args.model_name,
        records,
        options,
        run.path,
        device=args.device,
        extra_config={"dataset": args.dataset, "format": data.format},
    )

    if not is_main_process():
        return 0
    log_history = read_jsonl(run.file(TRAIN_LOG_FILE)) if run.file(TRAIN_LOG_FILE).is_file() else []
    summary = {
        "status": "done",
        "stage": "sft",
        **train_summary(log_history, result.metrics),
        "n_train": len(records),
        "model": str(result.adapter_dir),
    }
    final_model = result.adapter_dir
    if args.merge_adapters and options.use_lora:
        merged = run.file("merged")
        if not (merged / "config.json").is_file():
            merge_adapter(result.adapter_dir, merged)
        final_model = summary["merged"] = str(merged)
    atomic_write_json(run.file(SUMMARY_FILE), summary)
    print(json.dumps({"final_loss": summary["final_loss"], "steps": summary["steps"], "model": str(final_model)}))
    if repo:
        hub.push_model(final_model, repo, what="SFT model")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
