"""Self-Rewarding baseline through an API model on RM-Bench: the model writes a 1-5 score for each of the
3 chosen and 3 rejected responses of a prompt under the additive 5-point prompt.

Upstream's Preference_Comparison/RM_Bench/self_reward_gpt.py on the shared `ipo` core, for any
OpenAI-compatible endpoint and model (upstream hard-coded gpt-4o-mini on OpenRouter and split the
domains into --set_name set1 = chat, code, math, safety-response and set2 = safety-refuse; here all
domains are judged by default, and --dataset picks sources). The key comes from the environment:

    export OPENAI_API_KEY=sk-...
    python Preference_Comparison/RM_Bench/self_reward_gpt.py --model gpt-4o-mini

Upstream's set2, through OpenRouter:

    export OPENROUTER_API_KEY=sk-or-...
    python Preference_Comparison/RM_Bench/self_reward_gpt.py --base_url https://openrouter.ai/api/v1 \
        --api_key_env OPENROUTER_API_KEY --model openai/gpt-4o-mini --dataset Ayush-Singh/RM-Bench-safety-refuse

A local vLLM server, on the data files of a THU-KEG/RM-Bench checkout, 10 prompts per domain:

    OPENAI_API_KEY=EMPTY python Preference_Comparison/RM_Bench/self_reward_gpt.py --prompt_format chat \
        --base_url http://localhost:8000/v1 --model Qwen/Qwen2.5-7B-Instruct --dataset RM-Bench/data/*_filtered.json \
        --limit 10

--prompt_format upstream (default): the 5-point prompt as upstream sent it, max_tokens 200, temperature 0.1, and
RM_Bench/self_reward.py's regexes ("score: N", "score N", "N/5"; the first that matches, clamped to 1..5).
--prompt_format chat: greedy, the last "Score: N" (1..5). An answer without a score is a counted failure (upstream
scored it 0, and -1 when the request failed), never a score; it loses every comparison it is in.

Six requests per prompt. Outputs in <output_dir>/<run_name>/: config.json, predictions.jsonl (scores, judge
texts, failures), metrics.json (official hard/normal/easy, upstream's levels, ties, parse and API failures,
the metrics over answered prompts), results.md, style_matrices.png, style_matrix_<domain>.png and upstream's
accuracy-rm-bench-<model>-scores.json. Answers are cached in <output_dir>/api_cache/; re-running the same
command resumes and pays for nothing twice.
"""

from __future__ import annotations

import sys

from ipo import cli, hub
from ipo.benchmarks import rmbench, rmbench_metrics
from ipo.benchmarks.api_failures import ApiUsage, forget_failures, pending_examples
from ipo.benchmarks.rmbench_api import style_answer_fields
from ipo.cli.api import add_api_args, check_api_args, client_from_args
from ipo.judges import api
from ipo.judges.self_reward import parse_failure_counts
from ipo.prompts import SELF_REWARD_PROMPT
from ipo.report import pct
from ipo.runs import RecordLog, score_into_log

logger = cli.logger
REGEX_SET = "rmbench"  # RM_Bench/self_reward.py's and self_reward_gpt.py's regexes (ipo.judges.self_reward)


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_api_args(
        parser,
        prompt_format_help=(
            "upstream: the 5-point prompt, max_tokens 200, temperature 0.1, RM-Bench's score regexes; chat: the "
            "same prompt, temperature 0, the last 'Score: N' (1..5) of the answer"
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
    run = cli.run_dir(args, f"rmbench-{model_short}-api-self-{args.scoring}", args.dataset)
    run.check(cli.public_args(args))

    ###############
    # Judge: one request per response; the first uncached one is sent alone to check key, URL and model
    ###############
    def requests_for(example):
        return [
            api.self_reward_request(
                args.scoring, api.self_reward_content(args.scoring, SELF_REWARD_PROMPT, example.prompt, response)
            )
            for response in example.responses
        ]

    scorer = api.ApiScorer(
        client, requests_for, parse=lambda response: api.parse_self_reward(response, args.scoring, REGEX_SET)
    )
    scorer.probe(pending_examples(examples, run, args.overwrite, key=rmbench.RECORD_KEY))
    run.start(
        cli.public_args(args),
        resolved={
            **client.describe(),
            "request": api.SELF_REWARD_REQUEST[args.scoring],
            "n_prompts": len(examples),
            "prompts_per_domain": counts,
            "regex_set": REGEX_SET if args.scoring == "upstream" else "chat: last 'Score: N'",
        },
    )

    ###############
    # Score (appends to predictions.jsonl as prompts complete; resumes what is missing or failed)
    ###############
    log = RecordLog(run.file("predictions.jsonl"), key=rmbench.RECORD_KEY)
    forget_failures(log)

    def make_record(example, scores, extra):  # a missing score is None: it loses every comparison, no tie
        unparsed = [kind == "unparsed" for kind in extra["kinds"]]
        return rmbench.prediction_record(
            example,
            scores,
            {
                "parse_failed_chosen": unparsed[: rmbench_metrics.N_STYLES],
                "parse_failed_rejected": unparsed[rmbench_metrics.N_STYLES :],
                **style_answer_fields(extra, ("judge_text",)),
            },
            score_name="score",
        )

    score_into_log(scorer, examples, log, make_record, unit="prompt", desc=f"RM-Bench via {args.model}")

    ###############
    # Metrics and outputs
    ###############
    records = log.ordered(e.id for e in examples)
    parse_failures = parse_failure_counts(records)  # metrics.json gets these from rmbench_metrics.compute_metrics
    notes = (
        f"Answers without a score: {parse_failures['n_parse_failures']} of {parse_failures['n_judgements']} "
        f"({pct(parse_failures['parse_failure_rate'])}%), in {parse_failures['records_with_parse_failure']} "
        "prompts; each loses every comparison it is in (upstream scored it 0). Ties count as wrong."
    )
    metrics, markdown = rmbench.write_outputs(
        run,
        records,
        api=ApiUsage.of(client),
        title=f"Self-Rewarding judge via {args.model} ({args.scoring}) on RM-Bench",
        upstream_file=f"accuracy-rm-bench-{model_short}-scores.json",
        method="api_self_rewarding",
        score_name="score",
        extra_markdown=notes,
        coverage=coverage,
    )
    print(markdown)
    logger.info("outputs in %s", run.path)
    if args.push_to_hub:
        hub.push_records(records, hub.repo_id(args.hf_user, f"RM-Bench-{model_short}-api-scores"), split_by="domain")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
