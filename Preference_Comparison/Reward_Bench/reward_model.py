"""Reward-model baseline on RewardBench: a sequence-classification reward model scores each response; a
pair is right if chosen gets the higher reward.

This is upstream's Preference_Comparison/Reward_Bench/reward_model.py on the shared `ipo` core. The
paper's command still works (key, user and set are now optional; without --set_name all subsets run):

    python Preference_Comparison/Reward_Bench/reward_model.py --hf_key K --hf_user U \
        --model_name Skywork/Skywork-Reward-Llama-3.1-8B-v0.2 --set_name chat

The reward is the raw logit of the one-label head (upstream took the pipeline's sigmoid of it).
--input_format upstream (default) feeds upstream's raw "Instruction: ...\\nResponse: ..." text; chat feeds
the reward model's chat template with a user and an assistant turn, as such models are trained.

Outputs in <output_dir>/<run_name>/: config.json, predictions.jsonl, metrics.json, results.md,
subset_accuracy.png and upstream's accuracy_reward-bench_norm_<model>.json (percent, like ours.py;
upstream wrote fractions here). Re-running the same command resumes an interrupted run.
"""

from __future__ import annotations

import sys

from ipo import cli, hub
from ipo.benchmarks import rewardbench
from ipo.judges.reward_model import RewardModelScorer
from ipo.modeling import load_model_and_tokenizer
from ipo.parallel import check_on_every_process, current_ranks, score_sharded, start_on_main
from ipo.runs import seed_everything

logger = cli.logger


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_model_args(parser)
    cli.add_rewardbench_data_args(
        parser, rewardbench.PAPER_CATEGORIES, "score only this category of the paper (chat includes Chat Hard)"
    )
    cli.add_reward_model_args(parser)
    cli.add_output_args(parser)
    cli.add_hub_args(parser)
    args = parser.parse_args(argv)
    cli.check_positive(parser, args, "batch_size", "max_batch_tokens", "max_length", "limit")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.log_level)
    cli.consume_secrets(args)
    seed_everything(args.seed)
    ranks = current_ranks()  # under torchrun / accelerate launch: this process's share, GPU and role
    ranks.quiet()
    model_short = cli.model_short_name(args.model_name)

    ###############
    # Data
    ###############
    subsets = rewardbench.PAPER_CATEGORIES[args.set_name] if args.set_name else None
    examples, coverage = rewardbench.load_examples(args.dataset, args.split, args.limit, subsets, args.set_name)

    ###############
    # Run folder (checked before the slow model load: output folder, lock, settings, inputs), model, scorer
    ###############
    set_suffix = f"-{args.set_name}" if args.set_name else ""
    default_name = f"rewardbench-{args.split}-{model_short}-rm-{args.input_format}{set_suffix}"
    run = cli.run_dir(args, default_name, args.dataset, args.model_name)
    check_on_every_process(ranks, lambda: run.check(cli.public_args(args)))  # on every process, before loading
    model, tokenizer, device, dtype = load_model_and_tokenizer(
        ranks.place(cli.model_spec(args)), kind="sequence_classification"
    )
    scorer = RewardModelScorer(
        model,
        tokenizer,
        input_format=args.input_format,
        max_length=args.max_length,
        batch_size=args.batch_size,
        max_batch_tokens=args.max_batch_tokens,
    )
    start_on_main(  # the run folder's one writer (ipo/parallel.py)
        ranks,
        run,
        cli.public_args(args),
        device=device,
        dtype=str(dtype),
        n_pairs=len(examples),
        pad_token_id=scorer.pad_id,
        reward="raw logit of the one-label head, float32",
    )

    ###############
    # Score (appends to predictions.jsonl batch by batch; resumes what is missing)
    ###############

    def make_record(example, rewards, extra):
        return {**rewardbench.pair_record(example, rewards[0], rewards[1], score_name="score"), **extra}

    log = score_sharded(
        ranks, scorer, examples, run.file("predictions.jsonl"), make_record, unit="pair", desc="RewardBench (RM)"
    )
    if log is None:
        return 0  # under several processes the main one writes the outputs

    ###############
    # Metrics and outputs
    ###############
    records = log.ordered(e.id for e in examples)
    metrics, markdown = rewardbench.write_outputs(
        run,
        records,
        title=f"Reward model ({args.input_format} input) on RewardBench {args.split}: {model_short}",
        upstream_file=f"accuracy_reward-bench_norm_{model_short}.json",
        method="reward_model",
        extra_metrics={"n_ties": sum(r["tie"] for r in records)},
        coverage=coverage,
    )
    print(markdown)
    logger.info("outputs in %s", run.path)
    if args.push_to_hub:
        hub.push_records(records, hub.repo_id(args.hf_user, f"reward-bench-{model_short}-normal"), split_by="subset")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
