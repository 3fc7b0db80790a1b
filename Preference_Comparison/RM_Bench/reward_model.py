"""Reward-model baseline on RM-Bench: a sequence-classification reward model scores all 3 chosen and 3
rejected responses of a prompt; the metrics compare them in every style combination.

This is upstream's Preference_Comparison/RM_Bench/reward_model.py on the shared `ipo` core (the same
scorer as Reward_Bench/reward_model.py, the same RM-Bench metrics and outputs as RM_Bench/ours.py). The
paper's command still works (key and user are now optional; the data are upstream's five Hub datasets):

    python Preference_Comparison/RM_Bench/reward_model.py --hf_key K --hf_user U \
        --model_name Skywork/Skywork-Reward-Llama-3.1-8B-v0.2

Offline, on the data files of a THU-KEG/RM-Bench checkout, the reward model's chat template, 10 prompts
per domain:

    python Preference_Comparison/RM_Bench/reward_model.py --model_name path/to/reward-model \
        --dataset RM-Bench/data/*_filtered.json --input_format chat --limit 10

The reward is the raw logit of the one-label head (upstream took the pipeline's sigmoid of it).
--input_format upstream (default) feeds upstream's raw "Instruction: ...\\nResponse: ..." text; chat feeds
the reward model's chat template with a user and an assistant turn.

Outputs in <output_dir>/<run_name>/: config.json, predictions.jsonl (reward_chosen / reward_rejected, 3
each), metrics.json, results.md, style_matrices.png, style_matrix_<domain>.png and upstream's level file
under upstream's name, accuracy_RM-Bench-<last data domain>_norm_<model>.json (safety-refuse with the default data, as
upstream named it after the last dataset of its loop although it holds all of them), with upstream's keys
level_<k>_accuracy in percent (upstream wrote fractions here and percent everywhere else). Re-running the
same command resumes an interrupted run.
"""

from __future__ import annotations

import sys

from ipo import cli, hub
from ipo.benchmarks import rmbench
from ipo.judges.reward_model import RewardModelScorer
from ipo.modeling import load_model_and_tokenizer
from ipo.parallel import check_on_every_process, current_ranks, score_sharded, start_on_main
from ipo.runs import seed_everything

logger = cli.logger


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_model_args(parser)
    cli.add_rmbench_data_args(parser)
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
    # Data: one Example per prompt, responses [chosen x3, rejected x3] in style order
    ###############
    examples, counts, coverage = rmbench.load_examples(args.dataset, args.domain, args.limit)

    ###############
    # Run folder (checked before the slow model load), model, scorer
    ###############
    run = cli.run_dir(args, f"rmbench-{model_short}-rm-{args.input_format}", args.dataset, args.model_name)
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
        n_prompts=len(examples),
        prompts_per_domain=counts,
        pad_token_id=scorer.pad_id,
        reward="raw logit of the one-label head, float32",
    )

    ###############
    # Score: the six responses of a prompt share a batch (appends per batch; resumes what is missing)
    ###############
    log = score_sharded(
        ranks,
        scorer,
        examples,
        run.file("predictions.jsonl"),
        rmbench.record_maker("reward"),
        record_key=rmbench.RECORD_KEY,
        unit="prompt",
        desc="RM-Bench (RM)",
    )
    if log is None:
        return 0  # under several processes the main one writes the outputs

    ###############
    # Metrics and outputs
    ###############
    records = log.ordered(e.id for e in examples)
    metrics, markdown = rmbench.write_outputs(
        run,
        records,
        title=f"Reward model ({args.input_format} input) on RM-Bench: {model_short}",
        # Upstream named its file after the last dataset of its loop (safety-refuse), though it holds all.
        upstream_file=f"accuracy_RM-Bench-{examples[-1].domain}_norm_{model_short}.json",
        method="reward_model",
        score_name="reward",
        upstream_key="level_{k}_accuracy",
        coverage=coverage,
    )
    print(markdown)
    logger.info("outputs in %s", run.path)
    if args.push_to_hub:
        hub.push_records(records, hub.repo_id(args.hf_user, f"RM-Bench-{model_short}-normal"), split_by="domain")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
