"""IPO through an API model on RM-Bench: P(Yes) of all 3 chosen and 3 rejected responses of a prompt,
from the first generated token's top log-probabilities.

Upstream's Preference_Comparison/RM_Bench/ours_gpt.py on the shared `ipo` core, for any OpenAI-compatible
endpoint and model (upstream hard-coded gpt-4o-mini on OpenRouter, an id OpenRouter spells
openai/gpt-4o-mini, and evaluated only math, safety-response and safety-refuse). All five data domains
are judged by default and reported with the official RM-Bench metric (hard / normal / easy) next to
upstream's level_1/2/3. The key comes from the environment, never from the command line:

    export OPENAI_API_KEY=sk-...
    python Preference_Comparison/RM_Bench/ours_gpt.py --model gpt-4o-mini

Upstream's run (three domains, through OpenRouter):

    export OPENROUTER_API_KEY=sk-or-...
    python Preference_Comparison/RM_Bench/ours_gpt.py --base_url https://openrouter.ai/api/v1 \
        --api_key_env OPENROUTER_API_KEY --model openai/gpt-4o-mini \
        --dataset Ayush-Singh/RM-Bench-math Ayush-Singh/RM-Bench-safety-response Ayush-Singh/RM-Bench-safety-refuse

A local vLLM server, on the data files of a THU-KEG/RM-Bench checkout, 10 prompts per domain:

    OPENAI_API_KEY=EMPTY python Preference_Comparison/RM_Bench/ours_gpt.py --base_url http://localhost:8000/v1 \
        --model Qwen/Qwen2.5-7B-Instruct --dataset RM-Bench/data/*_filtered.json --limit 10

Six requests per prompt. Outputs in <output_dir>/<run_name>/: config.json, predictions.jsonl, metrics.json
(with failures and the metrics over answered prompts), results.md, style_matrices.png, style_matrix_<domain>.png and
upstream's accuracy-rm-bench-<model>-yesno.json. Answers are cached in <output_dir>/api_cache/; re-running
the same command resumes, pays for nothing twice and tries failed prompts again.
"""

from __future__ import annotations

import sys

from ipo import cli, hub
from ipo.benchmarks import rmbench
from ipo.benchmarks.api_failures import ApiUsage, forget_failures, pending_examples
from ipo.benchmarks.rmbench_api import style_answer_fields
from ipo.cli.api import add_api_args, check_api_args, client_from_args
from ipo.judges import api
from ipo.prompts import RMBENCH_LAYOUT
from ipo.runs import RecordLog, score_into_log

logger = cli.logger


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_api_args(
        parser,
        prompt_format_help=(
            "upstream: the RM-Bench wrapper of ours.py (judge question last), the first Yes and first No among "
            "the top 10 log-probabilities, max_tokens 2, temperature 0.7; chat: the chat-mode prompt layout, all "
            "Yes and all No variants among the top 20 summed, max_tokens 1, temperature 0"
        ),
    )
    cli.add_rmbench_data_args(parser)
    cli.add_output_args(parser)
    cli.add_hub_args(parser)
    args = parser.parse_args(argv)
    check_api_args(parser, args)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.log_level)
    cli.consume_secrets(args)
    model_short = cli.model_short_name(args.model)
    client = client_from_args(args)  # a missing key fails here, before anything is written

    ###############
    # Data and run folder: one Example per prompt, responses [chosen x3, rejected x3] in style order
    ###############
    examples, counts, coverage = rmbench.load_examples(args.dataset, args.domain, args.limit)
    run = cli.run_dir(args, f"rmbench-{model_short}-api-yesno-{args.scoring}", args.dataset)
    run.check(cli.public_args(args))

    ###############
    # Judge: one request per response; the first uncached one is sent alone to check key, URL and model
    ###############
    def requests_for(example):
        template = rmbench.judge_question(example.domain)
        return [
            api.yes_no_request(
                args.scoring, api.yes_no_content(args.scoring, RMBENCH_LAYOUT, template, example.prompt, response)
            )
            for response in example.responses
        ]

    scorer = api.ApiScorer(client, requests_for, parse=lambda response: api.parse_yes_no(response, args.scoring))
    scorer.probe(pending_examples(examples, run, args.overwrite, key=rmbench.RECORD_KEY))
    run.start(
        cli.public_args(args),
        resolved={
            **client.describe(),
            "request": api.YES_NO_REQUEST[args.scoring],
            "n_prompts": len(examples),
            "prompts_per_domain": counts,
        },
    )

    ###############
    # Score (appends to predictions.jsonl as prompts complete; resumes what is missing or failed)
    ###############
    log = RecordLog(run.file("predictions.jsonl"), key=rmbench.RECORD_KEY)
    forget_failures(log)

    def make_record(example, p_yes, extra):  # a failed response's p_yes is None: it loses every comparison
        return rmbench.prediction_record(example, p_yes, style_answer_fields(extra, ("logprob_yes", "logprob_no")))

    score_into_log(scorer, examples, log, make_record, unit="prompt", desc=f"RM-Bench via {args.model}")

    ###############
    # Metrics and outputs
    ###############
    records = log.ordered(e.id for e in examples)
    metrics, markdown = rmbench.write_outputs(
        run,
        records,
        api=ApiUsage.of(client),
        title=f"IPO judge via {args.model} ({args.scoring}) on RM-Bench",
        upstream_file=f"accuracy-rm-bench-{model_short}-yesno.json",
        method="api_ipo",
        coverage=coverage,
    )
    print(markdown)
    logger.info("outputs in %s", run.path)
    if args.push_to_hub:
        hub.push_records(records, hub.repo_id(args.hf_user, f"RM-Bench-{model_short}-api-yesno"), split_by="domain")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
