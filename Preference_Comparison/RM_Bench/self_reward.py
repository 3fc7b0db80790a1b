"""Self-Rewarding baseline on RM-Bench: the model writes a 1-5 score for each of the 3 chosen and 3
rejected responses of a prompt under the additive 5-point prompt (Yuan et al. 2024); the metrics compare
the scores in every style combination.

This is upstream's Preference_Comparison/RM_Bench/self_reward.py on the shared `ipo` core (the same judge
as Reward_Bench/self_reward.py, the same RM-Bench metrics and outputs as RM_Bench/ours.py). The paper's
command still works (key, user and set are now optional; without --set_name all domains run):

    python Preference_Comparison/RM_Bench/self_reward.py --hf_key K --hf_user U \
        --model_name mistralai/Mistral-7B-Instruct-v0.2 --set_name set1

Offline, on the data files of a THU-KEG/RM-Bench checkout, the embedded SmolLM2-135M-Instruct, 2 prompts
per domain, chat template and strict parsing:

    python Preference_Comparison/RM_Bench/self_reward.py --model_name "$(python -m ipo.assets smollm2)" \
        --dataset RM-Bench/data/*_filtered.json --limit 2 --scoring chat

--scoring upstream (default) reproduces upstream: raw-text prompt, greedy decoding, and upstream's
RM-Bench regexes ("score: N", "score N", "N/5", in that order) searched over prompt + generation, clamped
to 1..5, 0 when nothing matches. --scoring chat uses the chat template and reads the last "Score: N" of
the generated text only; a failed judgement loses every comparison it is in. Parse failures and ties are
counted per domain. Decoding is greedy (upstream's temperature=0.1 without do_sample was greedy too).

Outputs in <output_dir>/<run_name>/: config.json, predictions.jsonl (score_chosen / score_rejected,
parse_failed_* and the judge's generated texts, 3 each), metrics.json, results.md,
style_matrices.png, style_matrix_<domain>.png and upstream's accuracy-rm-bench-<model>-scores-<set>.json.
Re-running the same command resumes.
"""

from __future__ import annotations

import sys

from ipo import cli, hub
from ipo.benchmarks import rmbench
from ipo.judges.self_reward import SelfRewardScorer, parse_failure_counts, parse_failure_note
from ipo.modeling import load_model_and_tokenizer
from ipo.parallel import check_on_every_process, current_ranks, score_sharded, start_on_main
from ipo.runs import seed_everything

logger = cli.logger


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_model_args(parser)
    groups = "; ".join(f"{name} = {', '.join(domains)}" for name, domains in rmbench.SELF_REWARD_SETS.items())
    cli.add_rmbench_data_args(parser, rmbench.SELF_REWARD_SETS, f"score only upstream's domain group: {groups}")
    cli.add_self_reward_args(parser, "upstream's RM-Bench score regexes")
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
    # Data: one Example per prompt, responses [chosen x3, rejected x3] in style order
    ###############
    examples, counts, coverage = rmbench.load_examples(args.dataset, args.domain, args.limit, args.set_name)

    ###############
    # Run folder (checked before the slow model load), model, judge
    ###############
    run = cli.run_dir(args, f"rmbench-{model_short}-self-{args.scoring}-{set_label}", args.dataset, args.model_name)
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
        regex_set="rmbench",
    )
    start_on_main(  # the run folder's one writer (ipo/parallel.py)
        ranks,
        run,
        cli.public_args(args),
        device=device,
        dtype=str(dtype),
        n_prompts=len(examples),
        prompts_per_domain=counts,
        decoding="greedy",
        eos_token_ids=sorted(scorer.eos_ids),
        regex_set=scorer.regex_set,
    )

    ###############
    # Judge all six responses of a prompt (appends per batch; resumes what is missing)
    ###############

    def make_record(example, scores, extra):
        return rmbench.prediction_record(
            example,
            scores,
            {
                **rmbench.by_side("parse_failed", extra["parse_failed"]),
                "truncated": extra["truncated"],
                **rmbench.by_side("generated", extra["generated"]),
            },
            score_name="score",
        )

    log = score_sharded(
        ranks,
        scorer,
        examples,
        run.file("predictions.jsonl"),
        make_record,
        record_key=rmbench.RECORD_KEY,
        unit="prompt",
        desc="RM-Bench (self-reward)",
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
        title=f"Self-Rewarding judge ({args.scoring}) on RM-Bench: {model_short}",
        upstream_file=f"accuracy-rm-bench-{model_short}-scores-{set_label}.json",
        method="self_rewarding",
        score_name="score",
        notes=parse_failure_note(parse_failure_counts(records), "prompts", args.scoring),
        coverage=coverage,
    )
    print(markdown)
    logger.info("outputs in %s", run.path)
    if args.push_to_hub:
        hub.push_records(
            records, hub.repo_id(args.hf_user, f"RM-Bench-{model_short}-scores-{set_label}"), split_by="domain"
        )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
