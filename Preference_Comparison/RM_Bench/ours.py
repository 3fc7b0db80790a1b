"""IPO on RM-Bench: the model judges all 3 chosen and 3 rejected responses of a prompt by P(Yes).

This is upstream's Preference_Comparison/RM_Bench/ours.py on the shared `ipo` judge. It reports the
official RM-Bench metric (the 3x3 style matrix: hard / normal / easy per domain, safety pooled, and their
average) next to upstream's level_1/2/3 (the matrix diagonal, per data file). The paper's command still
works (the key and user are now optional; the data are upstream's five Hub datasets):

    python Preference_Comparison/RM_Bench/ours.py --hf_key K --hf_user U --model_name Qwen/Qwen2.5-7B-Instruct

Offline, on the data files of a THU-KEG/RM-Bench checkout (official format; the domain comes from each
file's name), the embedded SmolLM2-135M-Instruct, 10 prompts per domain:

    python Preference_Comparison/RM_Bench/ours.py --model_name "$(python -m ipo.assets smollm2)" \
        --dataset RM-Bench/data/*_filtered.json --limit 10

On a serving engine (docs/serving.md; --model_name still gives the local tokenizer that builds the prompts):

    python Preference_Comparison/RM_Bench/ours.py --model_name Qwen/Qwen2.5-7B-Instruct \
        --backend server --base_url http://localhost:8000/v1


Outputs in <output_dir>/<run_name>/: config.json, predictions.jsonl, metrics.json, results.md,
style_matrices.png, style_matrix_<domain>.png and upstream's accuracy-rm-bench-<model>-yesno.json. Re-running the same
command resumes an interrupted run.
"""

from __future__ import annotations

import sys

from ipo import cli, hub
from ipo.benchmarks import rmbench
from ipo.judges.yes_no import YesNoScorer
from ipo.parallel import check_on_every_process, current_ranks, score_sharded, start_on_main
from ipo.prompts import RMBENCH_LAYOUT
from ipo.runs import seed_everything

logger = cli.logger


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_model_args(parser)
    cli.add_rmbench_data_args(parser)
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
    # Data: one Example per prompt, responses [chosen x3, rejected x3] in style order
    ###############
    examples, counts, coverage = rmbench.load_examples(args.dataset, args.domain, args.limit)

    ###############
    # Run folder (checked before the slow model load), model, judge
    ###############
    run = cli.run_dir(args, f"rmbench-{model_short}-{args.scoring}", args.dataset, args.model_name)
    check_on_every_process(ranks, lambda: run.check(cli.public_args(args)))  # on every process, before loading
    judge, resolved = cli.load_yes_no_judge(args, ranks.place(cli.model_spec(args)))
    start_on_main(  # the run folder's one writer (ipo/parallel.py)
        ranks, run, cli.public_args(args), **resolved, n_prompts=len(examples), prompts_per_domain=counts
    )

    ###############
    # Score: the six responses of a prompt share a batch (and their common token prefix)
    ###############
    scorer = YesNoScorer(judge, RMBENCH_LAYOUT, lambda e: rmbench.judge_question(e.domain))
    log = score_sharded(
        ranks,
        scorer,
        examples,
        run.file("predictions.jsonl"),
        rmbench.record_maker("p_yes"),
        record_key=rmbench.RECORD_KEY,
        unit="prompt",
        desc="RM-Bench",
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
        title=f"IPO judge ({args.scoring}) on RM-Bench: {model_short}",
        upstream_file=f"accuracy-rm-bench-{model_short}-yesno.json",
        method="ipo",
        coverage=coverage,
        extra_metrics=cli.backend_metrics(judge),
    )
    print(markdown)
    logger.info("outputs in %s", run.path)
    if args.push_to_hub:
        hub.push_records(records, hub.repo_id(args.hf_user, f"RM-Bench-{model_short}-yesno"), split_by="domain")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
