"""IPO self-improvement: the model samples responses, judges them itself by P(Yes), and DPO trains on best vs worst.

Upstream's DPO/ours.py (the paper's self-improvement experiment): 4 samples per instruction at temperature
0.7, each scored by the same model's Yes/No judge with its category's question, chosen = highest P(Yes),
rejected = lowest, then one round of DPO (sigmoid loss, beta 0.1) with a LoRA adapter. The paper's command
works as it was (every flag now does what it says):

    python DPO/ours.py --model_id mistralai/Mistral-7B-Instruct-v0.1 --dataset_name Ayush-Singh/UltraFeedback-1k-Each \
        --split_name split_1 --num_train_epochs 1 --learning_rate 5e-5 --dpo_beta 0.1 --output_dir outputs \
        --run_name ipo-mistral --merge_adapters --load_in_4bit

Offline, on the embedded SmolLM2-135M-Instruct and the project's demo prompts (a few minutes on a CPU):

    python DPO/ours.py --model_id "$(python -m ipo.assets smollm2)" --dataset_name data/demo_prompts.jsonl \
        --prompt_format chat --max_new_tokens 32 --max_steps 2 --per_device_train_batch_size 2 --lora_r 16 \
        --lora_alpha 32 --merge_adapters --judge_after

The run folder <output_dir>/<run_name>/ holds config.json, metrics.json, results.md and one folder per round
(responses.jsonl -> scored.jsonl -> pairs.jsonl -> adapter/ -> merged/). Re-running the same command resumes:
each stage redoes only what its file lacks, and training restarts from its last checkpoint.
"""

from __future__ import annotations

import argparse
import sys

from ipo import IpoError, cli, hub, selfimprove
from ipo.runs import RunDir, atomic_write_json, atomic_write_text, seed_everything
from ipo.sampling import add_sampling_args, check_can_generate, sampling_settings_from_args
from ipo.training import add_training_args, options_from_args

logger = cli.logger

UPSTREAM_MODEL = "mistralai/Mistral-7B-Instruct-v0.1"


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_model_args(parser, default_model=UPSTREAM_MODEL)
    parser.add_argument("--model_id", dest="model_name", default=argparse.SUPPRESS,
                        help="upstream's name for --model_name: policy, judge and DPO reference of round 1")  # fmt: skip
    data = parser.add_argument_group("prompts and pair files")
    data.add_argument("--dataset_name", default=selfimprove.DEFAULT_PROMPTS,
                      help="prompt pool: a Hub dataset or a local json/jsonl/parquet file with columns "
                           "'instruction' and 'category' (chat, code, math, safety)")  # fmt: skip
    data.add_argument("--split_name", default=selfimprove.DEFAULT_SPLIT, help="split of a Hub --dataset_name")
    data.add_argument("--max_prompts", type=int, default=None, help="use only the first N prompts (smoke runs)")
    data.add_argument("--test_fraction", type=float, default=0.1,
                      help="seeded fraction of prompts held out of training; their pairs are the eval set "
                           "(upstream evaluated on the training pairs); 0 = no eval set")  # fmt: skip
    data.add_argument("--train_path", default=None,
                      help="also write round 1's training pairs here, as upstream's DPO-format JSON list")
    data.add_argument("--test_path", default=None,
                      help="also write round 1's held-out pairs here (never the training pairs)")
    data.add_argument("--mapped_path", default=None,
                      help="also write upstream's intermediate 'Assistant:/Response:' JSON here")
    data.add_argument("--dataset_id", default=None,
                      help="accepted for upstream's command and unused: upstream read it only in a fallback that "
                           "trained on human UltraFeedback labels; train on a preference dataset with "
                           "DPO/train_preferences.py")  # fmt: skip
    add_sampling_args(parser)
    judge = parser.add_argument_group("Yes/No judge (same model; the scoring mode follows --prompt_format)")
    judge.add_argument("--judge_max_length", type=int, default=1024, help="max judge prompt tokens (upstream: 1024)")
    judge.add_argument("--judge_batch_size", type=int, default=8, help="max sequences per judge forward pass")
    judge.add_argument("--max_batch_tokens", type=int, default=8192, help="max padded tokens per judge forward pass")
    judge.add_argument("--no_prefix_sharing", dest="prefix_sharing", action="store_false",
                       help="run every judge prompt in full instead of sharing a prompt's prefix")  # fmt: skip
    add_training_args(parser)
    loop = parser.add_argument_group("the loop")
    loop.add_argument("--rounds", type=int, default=1,
                      help="self-improvement rounds; round k samples and judges with round k-1's merged model "
                           "(the paper ran 1)")  # fmt: skip
    loop.add_argument("--stop_after", choices=list(selfimprove.STAGES), default=None,
                      help="run the stages up to this one (those already done are skipped), then stop")
    loop.add_argument("--just_sample", action="store_true",
                      help="upstream's flag: stop once the pairs are written (= --stop_after pairs)")
    loop.add_argument("--judge_after", action="store_true",
                      help="after training, sample the same prompts from the trained model and judge them with "
                           "the round's judge: before/after scores in metrics.json")  # fmt: skip
    cli.add_output_args(parser)
    hub_group = parser.add_argument_group("Hugging Face Hub (nothing is uploaded without --push_to_hub)")
    hub_group.add_argument("--push_to_hub", action="store_true",
                           help="upload the last round's merged model (or its adapter) with its tokenizer")
    hub_group.add_argument("--hub_repo_id", default=None,
                           help="target repo, 'user/name' or 'name' (upstream: dpo-ultrafeedback-<model>)")
    args = parser.parse_args(argv)
    cli.check_positive(parser, args, "rounds", "max_prompts", "num_return_sequences", "max_new_tokens",
                       "sample_batch_size", "judge_batch_size", "max_batch_tokens", "judge_max_length")  # fmt: skip
    if args.num_return_sequences < 2:
        parser.error("--num_return_sequences must be at least 2 to form a pair")
    if not 0 <= args.test_fraction < 1:
        parser.error(f"--test_fraction must be in [0, 1), got {args.test_fraction}")
    if args.test_path and args.train_path and cli_paths_equal(args.test_path, args.train_path):
        parser.error("--test_path equals --train_path: the evaluation would run on the training pairs; "
                     "give another file, or omit --test_path")  # fmt: skip
    if args.test_path and args.test_fraction == 0:
        parser.error("--test_path needs held-out pairs: set --test_fraction > 0")
    if args.just_sample and args.stop_after not in (None, "pairs"):
        parser.error(f"--just_sample means --stop_after pairs, not {args.stop_after}")
    return args


def cli_paths_equal(a: str, b: str) -> bool:
    import os

    return os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.log_level)
    seed_everything(args.seed)
    model_short = cli.model_short_name(args.model_name)
    if args.dataset_id:
        logger.warning("--dataset_id %s is not used: the pairs are self-generated from --dataset_name "
                       "(upstream used it only in a fallback on human labels)", args.dataset_id)  # fmt: skip

    ###############
    # Prompts, model check, run folder
    ###############
    prompts = selfimprove.load_prompts(args.dataset_name, args.split_name, args.prompt_format, args.max_prompts)
    logger.info("%d prompts from %s", len(prompts), args.dataset_name)
    stop_ids = check_can_generate(args.model_name, args.trust_remote_code)
    run = RunDir(args.output_dir, args.run_name or f"dpo-{model_short}-{args.prompt_format}", overwrite=args.overwrite)
    run.check(cli.public_args(args))
    training = options_from_args(args)
    settings = selfimprove.LoopSettings(
        model=args.model_name, prompt_format=args.prompt_format, sampling=sampling_settings_from_args(args),
        training=training, rounds=args.rounds, stop_after=args.stop_after or ("pairs" if args.just_sample else None),
        test_fraction=args.test_fraction, seed=args.seed, merge_final=args.merge_adapters,
        judge_after=args.judge_after, dtype=args.dtype, device=args.device, quantized=args.quantized,
        trust_remote_code=args.trust_remote_code, sample_batch_size=args.sample_batch_size,
        run_name=run.path.name, train_path=args.train_path, test_path=args.test_path, mapped_path=args.mapped_path,
    )  # fmt: skip
    judge = selfimprove.yes_no_judge_spec(args.prompt_format, scoring=args.prompt_format,
                                          max_length=args.judge_max_length, batch_size=args.judge_batch_size,
                                          max_batch_tokens=args.max_batch_tokens,
                                          prefix_sharing=args.prefix_sharing)  # fmt: skip
    run.start(cli.public_args(args), resolved={"n_prompts": len(prompts), "stop_token_ids": stop_ids,
                                                "judge": judge.name, "tie_break": judge.tie_break})  # fmt: skip

    ###############
    # The loop: sample -> judge -> pairs -> DPO -> merge (-> judge after), per round
    ###############
    result = selfimprove.run_loop(run.path, prompts, settings, judge,
                                  on_resolved=lambda found: run.update_resolved(**found))  # fmt: skip

    ###############
    # Outputs
    ###############
    summary = {"rounds": result.rounds, "stopped_after": result.stopped_after, "final_model": result.final_model}
    atomic_write_json(run.file("metrics.json"), summary)
    markdown = selfimprove.loop_markdown(result.rounds, f"IPO self-improvement ({args.prompt_format}): {model_short}")
    atomic_write_text(run.file("results.md"), markdown)
    print(markdown)
    logger.info("outputs in %s", run.path)
    if args.push_to_hub:
        if result.stopped_after or not result.final_model:
            raise IpoError("--push_to_hub: nothing trained yet to upload (the run stopped before training)")
        repo = args.hub_repo_id or f"dpo-ultrafeedback-{args.model_name.replace('/', '-')}"
        hub.push_folder(result.final_model, repo if "/" in repo else hub.repo_id(None, repo),
                        what="merged model" if result.final_model.endswith("merged") else "LoRA adapter")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
