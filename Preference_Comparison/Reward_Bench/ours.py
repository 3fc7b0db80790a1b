"""IPO on RewardBench: the model judges each response by P(Yes); a pair is right if chosen scores higher.

This is upstream's Preference_Comparison/Reward_Bench/ours.py (the paper's RewardBench table), on the
shared `ipo` judge. The paper's command still works (the key and user are now optional):

    python Preference_Comparison/Reward_Bench/ours.py --hf_key K --hf_user U --model_name Qwen/Qwen2.5-7B-Instruct

Offline, on the embedded SmolLM2-135M-Instruct and the project's sample pairs:

    python Preference_Comparison/Reward_Bench/ours.py \
        --model_name "$(python -m ipo.assets smollm2)" --dataset data/demo_rewardbench.jsonl

On a serving engine (docs/serving.md; --model_name still gives the local tokenizer that builds the prompts):

    python Preference_Comparison/Reward_Bench/ours.py --model_name Qwen/Qwen2.5-7B-Instruct \
        --backend server --base_url http://localhost:8000/v1


Outputs in <output_dir>/<run_name>/: config.json, predictions.jsonl, metrics.json, results.md,
subset_accuracy.png and upstream's accuracy_reward-bench_yesno_<model>.json. Re-running the same
command resumes an interrupted run.
"""

from __future__ import annotations

import sys

from ipo import cli, hub
from ipo.benchmarks import rewardbench
from ipo.judges.yes_no import YesNoScorer
from ipo.parallel import check_on_every_process, current_ranks, score_sharded, start_on_main
from ipo.prompts import REWARDBENCH_FALLBACK_SUBSET, REWARDBENCH_LAYOUT
from ipo.runs import seed_everything

logger = cli.logger


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_model_args(parser)
    data = cli.add_rewardbench_data_args(parser)
    data.add_argument(
        "--prompt_table",
        default="paper",
        choices=list(rewardbench.PROMPT_TABLES),
        help="paper: the per-subset judge questions; shuffled / same: upstream's "
        "ours_prompt_shuffle.py / ours_same_prompt.py ablations",
    )
    cli.add_judge_args(parser)
    cli.add_backend_args(parser)
    cli.add_output_args(parser)
    cli.add_hub_args(parser)
    args = parser.parse_args(argv)
    cli.check_positive(parser, args, "batch_size", "max_batch_tokens", "max_length", "limit")
    cli.check_backend_args(parser, args)
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
    examples, coverage = rewardbench.load_examples(args.dataset, args.split, args.limit)
    table = rewardbench.PROMPT_TABLES[args.prompt_table]
    unknown = sorted({e.subset for e in examples if e.subset not in table})
    if unknown:
        logger.warning(
            "subsets without a judge question, scored with the %r one: %s",
            REWARDBENCH_FALLBACK_SUBSET,
            ", ".join(unknown),
        )

    ###############
    # Run folder (checked before the slow model load: output folder, lock, settings, inputs), model, judge
    ###############
    suffix = "" if args.prompt_table == "paper" else f"-{args.prompt_table}"
    default_name = f"rewardbench-{args.split}-{model_short}-{args.scoring}{suffix}"
    run = cli.run_dir(args, default_name, args.dataset, args.model_name)
    check_on_every_process(ranks, lambda: run.check(cli.public_args(args)))  # on every process, before loading
    judge, resolved = cli.load_yes_no_judge(args, ranks.place(cli.model_spec(args)))
    start_on_main(ranks, run, cli.public_args(args), **resolved, n_pairs=len(examples))  # the one writer

    ###############
    # Score (appends to predictions.jsonl batch by batch; resumes what is missing)
    ###############
    scorer = YesNoScorer(judge, REWARDBENCH_LAYOUT, lambda e: rewardbench.judge_template(e.subset, table)[0])

    def make_record(example, p_yes, extra):
        return {**rewardbench.pair_record(example, p_yes[0], p_yes[1]), **extra}

    log = score_sharded(
        ranks, scorer, examples, run.file("predictions.jsonl"), make_record, unit="pair", desc="RewardBench"
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
        title=f"IPO judge ({args.scoring}) on RewardBench {args.split}: {model_short}",
        upstream_file=f"accuracy_reward-bench_yesno_{model_short}.json",
        method="ipo",
        coverage=coverage,
        extra_metrics=cli.backend_metrics(judge),
    )
    print(markdown)
    logger.info("outputs in %s", run.path)
    if args.push_to_hub:
        hub.push_records(records, hub.repo_id(args.hf_user, f"reward-bench-{model_short}-yes-no"), split_by="subset")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
