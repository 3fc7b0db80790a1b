"""A pairwise API judge on RewardBench: the model reads both responses and names the better one.

Upstream's Preference_Comparison/Reward_Bench/binary_gpt.py (the paper's pairwise GPT baseline) on the
shared `ipo` core, for any OpenAI-compatible endpoint. Upstream always showed the chosen response first;
--both_orders also asks with it second, and reports each order's accuracy and how often the two orders
agree (position bias). The key comes from the environment, never from the command line:

    export OPENAI_API_KEY=sk-...
    python Preference_Comparison/Reward_Bench/binary_gpt.py --model gpt-4o-mini --both_orders

The paper's setting, through OpenRouter (chosen first only):

    export OPENROUTER_API_KEY=sk-or-...
    python Preference_Comparison/Reward_Bench/binary_gpt.py --base_url https://openrouter.ai/api/v1 \
        --api_key_env OPENROUTER_API_KEY --model openai/chatgpt-4o-latest

A local vLLM server, on the project's sample pairs, both orders (chat mode's default):

    OPENAI_API_KEY=EMPTY python Preference_Comparison/Reward_Bench/binary_gpt.py --prompt_format chat \
        --base_url http://localhost:8000/v1 --model Qwen/Qwen2.5-7B-Instruct --dataset data/demo_rewardbench.jsonl

Outputs in <output_dir>/<run_name>/: config.json, predictions.jsonl (verdicts and judge texts),
metrics.json (with per-order accuracy, agreement, failures), results.md, subset_accuracy.png and upstream's
accuracy_reward-bench_comparison_<model>.json. With both orders a pair is correct when both orders pick the
chosen response and a tie when they disagree, so `accuracy_ties_half` is the mean of the two orders'
accuracies (RewardBench's generative-judge convention).
"""

from __future__ import annotations

import sys

from ipo import cli, hub
from ipo.benchmarks import rewardbench
from ipo.benchmarks.api_failures import ApiUsage, forget_failures, pending_examples
from ipo.cli.api import add_api_args, add_order_args, check_api_args, client_from_args, resolve_orders
from ipo.judges import api
from ipo.prompts import COMPARE_PROMPT_REWARDBENCH
from ipo.runs import RecordLog, score_into_log

logger = cli.logger


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_api_args(
        parser,
        prompt_format_help=(
            "upstream: binary_gpt.py's request (max_tokens 200, temperature 0.1) and its regex on the raw answer, "
            "chosen first only; chat: temperature 0, markdown (**, [ ]) ignored when reading the verdict, both "
            "orders"
        ),
    )
    add_order_args(parser)
    cli.add_rewardbench_data_args(parser)
    cli.add_output_args(parser)
    cli.add_hub_args(parser)
    args = parser.parse_args(argv)
    check_api_args(parser, args)
    resolve_orders(args)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.log_level)
    cli.consume_secrets(args)
    model_short = cli.model_short_name(args.model)
    client = client_from_args(args)  # a missing key fails here, before anything is written
    orders = resolve_orders(args)

    ###############
    # Data and run folder
    ###############
    examples, coverage = rewardbench.load_examples(args.dataset, args.split, args.limit)
    suffix = "-both-orders" if args.both_orders else ""
    default_name = f"rewardbench-{args.split}-{model_short}-api-pairwise-{args.scoring}{suffix}"
    run = cli.run_dir(args, default_name, args.dataset)
    run.check(cli.public_args(args))

    ###############
    # Judge: one request per order; the first uncached one is sent alone to check key, URL and model
    ###############
    def requests_for(example):
        chosen, rejected = example.responses
        return api.pairwise_requests(args.scoring, COMPARE_PROMPT_REWARDBENCH, example.prompt, chosen, rejected, orders)

    scorer = api.ApiScorer(client, requests_for, parse=lambda response: api.parse_pairwise(response, args.scoring))
    scorer.probe(pending_examples(examples, run, args.overwrite))
    run.start(
        cli.public_args(args),
        resolved={
            **client.describe(),
            "request": api.PAIRWISE_REQUEST[args.scoring],
            "orders": [n for n, _ in orders],
            "n_pairs": len(examples),
        },
    )

    ###############
    # Score (appends to predictions.jsonl as pairs complete; resumes what is missing or failed)
    ###############
    log = RecordLog(run.file("predictions.jsonl"))
    forget_failures(log)

    def make_record(example, verdicts, extra):
        return {"id": example.id, "subset": example.subset, **api.pairwise_fields(verdicts, extra, orders)}

    score_into_log(scorer, examples, log, make_record, unit="pair", desc=f"RewardBench via {args.model}")

    ###############
    # Metrics and outputs
    ###############
    records = log.ordered(e.id for e in examples)
    per_order = api.order_metrics(records, orders)
    metrics, markdown = rewardbench.write_outputs(
        run,
        records,
        api=ApiUsage.of(client),
        title=f"Pairwise judge via {args.model} ({args.scoring}, {' + '.join(n for n, _ in orders)}) "
        f"on RewardBench {args.split}",
        upstream_file=f"accuracy_reward-bench_comparison_{model_short}.json",
        method="api_binary",
        extra_metrics=per_order,
        extra_markdown=api.orders_markdown(per_order),
        coverage=coverage,
    )
    print(markdown)
    logger.info("outputs in %s", run.path)
    if args.push_to_hub:
        hub.push_records(
            records, hub.repo_id(args.hf_user, f"reward-bench-{model_short}-comparison"), split_by="subset"
        )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
