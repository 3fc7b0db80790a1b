"""Self-Rewarding baseline through an API model on RewardBench: the model writes a 1-5 score for each
response under the additive 5-point prompt; a pair is right if chosen gets the higher score.

Upstream's Preference_Comparison/Reward_Bench/self_reward_gpt.py on the shared `ipo` core, for any
OpenAI-compatible endpoint. Upstream crashed after all its API calls (it read an `args.set_name` it never
defined); here --set_name is optional: all subsets by default, `upstream14` for the 14 subsets upstream
hard-coded, or upstream's local sets set1/set1_phi/set2/set3. The key comes from the environment:

    export OPENAI_API_KEY=sk-...
    python Preference_Comparison/Reward_Bench/self_reward_gpt.py --model gpt-4o-mini --set_name upstream14

The paper's setting, through OpenRouter:

    export OPENROUTER_API_KEY=sk-or-...
    python Preference_Comparison/Reward_Bench/self_reward_gpt.py --base_url https://openrouter.ai/api/v1 \
        --api_key_env OPENROUTER_API_KEY --model openai/chatgpt-4o-latest --set_name upstream14

A local vLLM server, on the project's sample pairs:

    OPENAI_API_KEY=EMPTY python Preference_Comparison/Reward_Bench/self_reward_gpt.py --prompt_format chat \
        --base_url http://localhost:8000/v1 --model Qwen/Qwen2.5-7B-Instruct --dataset data/demo_rewardbench.jsonl

--prompt_format upstream (default) sends upstream's request (the bullet variant of the prompt, max_tokens 200,
temperature 0.1) and reads the score with its regexes (exactly one `[:"]` and one whitespace before the
number, clamped to 1..5). --prompt_format chat sends the plain prompt greedily and reads the last "Score: N".
Either way an answer without a score is a counted failure (upstream scored it 0), never a score.

Outputs in <output_dir>/<run_name>/: config.json, predictions.jsonl (scores, judge texts, failures),
metrics.json (ties, parse failures, API failures, accuracy over all and over answered pairs), results.md,
subset_accuracy.png and upstream's accuracy_reward-bench_self_<model>-<set>.json. Answers are cached in
<output_dir>/api_cache/; re-running the same command resumes and pays for nothing twice.
"""

from __future__ import annotations

import sys

from ipo import cli, hub
from ipo.benchmarks import rewardbench
from ipo.benchmarks.api_failures import ApiUsage, forget_failures, pending_examples
from ipo.cli.api import add_api_args, check_api_args, client_from_args
from ipo.judges import api
from ipo.judges.self_reward import compare_scores, parse_failure_metrics
from ipo.prompts import SELF_REWARD_PROMPT_BULLET
from ipo.report import pct
from ipo.runs import RecordLog, score_into_log

logger = cli.logger
REGEX_SET = "gpt_rewardbench"  # upstream self_reward_gpt.py's own regexes (ipo.judges.self_reward.UPSTREAM_REGEX_SETS)


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_api_args(
        parser,
        prompt_format_help=(
            "upstream: self_reward_gpt.py's bullet prompt, max_tokens 200, temperature 0.1, its score regexes; "
            "chat: the plain 5-point prompt, temperature 0, the last 'Score: N' (1..5) of the answer"
        ),
    )
    cli.add_rewardbench_data_args(
        parser,
        rewardbench.SELF_REWARD_GPT_SETS,
        "score only a subset group: upstream14 = the 14 subsets upstream's "
        "self_reward_gpt.py hard-coded; set1..set3 = the local self_reward.py's",
    )
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
    set_label = args.set_name or "all"
    client = client_from_args(args)  # a missing key fails here, before anything is written

    ###############
    # Data and run folder
    ###############
    subsets = rewardbench.SELF_REWARD_GPT_SETS[args.set_name] if args.set_name else None
    examples, coverage = rewardbench.load_examples(args.dataset, args.split, args.limit, subsets, args.set_name)
    run = cli.run_dir(args, f"rewardbench-{args.split}-{model_short}-api-self-{args.scoring}-{set_label}", args.dataset)
    run.check(cli.public_args(args))

    ###############
    # Judge: one request per response; the first uncached one is sent alone to check key, URL and model
    ###############
    def requests_for(example):
        return [
            api.self_reward_request(
                args.scoring, api.self_reward_content(args.scoring, SELF_REWARD_PROMPT_BULLET, example.prompt, response)
            )
            for response in example.responses
        ]

    scorer = api.ApiScorer(
        client, requests_for, parse=lambda response: api.parse_self_reward(response, args.scoring, REGEX_SET)
    )
    scorer.probe(pending_examples(examples, run, args.overwrite))
    run.start(
        cli.public_args(args),
        resolved={
            **client.describe(),
            "request": api.SELF_REWARD_REQUEST[args.scoring],
            "n_pairs": len(examples),
            "regex_set": REGEX_SET if args.scoring == "upstream" else "chat: last 'Score: N'",
        },
    )

    ###############
    # Score (appends to predictions.jsonl as pairs complete; resumes what is missing or failed)
    ###############
    log = RecordLog(run.file("predictions.jsonl"))
    forget_failures(log)

    def make_record(example, scores, extra):
        correct, tie = compare_scores(scores[0], scores[1])  # a missing score makes the pair wrong, not a tie
        return {
            "id": example.id,
            "subset": example.subset,
            "score_chosen": scores[0],
            "score_rejected": scores[1],
            "correct": correct,
            "tie": tie,
            "parse_failed_chosen": extra["kinds"][0] == "unparsed",
            "parse_failed_rejected": extra["kinds"][1] == "unparsed",
            **api.answer_fields(extra, ("chosen", "rejected"), keys=("judge_text",)),
        }

    score_into_log(scorer, examples, log, make_record, unit="pair", desc=f"RewardBench via {args.model}")

    ###############
    # Metrics and outputs
    ###############
    records = log.ordered(e.id for e in examples)
    judged = parse_failure_metrics(records)
    judged["n_ties"] = sum(r["tie"] for r in records)
    notes = (
        f"Answers without a score: {judged['n_parse_failures']} of {2 * len(records)} "
        f"({pct(judged['parse_failure_rate'])}%), in {judged['pairs_with_parse_failure']} pairs (counted as "
        f"wrong; upstream scored them 0); accuracy without those pairs: "
        f"{pct(judged['accuracy_excluding_parse_failures'])}%. Ties: {judged['n_ties']} (counted as wrong)."
    )
    metrics, markdown = rewardbench.write_outputs(
        run,
        records,
        api=ApiUsage.of(client),
        title=f"Self-Rewarding judge via {args.model} ({args.scoring}) on RewardBench "
        f"{args.split}, {set_label} subsets",
        upstream_file=f"accuracy_reward-bench_self_{model_short}-{set_label}.json",
        method="api_self_rewarding",
        extra_metrics=judged,
        extra_markdown=notes,
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
