"""Preference training on any preference dataset: DPO, Identity-PO, KTO-pair and Relative Preference Optimization.

The companion methods of the paper's DPO step (README "Training losses"): a LoRA (or full) fine-tune through
TRL's DPOTrainer with the loss picked by --loss_type: sigmoid (DPO), ipo, ipo_sum, kto_pair, rpo_paired,
rpo_unpaired, rpo_diagonal, rpo_uniform, or any other TRL loss. The dataset is a Hub id or a local
json/jsonl/parquet file (gzip accepted) in TRL's prompt/chosen/rejected format (text or messages),
Anthropic HH's dialogues, LLaMA-Factory's sharegpt, unpaired prompt/completion/label rows, or a
self-improvement run's round_<k>/pairs.jsonl (DPO/ours.py, DPO/self_reward.py): then only its train split is
trained on, its held-out (test) split is the evaluation data unless --eval_dataset says otherwise, and the
rows are built in the run's --prompt_format, read from the run's config.json (ipo/training/run_pairs.py):

    python DPO/ours.py --model_id "$(python -m ipo.assets smollm2)" --dataset_name data/demo_prompts.jsonl \\
        --prompt_format chat --max_new_tokens 32 --test_fraction 0.25 --stop_after pairs --run_name demo-pairs
    python DPO/train_preferences.py --model_name_or_path "$(python -m ipo.assets smollm2)" \\
        --dataset outputs/demo-pairs/round_1/pairs.jsonl --beta 0.3 --max_steps 2 --warmup_ratio 0 \\
        --per_device_train_batch_size 2 --lora_r 8 --lora_alpha 16

RPO on the embedded SmolLM2-135M-Instruct and 64 Anthropic HH pairs (a minute on a CPU, offline once the data
file is here: harmless-base/test.jsonl.gz of the Hub dataset Anthropic/hh-rlhf, downloaded to the current folder):

    python DPO/train_preferences.py --model_name_or_path "$(python -m ipo.assets smollm2)" \\
        --dataset test.jsonl.gz --loss_type rpo_paired \\
        --max_steps 3 --per_device_train_batch_size 4 --lora_r 8 --lora_alpha 16 --max_length 256 --limit 64

A recipe gives the settings, flags override it (recipes/README.md):

    python DPO/train_preferences.py --config recipes/rpo/rpo_paired_hh.yaml --model_name_or_path <sft model>

The run folder <output_dir>/<run_name>/ holds config.json, dpo_config.json, checkpoints/, train_log.jsonl,
adapter/ (the LoRA adapter with its tokenizer; the whole model with --no_lora), merged/ (--merge_adapters)
and train_summary.json (final loss, reward margin and accuracy, steps, skipped RPO batches). Re-running
the same command resumes from the newest complete checkpoint (one cut off by a kill is skipped, with a log line),
and mean_loss covers the whole run; a finished run is not retrained. One run per folder at a time (a lock).
Several GPUs:
`accelerate launch --config_file recipes/accelerate_configs/ddp.yaml DPO/train_preferences.py ...`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ipo import IpoError, cli, hub
from ipo.cli.training import options_from_args, parse_preference_args, preference_parser
from ipo.parallel import wait_for_everyone
from ipo.runs import RunDir, atomic_write_json, read_jsonl, seed_everything
from ipo.training.distributed import is_main_process
from ipo.training.dpo import train_dpo, train_summary
from ipo.training.merge import merge_adapter
from ipo.training.options import ADAPTER_DIR, TRAIN_LOG_FILE, check_options
from ipo.training.preference_data import check_data_for_loss, load_preference_data, to_unpaired

logger = cli.logger

SUMMARY_FILE = "train_summary.json"
DESCRIPTION = __doc__.split("\n\n")[0]


def build_parser(default_model: str | None = None) -> argparse.ArgumentParser:
    """The flags (ipo/cli/training.py, shared with DPO/sweep.py, which checks every point's flags with them)."""
    return preference_parser(default_model, DESCRIPTION)


def parse_args(argv=None) -> argparse.Namespace:
    return parse_preference_args(argv, DESCRIPTION)


def default_run_name(args) -> str:
    dataset = Path(args.dataset).name.split(".")[0] if Path(args.dataset).suffix else args.dataset.split("/")[-1]
    if Path(args.dataset).name == "pairs.jsonl":  # a self-improvement run's round: <run>-<round_k>
        dataset = f"{Path(args.dataset).resolve().parent.parent.name}-{Path(args.dataset).resolve().parent.name}"
    return f"{args.loss_type}-{cli.model_short_name(args.model_name)}-{dataset}-beta{args.beta:g}"


def load_data(source: str, split: str, args, what: str):
    data = load_preference_data(source, split, args.dataset_format, hh_messages=args.as_messages)
    if args.limit:
        data.records = data.records[: args.limit]
    if args.unpaired:
        data = to_unpaired(data)
    check_data_for_loss(data, args.loss_type)
    logger.info("%s: %s", what, data.summary())
    return data


def held_out_pairs(args):
    """The held-out (test) split of a run's pairs.jsonl as the evaluation data, or None when it has none."""
    try:
        data = load_data(args.dataset, "test", args, "evaluation data (the run's held-out pairs)")
    except IpoError as err:
        logger.info("no evaluation: %s", err)
        return None
    return data


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.log_level)
    seed_everything(args.seed)
    options = options_from_args(args)
    check_options(options)

    ###############
    # Data and run folder (every check before anything is written or loaded)
    ###############
    train = load_data(args.dataset, args.dataset_split, args, "training data")
    if train.run_pairs and train.run_pairs["split"] != "train":
        raise IpoError(
            f"--dataset_split {args.dataset_split}: {args.dataset} is a self-improvement run's pairs, and its held-out "
            "(test) pairs are never trained on; they are the evaluation data. Drop --dataset_split"
        )
    evaluation = load_data(args.eval_dataset, args.eval_split, args, "evaluation data") if args.eval_dataset else None
    inputs = {args.dataset: "dataset", args.model_name: "model"}
    if args.eval_dataset:
        inputs[args.eval_dataset] = "dataset"
    if train.run_pairs:  # a self-improvement run's pairs.jsonl: its train split only; the held-out pairs evaluate
        inputs[train.run_pairs["config"]] = "dataset"  # the run's config.json names the prompt format
        if evaluation is None:
            evaluation = held_out_pairs(args)
    run = RunDir(args.output_dir, args.run_name or default_run_name(args), overwrite=args.overwrite, inputs=inputs)
    run.check(cli.public_args(args), fingerprint_extra={"limit": args.limit})
    repo = hub.model_repo(args.hub_repo_id or run.path.name) if args.push_to_hub else None  # fails before training
    resolved = {
        "n_train": len(train.records),
        "train_format": train.format,
        "dropped": dict(train.dropped),
        "n_eval": len(evaluation.records) if evaluation else 0,
        **({"run_pairs": train.run_pairs} if train.run_pairs else {}),
    }
    if is_main_process():
        run.start(cli.public_args(args), resolved=resolved, fingerprint_extra={"limit": args.limit})
    wait_for_everyone()

    ###############
    # Training (resumes from the last checkpoint; a finished run is not retrained)
    ###############
    options.run_name = run.path.name
    result = train_dpo(
        args.model_name,
        train.records,
        options,
        run.path,
        eval_records=evaluation.records if evaluation else None,
        device=args.device,
        extra_config={
            "dataset": args.dataset,
            "dataset_format": train.format,
            **({"prompt_format": train.run_pairs["prompt_format"]} if train.run_pairs else {}),
            "unpaired": args.unpaired,
            "rpo_distance_temperature": options.rpo_distance_temperature,
            "rpo_embedding_model": options.rpo_embedding_model,
            "rpo_diagonal_weight": options.rpo_diagonal_weight,
        },
    )

    ###############
    # Outputs (main process only)
    ###############
    if not is_main_process():
        return 0
    log_history = read_jsonl(run.file(TRAIN_LOG_FILE)) if run.file(TRAIN_LOG_FILE).is_file() else []
    summary = {
        "status": "done",
        "loss_type": args.loss_type,
        "beta": args.beta,
        **train_summary(log_history, result.metrics),
        "n_train": len(train.records),
        "adapter": str(result.adapter_dir),
    }
    final_model = result.adapter_dir
    if args.merge_adapters and options.use_lora:
        merged = run.file("merged")
        if not (merged / "config.json").is_file():
            merge_adapter(result.adapter_dir, merged)
        final_model = summary["merged"] = str(merged)
    atomic_write_json(run.file(SUMMARY_FILE), summary)
    print(
        json.dumps(
            {
                k: summary[k]
                for k in (
                    "loss_type",
                    "beta",
                    "final_loss",
                    "reward_margin",
                    "reward_accuracy",
                    "steps",
                    "skipped_rpo_batches",
                )
            }
        )
    )
    logger.info("outputs in %s", run.path)
    if repo:
        hub.push_model(
            final_model, repo, what="merged model" if Path(final_model).name == "merged" else f"{ADAPTER_DIR} folder"
        )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
