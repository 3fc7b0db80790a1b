"""Prompt search for the IPO judge on RewardBench: score every candidate question per subset, choose the
best on a selection part of the pairs and report it on the held-out rest.

This is upstream's Preference_Comparison/Reward_Bench/prompt_search.py on the shared `ipo` judge, plus
the selection step upstream left to the reader (it chose on the test pairs themselves). The paper's
command still works (key and user are optional; --prompts_file defaults to the shipped file):

    python Preference_Comparison/Reward_Bench/prompt_search.py --hf_key K --hf_user U \
        --model_name Qwen/Qwen2.5-7B-Instruct --prompts_file Preference_Comparison/Reward_Bench/candidate_prompts.json

Offline, on the embedded SmolLM2-135M-Instruct and the project's sample pairs:

    python Preference_Comparison/Reward_Bench/prompt_search.py \
        --model_name "$(python -m ipo.assets smollm2)" --dataset data/demo_rewardbench.jsonl

Outputs in <output_dir>/<run_name>/: config.json, predictions.jsonl (one line per pair and candidate),
metrics.json and results.md (the selection and held-out accuracies next to the paper's prompts), and
upstream's accuracy_reward-bench_yesno_<model>_multi_prompt.json (whole-subset percent). Re-running the
same command resumes an interrupted run.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ipo import cli, hub
from ipo.benchmarks import prompt_search, rewardbench
from ipo.judges.yes_no import YesNoScorer, load_judge
from ipo.prompts import REWARDBENCH_LAYOUT
from ipo.runs import RecordLog, score_into_log, seed_everything

logger = cli.logger
DEFAULT_PROMPTS_FILE = Path(__file__).resolve().parent / "candidate_prompts.json"


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_model_args(parser)
    data = cli.add_rewardbench_data_args(parser)
    data.add_argument(
        "--prompts_file",
        default=str(DEFAULT_PROMPTS_FILE),
        help='candidate questions in upstream\'s format {"default": str, "<subset>": [str, ...]} '
        "(default: the shipped candidate_prompts.json)",
    )
    data.add_argument(
        "--select_fraction",
        type=float,
        default=0.5,
        help="fraction of each subset's pairs used to choose the prompt; the rest is held out to report it",
    )
    cli.add_judge_args(parser)
    cli.add_output_args(parser)
    cli.add_hub_args(parser)
    args = parser.parse_args(argv)
    cli.check_positive(parser, args, "batch_size", "max_batch_tokens", "max_length", "limit")
    if not 0 < args.select_fraction < 1:
        parser.error(f"--select_fraction must be between 0 and 1 (exclusive), got {args.select_fraction}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.log_level)
    cli.consume_secrets(args)
    seed_everything(args.seed)
    model_short = cli.model_short_name(args.model_name)

    ###############
    # Data: one example per (pair, candidate)
    ###############
    prompts = prompt_search.load_candidate_prompts(args.prompts_file)
    pairs, coverage = rewardbench.load_examples(args.dataset, args.split, args.limit)
    examples, plan = prompt_search.expand(pairs, prompts)
    logger.info("%d pairs in %d subsets, %d (pair, candidate) scorings", len(pairs), len(plan), len(examples))

    ###############
    # Run folder (checked before the slow model load: output folder, lock, settings, inputs), model, judge
    ###############
    default_name = f"rewardbench-{args.split}-{model_short}-{args.scoring}-prompt-search"
    run = cli.run_dir(args, default_name, args.dataset, args.model_name)
    fingerprint = {"prompts_sha256": prompt_search.prompts_fingerprint(prompts)}
    run.check(cli.public_args(args), fingerprint)
    judge, resolved = load_judge(cli.model_spec(args), **cli.judge_settings(args))
    run.start(
        cli.public_args(args),
        resolved={**resolved, "n_pairs": len(pairs), "n_scorings": len(examples)},
        fingerprint_extra=fingerprint,
    )

    ###############
    # Score every candidate (appends to predictions.jsonl batch by batch; resumes what is missing)
    ###############
    log = RecordLog(run.file("predictions.jsonl"), key="key")
    scorer = YesNoScorer(judge, REWARDBENCH_LAYOUT, lambda e: e.meta["template"])

    def make_record(example, p_yes, extra):
        record = rewardbench.pair_record(example, p_yes[0], p_yes[1])
        return {
            "key": record.pop("id"),
            "pair_id": example.meta["pair_id"],
            "candidate": example.meta["candidate"],
            **record,
            **extra,
        }

    score_into_log(scorer, examples, log, make_record, unit="scoring", desc="prompt search")

    ###############
    # Selection, held-out report, upstream's whole-subset file
    ###############
    records = log.ordered(e.id for e in examples)
    metrics, markdown = prompt_search.write_outputs(
        run,
        records,
        plan,
        args.select_fraction,
        args.seed,
        title=f"Prompt search ({args.scoring}) on RewardBench {args.split}: {model_short}",
        upstream_file=f"accuracy_reward-bench_yesno_{model_short}_multi_prompt.json",
        coverage=coverage,
    )
    print(markdown)
    logger.info("outputs in %s", run.path)
    if args.push_to_hub:
        hub.push_records(
            records, hub.repo_id(args.hf_user, f"reward-bench-{model_short}-multi-prompt"), split_by="subset"
        )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
