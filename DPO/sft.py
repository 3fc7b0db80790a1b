"""Supervised fine-tuning: the stage before DPO/RPO, on the chosen responses of a preference dataset or on instructions.

RPO (Yin et al. 2024) starts every preference run from a model fine-tuned on the chosen responses of its
data; a base model is SFT'd first (e.g. on databricks-dolly-15k) before it can be a preference-training
policy. Data: a preference dataset (its chosen responses), prompt/completion rows, or instruction rows
(Dolly: instruction/context/response; Alpaca: instruction/input/output), a Hub id or a local file. The
loss is TRL's SFTTrainer NLL on the completion tokens only, with a LoRA adapter (or --no_lora).

Offline, on the embedded SmolLM2-135M-Instruct and 64 Anthropic HH chosen responses (a minute on a CPU):

    python DPO/sft.py --model_name_or_path "$(python -m ipo.assets smollm2)" \\
        --dataset ../shared/data/preference/hh-rlhf_harmless-base_test.jsonl.gz --as_messages \\
        --max_steps 3 --per_device_train_batch_size 4 --lora_r 8 --lora_alpha 16 --max_length 256 --limit 64 \\
        --merge_adapters

Then train the preference loss from the merged model (policy and reference):

    python DPO/train_preferences.py --model_name_or_path outputs/<run_name>/merged --loss_type rpo_paired ...

The run folder <output_dir>/<run_name>/ holds config.json, sft_config.json, checkpoints/, train_log.jsonl,
adapter/ (model/ with --no_lora), merged/ (--merge_adapters) and train_summary.json; re-running the same
command resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ipo import cli, hub
from ipo.cli.training import add_sft_args, options_from_args
from ipo.runs import RunDir, atomic_write_json, read_jsonl, seed_everything
from ipo.training.distributed import is_main_process, wait_for_everyone
from ipo.training.dpo import train_summary
from ipo.training.merge import merge_adapter
from ipo.training.options import TRAIN_LOG_FILE, check_options
from ipo.training.preference_data import DATASET_FORMATS, SFT_FORMATS, load_sft_data
from ipo.training.recipes import load_recipe, recipe_defaults
from ipo.training.sft import train_sft

logger = cli.logger

SUMMARY_FILE = "train_summary.json"
# SFT defaults where they differ from the DPO step's (ipo.training.options.TrainingOptions)
SFT_DEFAULTS = {"learning_rate": 1e-4, "per_device_train_batch_size": 8, "max_length": 1024}


def build_parser(default_model: str | None = None) -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None,
                        help="a recipe (e.g. recipes/rpo/sft_hh.yaml); flags given here win")  # fmt: skip
    cli.add_model_args(parser, default_model=default_model)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default=None,
                      help="Hub dataset id or local json/jsonl/parquet file (gzip accepted)")
    data.add_argument("--dataset_split", default="train", help="split of a Hub --dataset (local files have one)")
    data.add_argument("--dataset_format", default="auto", choices=list(SFT_FORMATS),
                      help="preference: train on the chosen responses; prompt_completion; instruction (Dolly or "
                           "Alpaca columns); auto detects it from the first row")  # fmt: skip
    data.add_argument("--preference_format", default="auto", choices=list(DATASET_FORMATS),
                      help="layout of a preference --dataset (README 'Datasets'); auto detects it")
    data.add_argument("--as_messages", action="store_true",
                      help="turn text prompts (HH dialogues, instructions) into chat messages so the model's chat "
                           "template applies; default: text (instructions in Stanford Alpaca's prompt)")  # fmt: skip
    data.add_argument("--limit", type=int, default=None,
                      help="use only the first N examples (smoke runs); part of the run's settings")
    add_sft_args(parser, SFT_DEFAULTS)
    cli.add_output_args(parser)
    hub_group = parser.add_argument_group("Hugging Face Hub (nothing is uploaded without --push_to_hub)")
    hub_group.add_argument("--push_to_hub", action="store_true",
                           help="upload the merged model (with --merge_adapters) or the adapter, with its tokenizer")
    hub_group.add_argument("--hub_repo_id", default=None,
                           help="target repo, 'user/name' or 'name' (default: <run_name>); token from HF_TOKEN")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    config_path = pre.parse_known_args(argv)[0].config
    settings = load_recipe(config_path)[0] if config_path else {}
    parser = build_parser(default_model=settings.get("model_name_or_path"))
    parser.set_defaults(**recipe_defaults(parser, settings, config_path))
    args = parser.parse_args(argv)
    if not args.dataset:
        parser.error("--dataset is required (a Hub id or a local file), on the command line or in --config")
    cli.check_positive(parser, args, "limit")
    if args.trust_remote_code:
        parser.error("--trust_remote_code is not supported for training (TRL loads the model itself)")
    if args.quantized:
        args.load_in_4bit = True
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.log_level)
    seed_everything(args.seed)
    options = options_from_args(args)
    check_options(options)

    data = load_sft_data(args.dataset, args.dataset_split, args.dataset_format, messages=args.as_messages,
                         preference_format=args.preference_format)  # fmt: skip
    records = data.records[: args.limit] if args.limit else data.records
    logger.info("%s%s", data.summary(), f"; using the first {len(records)}" if args.limit else "")
    dataset_name = Path(args.dataset).name.split(".")[0] if Path(args.dataset).suffix else args.dataset.split("/")[-1]
    run = RunDir(args.output_dir, args.run_name or f"sft-{cli.model_short_name(args.model_name)}-{dataset_name}",
                 overwrite=args.overwrite)  # fmt: skip
    run.check(cli.public_args(args), fingerprint_extra={"limit": args.limit})
    if is_main_process():
        run.start(cli.public_args(args), resolved={"n_train": len(records), "format": data.format},
                  fingerprint_extra={"limit": args.limit})  # fmt: skip
    wait_for_everyone()

    options.run_name = run.path.name
    result = train_sft(args.model_name, records, options, run.path, device=args.device,
                       extra_config={"dataset": args.dataset, "format": data.format})  # fmt: skip

    if not is_main_process():
        return 0
    log_history = read_jsonl(run.file(TRAIN_LOG_FILE)) if run.file(TRAIN_LOG_FILE).is_file() else []
    summary = {"status": "done", "stage": "sft", **train_summary(log_history, result.metrics),
               "n_train": len(records), "model": str(result.adapter_dir)}  # fmt: skip
    final_model = result.adapter_dir
    if args.merge_adapters and options.use_lora:
        merged = run.file("merged")
        if not (merged / "config.json").is_file():
            merge_adapter(result.adapter_dir, merged)
        final_model = summary["merged"] = str(merged)
    atomic_write_json(run.file(SUMMARY_FILE), summary)
    print(json.dumps({"final_loss": summary["final_loss"], "steps": summary["steps"], "model": str(final_model)}))
    if args.push_to_hub:
        repo = args.hub_repo_id or run.path.name
        hub.push_folder(final_model, repo if "/" in repo else hub.repo_id(None, repo), what="SFT model")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
