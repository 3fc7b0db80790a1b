"""Sample N responses per instruction (no judging): upstream's DPO/sample_responses.py on the shared sampler.

Upstream sampled 4 responses per instruction (4 separate generate calls, temperature 0.7, 256 new tokens)
and always pushed them to the Hub. Its command still works; the token and user are now optional and the
upload happens only with --push_to_hub:

    python DPO/sample_responses.py --dataset_name Ayush-Singh/UltraFeedback-1k-Each --split_name split_1 \
        --model_name mistralai/Mistral-7B-Instruct-v0.1 --username U --save_dataset_name responses --push_to_hub

Offline:

    python DPO/sample_responses.py --model_name "$(python -m ipo.assets smollm2)" \
        --dataset_name data/demo_prompts.jsonl --prompt_format chat --max_new_tokens 48

Through a serving engine (docs/serving.md), e.g. `vllm serve HuggingFaceTB/SmolLM2-135M-Instruct`, with the same
local tokenizer building the prompts:

    python DPO/sample_responses.py --model_name HuggingFaceTB/SmolLM2-135M-Instruct \
        --dataset_name data/demo_prompts.jsonl --backend server --base_url http://localhost:8000/v1

Writes <output_dir>/<run_name>/responses.jsonl (id, prompt, category, responses, n_tokens, finished) and
config.json; it is the same file DPO/ours.py writes in its sample stage. Re-running resumes.
"""

from __future__ import annotations

import sys

from ipo import cli, hub
from ipo.cli.selfimprove import add_sampling_args, check_sampling_args, sampling_settings_from_args
from ipo.judges.server import connect
from ipo.modeling import load_model_and_tokenizer, load_tokenizer
from ipo.runs import RecordLog, RunDir, seed_everything
from ipo.selfimprove.prompts_pool import DEFAULT_PROMPTS, DEFAULT_SPLIT, load_prompts
from ipo.selfimprove.sampling import check_can_generate, sample_into_log
from ipo.selfimprove.server_sampling import make_sampler

logger = cli.logger


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_model_args(parser)
    data = parser.add_argument_group("prompts")
    data.add_argument(
        "--dataset_name",
        default=DEFAULT_PROMPTS,
        help="Hub dataset or local json/jsonl/parquet file with an 'instruction' column",
    )
    data.add_argument("--split_name", default=DEFAULT_SPLIT, help="split of a Hub --dataset_name")
    data.add_argument("--max_prompts", type=int, default=None, help="use only the first N prompts (smoke runs)")
    add_sampling_args(parser)
    cli.add_backend_args(parser)
    cli.add_output_args(parser)
    upload = parser.add_argument_group("Hugging Face Hub (nothing is uploaded without --push_to_hub)")
    upload.add_argument(
        "--push_to_hub", action="store_true", help="upload {prompt, responses} as a Hub dataset (upstream always did)"
    )
    upload.add_argument("--username", dest="hf_user", default=None, help="Hub namespace (default: your account)")
    upload.add_argument("--save_dataset_name", default=None, help="Hub dataset name (default: the run name)")
    upload.add_argument(
        "--hf_api",
        dest="hf_key",
        default=None,
        help="DEPRECATED: a token on the command line leaks into shell history; use HF_TOKEN",
    )
    args = parser.parse_args(argv)
    check_sampling_args(parser, args)
    cli.check_backend_args(parser, args)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.log_level)
    cli.consume_secrets(args)
    seed_everything(args.seed)
    prompts = load_prompts(
        args.dataset_name, args.split_name, args.prompt_format, args.max_prompts, require_category=False
    )
    check_can_generate(args.model_name, args.trust_remote_code)
    model_short = cli.model_short_name(args.model_name)
    run = RunDir(
        args.output_dir,
        args.run_name or f"samples-{model_short}-{args.prompt_format}",
        args.overwrite,
        inputs={args.dataset_name: "dataset", args.model_name: "model"},
    )
    run.check(cli.public_args(args))
    server = cli.server_settings(args)
    if server is None:
        model, tokenizer, device, dtype = load_model_and_tokenizer(cli.model_spec(args))
    else:  # --backend server: the server answers and serves the model, or one line; only the tokenizer is local
        model = connect(args.model_name, server, args.trust_remote_code)
        tokenizer, device, dtype = load_tokenizer(args.model_name, trust_remote_code=args.trust_remote_code), None, None
    sampler = make_sampler(
        model, tokenizer, sampling_settings_from_args(args), batch_size=args.sample_batch_size, salt="round1"
    )  # the same random streams as round 1 of DPO/ours.py
    run.start(
        cli.public_args(args),
        resolved={"device": device, "dtype": str(dtype), "n_prompts": len(prompts), "sampling": sampler.resolved()},
    )
    log = RecordLog(run.file("responses.jsonl"))
    sample_into_log(sampler, tokenizer, prompts, log, args.prompt_format)
    records = log.ordered(p.id for p in prompts)
    unfinished = sum(not f for r in records for f in r["finished"])
    logger.info(
        "%d prompts x %d responses in %s (%d cut at --max_new_tokens)",
        len(records),
        args.num_return_sequences,
        log.path,
        unfinished,
    )
    if args.push_to_hub:
        name = args.save_dataset_name or run.path.name
        hub.push_records(
            [{"prompt": r["prompt"], "responses": r["responses"]} for r in records], hub.repo_id(args.hf_user, name)
        )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
