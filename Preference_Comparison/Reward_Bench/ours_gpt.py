"""IPO through an API model on RewardBench: P(Yes) from the first generated token's top log-probabilities.

Upstream's Preference_Comparison/Reward_Bench/ours_gpt.py on the shared `ipo` core, for any
OpenAI-compatible endpoint. The key comes from the environment (OPENAI_API_KEY, or the variable named by
--api_key_env), never from the command line:

    export OPENAI_API_KEY=sk-...
    python Preference_Comparison/Reward_Bench/ours_gpt.py --model gpt-4o-mini

The paper's setting, through OpenRouter:

    export OPENROUTER_API_KEY=sk-or-...
    python Preference_Comparison/Reward_Bench/ours_gpt.py --base_url https://openrouter.ai/api/v1 \
        --api_key_env OPENROUTER_API_KEY --model openai/chatgpt-4o-latest

A local vLLM server (`vllm serve Qwen/Qwen2.5-7B-Instruct`), on the project's sample pairs:

    OPENAI_API_KEY=EMPTY python Preference_Comparison/Reward_Bench/ours_gpt.py \
        --base_url http://localhost:8000/v1 --model Qwen/Qwen2.5-7B-Instruct --dataset data/demo_rewardbench.jsonl

Outputs in <output_dir>/<run_name>/: config.json, predictions.jsonl, metrics.json (with failures and both
accuracies), results.md, subset_accuracy.png and upstream's accuracy_reward-bench_yesno_<model>.json.
Answers are cached in <output_dir>/api_cache/; re-running the same command resumes, pays for nothing twice
and tries failed pairs again.
"""

from __future__ import annotations

import sys

from ipo import cli, hub
from ipo.benchmarks import rewardbench
from ipo.benchmarks.api_failures import ApiUsage, forget_failures, pending_examples
from ipo.cli.api import add_api_args, check_api_args, client_from_args
from ipo.judges import api
from ipo.prompts import REWARDBENCH_LAYOUT
from ipo.runs import RecordLog, score_into_log

logger = cli.logger


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_api_args(
        parser,
        prompt_format_help=(
            "upstream: ours_gpt.py's wrapper, the first Yes and first No among the top 10 log-probabilities, "
            "max_tokens 2, temperature 0.7; chat: the chat-mode prompt layout of the local judge, all Yes and "
            "all No variants among the top 20 summed, max_tokens 1, temperature 0"
        ),
    )
    cli.add_rewardbench_data_args(parser)
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
    # Data and run folder
    ###############
    examples, coverage = rewardbench.load_examples(args.dataset, args.split, args.limit)
    run = cli.run_dir(args, f"rewardbench-{args.split}-{model_short}-api-yesno-{args.scoring}", args.dataset)
    run.check(cli.public_args(args))

    ###############
    # Judge: one request per response; the first uncached one is sent alone to check key, URL and model
    ###############
    def requests_for(example):
        template, _ = rewardbench.judge_template(example.subset)
        return [
            api.yes_no_request(
                args.scoring, api.yes_no_content(args.scoring, REWARDBENCH_LAYOUT, template, example.prompt, response)
            )
            for response in example.responses
        ]

    scorer = api.ApiScorer(client, requests_for, parse=lambda response: api.parse_yes_no(response, args.scoring))
    scorer.probe(pending_examples(examples, run, args.overwrite))
    run.start(
        cli.public_args(args),
        resolved={
            **client.describe(),
            "request": api.YES_NO_REQUEST[args.scoring],
            "n_pairs": len(examples),
        },
    )

    ###############
    # Score (appends to predictions.jsonl as pairs complete; resumes what is missing or failed)
    ###############
    log = RecordLog(run.file("predictions.jsonl"))
    forget_failures(log)

    def make_record(example, p_yes, extra):
        if extra["failure"]:  # no score for the pair; the answered side's value is kept
            record = {
                "id": example.id,
                "subset": example.subset,
                "p_yes_chosen": p_yes[0],
                "p_yes_rejected": p_yes[1],
                "correct": False,
                "tie": False,
            }
        else:
            record = rewardbench.pair_record(example, p_yes[0], p_yes[1])
        return {**record, **api.answer_fields(extra, ("chosen", "rejected"), keys=("logprob_yes", "logprob_no"))}

    score_into_log(scorer, examples, log, make_record, unit="pair", desc=f"RewardBench via {args.model}")

    ###############
    # Metrics and outputs
    ###############
    records = log.ordered(e.id for e in examples)
    metrics, markdown = rewardbench.write_outputs(
        run,
        records,
        api=ApiUsage.of(client),
        title=f"IPO judge via {args.model} ({args.scoring}) on RewardBench {args.split}",
        upstream_file=f"accuracy_reward-bench_yesno_{model_short}.json",
        method="api_ipo",
        coverage=coverage,
    )
    print(markdown)
    logger.info("outputs in %s", run.path)
    if args.push_to_hub:
        hub.push_records(records, hub.repo_id(args.hf_user, f"reward-bench-{model_short}-yes-no"), split_by="subset")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
