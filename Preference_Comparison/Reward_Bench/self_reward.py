"""Self-Rewarding baseline on RewardBench: the model writes a 1-5 score for each response under the
additive 5-point prompt (Yuan et al. 2024); a pair is right if chosen gets the higher score.

This is upstream's Preference_Comparison/Reward_Bench/self_reward.py on the shared `ipo` core. The
paper's command still works (key, user and set are now optional; without --set_name all subsets run):

    python Preference_Comparison/Reward_Bench/self_reward.py --hf_key K --hf_user U \
        --model_name mistralai/Mistral-7B-Instruct-v0.2 --set_name set1

Offline, on the embedded SmolLM2-135M-Instruct and one pair per subset of the project's sample pairs:

    python Preference_Comparison/Reward_Bench/self_reward.py \
        --model_name "$(python -m ipo.assets smollm2)" --dataset data/demo_rewardbench.jsonl --limit 1

--scoring upstream (default) reproduces upstream: raw-text prompt, greedy decoding, the score regex
searched over prompt + generation, 0 when nothing matches. --scoring chat uses the chat template and reads
the last "Score: N" of the generated text only; a parse failure on either side makes the pair wrong and
is reported separately. Decoding is greedy (upstream's temperature=0.1 without do_sample was greedy too).

Outputs in <output_dir>/<run_name>/: config.json, predictions.jsonl (scores, parse-failure flags and the
judge's generated texts), metrics.json (with ties and parse failures), results.md, subset_accuracy.png
and upstream's accuracy_reward-bench_self_<model>-<set>.json. Re-running the same command resumes.
"""

from __future__ import annotations

import sys

from ipo import cli, hub
from ipo.benchmarks import rewardbench
from ipo.judges.self_reward import (
    SelfRewardScorer,
    compare_scores,
    parse_failure_counts,
    parse_failure_metrics,
    parse_failure_note,
)
from ipo.modeling import load_model_and_tokenizer
from ipo.parallel import check_on_every_process, current_ranks, score_sharded, start_on_main
from ipo.report import pct
from ipo.runs import seed_everything

logger = cli.logger


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_model_args(parser)
    cli.add_rewardbench_data_args(parser, rewardbench.SELF_REWARD_SETS, "score only upstream's subset group")
    cli.add_self_reward_args(parser, "score regex")
    cli.add_output_args(parser)
    cli.add_hub_args(parser)
    args = parser.parse_args(argv)
    cli.check_positive(parser, args, "batch_size", "max_batch_tokens", "max_length", "max_new_tokens", "limit")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.log_level)
    cli.consume_secrets(args)
    seed_everything(args.seed)
    ranks = current_ranks()  # under torchrun / accelerate launch: this process's share, GPU and role
    ranks.quiet()
    model_short = cli.model_short_name(args.model_name)
    set_label = args.set_name or "all"

    ###############
    # Data
    ###############
    subsets = rewardbench.SELF_REWARD_SETS[args.set_name] if args.set_name else None
    examples, coverage = rewardbench.load_examples(args.dataset, args.split, args.limit, subsets, args.set_name)

    ###############
    # Run folder (checked before the slow model load: output folder, lock, settings, inputs), model, judge
    ###############
    default_name = f"rewardbench-{args.split}-{model_short}-self-{args.scoring}-{set_label}"
    run = cli.run_dir(args, default_name, args.dataset, args.model_name)
    check_on_every_process(ranks, lambda: run.check(cli.public_args(args)))  # on every process, before loading
    model, tokenizer, device, dtype = load_model_and_tokenizer(ranks.place(cli.model_spec(args)))
    scorer = SelfRewardScorer(
        model,
        tokenizer,
        scoring=args.scoring,
        max_length=args.max_length,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        max_batch_tokens=args.max_batch_tokens,
        regex_set="rewardbench",
    )
    start_on_main(  # the run folder's one writer (ipo/parallel.py)
        ranks,
        run,
        cli.public_args(args),
        device=device,
        dtype=str(dtype),
        n_pairs=len(examples),
        decoding="greedy",
        eos_token_ids=sorted(scorer.eos_ids),
    )

    ###############
    # Judge (appends to predictions.jsonl batch by batch; resumes what is missing)
    ###############

    def make_record(example, scores, extra):
        correct, tie = compare_scores(scores[0], scores[1])
        return {
            "id": example.id,
            "subset": example.subset,
            "score_chosen": scores[0],
            "score_rejected": scores[1],
            "correct": correct,
            "tie": tie,
            "parse_failed_chosen": extra["parse_failed"][0],
            "parse_failed_rejected": extra["parse_failed"][1],
            "truncated": extra["truncated"],
            "generated_chosen": extra["generated"][0],
            "generated_rejected": extra["generated"][1],
        }

    log = score_sharded(
        ranks,
        scorer,
        examples,
        run.file("predictions.jsonl"),
        make_record,
        unit="pair",
        desc="RewardBench (self-reward)",
    )
    if log is None:
        return 0  # under several processes the main one writes the outputs

    ###############
    # Metrics and outputs
    ###############
    records = log.ordered(e.id for e in examples)
    failures = parse_failure_metrics(records)
    failures["n_ties"] = sum(r["tie"] for r in records)
    notes = (
        f"{parse_failure_note(parse_failure_counts(records), 'pairs', args.scoring)} Accuracy without those "
        f"pairs: {pct(failures['accuracy_excluding_parse_failures'])}%. Ties: {failures['n_ties']} (counted as wrong)."
    )
    metrics, markdown = rewardbench.write_outputs(
        run,
        records,
        title=f"Self-Rewarding judge ({args.scoring}) on RewardBench {args.split}: {model_short}",
        upstream_file=f"accuracy_reward-bench_self_{model_short}-{set_label}.json",
        method="self_rewarding",
        extra_metrics=failures,
        notes=notes,
        coverage=coverage,
    )
    print(markdown)
    logger.info("outputs in %s", run.path)
    if args.push_to_hub:
        hub.push_records(
            records, hub.repo_id(args.hf_user, f"reward-bench-{model_short}-{set_label}-scores"), split_by="subset"
        )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
