"""A pairwise API judge on RM-Bench: the model reads a chosen and a rejected response of a prompt and names
the better one.

Upstream's Preference_Comparison/RM_Bench/binary_gpt.py on the shared `ipo` core, for any OpenAI-compatible
endpoint and model (upstream hard-coded gpt-4o-mini on OpenRouter, always showed the chosen response first,
skipped failed requests in its denominator and only printed its accuracies). Upstream compared chosen_k
with rejected_k (the same style, k = 1..3: the diagonal of RM-Bench's 3x3 matrix, its level_1..3);
--pairs all compares every chosen style with every rejected style, which gives the official hard / normal /
easy. --both_orders also asks with the chosen response second and reports each order's accuracy and how
often the orders agree. The key comes from the environment, never from the command line:

    export OPENAI_API_KEY=sk-...
    python Preference_Comparison/RM_Bench/binary_gpt.py --model gpt-4o-mini --both_orders

Upstream's run (chosen first, same-style pairs), through OpenRouter:

    export OPENROUTER_API_KEY=sk-or-...
    python Preference_Comparison/RM_Bench/binary_gpt.py --base_url https://openrouter.ai/api/v1 \
        --api_key_env OPENROUTER_API_KEY --model openai/gpt-4o-mini

A local vLLM server, on the data files of a THU-KEG/RM-Bench checkout, all 9 style pairs in both orders
(chat mode's default), 10 prompts per domain:

    OPENAI_API_KEY=EMPTY python Preference_Comparison/RM_Bench/binary_gpt.py --prompt_format chat --pairs all \
        --base_url http://localhost:8000/v1 --model Qwen/Qwen2.5-7B-Instruct --dataset RM-Bench/data/*_filtered.json \
        --limit 10

Requests per prompt: 3 (diagonal) or 9 (all), twice with --both_orders. A comparison is correct when every
order asked picks the chosen response and a tie when the orders disagree; a failed comparison is wrong.
Outputs in <output_dir>/<run_name>/: config.json, predictions.jsonl (3x3 verdicts and judge texts, None
where not compared), metrics.json (levels, hard/normal/easy with --pairs all, per-order accuracy and
agreement, failures, the metrics over answered prompts), results.md, style_matrices.png, style_matrix_<domain>.png and
accuracy-rm-bench-<model>-comparative.json (the levels upstream printed). Answers are cached in
<output_dir>/api_cache/; re-running the same command resumes and pays for nothing twice.
"""

from __future__ import annotations

import sys

from ipo import cli, hub
from ipo.benchmarks import rmbench, rmbench_api
from ipo.benchmarks.api_failures import ApiUsage, forget_failures, pending_examples
from ipo.benchmarks.rmbench_metrics import pairwise_matrices
from ipo.cli.api import add_api_args, add_order_args, check_api_args, client_from_args, resolve_orders
from ipo.judges import api
from ipo.prompts import COMPARE_PROMPT_RMBENCH
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
    parser.add_argument(
        "--pairs",
        default="diagonal",
        choices=list(rmbench_api.STYLE_PAIRS),
        help="which (chosen style, rejected style) pairs to compare: diagonal = chosen_k vs rejected_k, "
        "upstream's 3 per prompt (its levels; RM-Bench's normal); all = the 9 of the official matrix "
        "(hard, normal, easy), 3 times the requests",
    )
    cli.add_rmbench_data_args(parser)
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
    cells = rmbench_api.STYLE_PAIRS[args.pairs]

    ###############
    # Data and run folder: one Example per prompt, responses [chosen x3, rejected x3] in style order
    ###############
    examples, counts, coverage = rmbench.load_examples(args.dataset, args.domain, args.limit)
    suffix = "-both-orders" if args.both_orders else ""
    default_name = f"rmbench-{model_short}-api-pairwise-{args.pairs}-{args.scoring}{suffix}"
    run = cli.run_dir(args, default_name, args.dataset)
    run.check(cli.public_args(args))

    ###############
    # Judge: one request per compared pair and order; the first uncached one is sent alone to check key,
    # URL and model
    ###############
    def requests_for(example):
        return rmbench_api.style_pair_requests(args.scoring, COMPARE_PROMPT_RMBENCH, example, cells, orders)

    scorer = api.ApiScorer(client, requests_for, parse=lambda response: api.parse_pairwise(response, args.scoring))
    scorer.probe(pending_examples(examples, run, args.overwrite, key=rmbench.RECORD_KEY))
    run.start(
        cli.public_args(args),
        resolved={
            **client.describe(),
            "request": api.PAIRWISE_REQUEST[args.scoring],
            "orders": [n for n, _ in orders],
            "style_pairs": [list(cell) for cell in cells],
            "n_prompts": len(examples),
            "prompts_per_domain": counts,
        },
    )

    ###############
    # Score (appends to predictions.jsonl as prompts complete; resumes what is missing or failed)
    ###############
    log = RecordLog(run.file("predictions.jsonl"), key=rmbench.RECORD_KEY)
    forget_failures(log)

    def make_record(example, verdicts, extra):
        return {
            rmbench.RECORD_KEY: example.id,
            "id": example.meta.get("id", example.id),
            "domain": example.domain,
            "subset": example.subset,
            **rmbench_api.style_pair_fields(verdicts, extra, cells, orders),
        }

    score_into_log(scorer, examples, log, make_record, unit="prompt", desc=f"RM-Bench via {args.model}")

    ###############
    # Metrics and outputs
    ###############
    records = log.ordered(e.id for e in examples)
    per_order = api.order_metrics(rmbench_api.style_pair_order_records(records, cells, orders), orders)
    metrics, markdown = rmbench.write_outputs(
        run,
        records,
        api=ApiUsage.of(client),
        title=f"Pairwise judge via {args.model} ({args.scoring}, {' + '.join(n for n, _ in orders)}, "
        f"{args.pairs} style pairs) on RM-Bench",
        upstream_file=f"accuracy-rm-bench-{model_short}-comparative.json",
        method="api_binary",
        matrices=pairwise_matrices,
        extra_metrics=per_order,
        extra_markdown=api.orders_markdown(per_order),
        coverage=coverage,
    )
    print(markdown)
    logger.info("outputs in %s", run.path)
    if args.push_to_hub:
        hub.push_records(records, hub.repo_id(args.hf_user, f"RM-Bench-{model_short}-comparative"), split_by="domain")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
