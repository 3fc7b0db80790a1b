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

On a serving engine (docs/serving.md; --model_name still gives the local tokenizer that builds the prompts):

    python DPO/ours.py --model_id mistralai/Mistral-7B-Instruct-v0.1 --dataset_name Ayush-Singh/UltraFeedback-1k-Each \
        --split_name split_1 --backend server --base_url http://localhost:8000/v1 --merge_adapters

The server samples and judges round 1; training, merging and later rounds run locally.

Another beta, loss or learning rate on a finished run's pairs, without sampling and judging again: --pairs_from
takes the source run's model, prompts, format, held-out split and judge, trains on its training pairs only and
judges the held-out prompts after (DPO/README.md "Train again on a run's pairs"), e.g. on the offline run above:

    python DPO/ours.py --pairs_from outputs/dpo-SmolLM2-135M-Instruct-chat --beta 0.3 --max_steps 2 \
        --per_device_train_batch_size 2 --lora_r 16 --lora_alpha 32 --warmup_ratio 0 --judge_after

The run folder <output_dir>/<run_name>/ holds config.json, metrics.json, results.md and one folder per round
(responses.jsonl -> scored.jsonl -> pairs.jsonl -> adapter/ -> merged/). Re-running the same command resumes:
each stage redoes only what its file lacks, and training restarts from its last checkpoint. Every flag is
checked before anything loads; a second run on a folder that a run holds stops at once.

On several GPUs, `torchrun --nproc_per_node N DPO/ours.py ...` (or `accelerate launch`): each process samples
and judges 1/N of the prompts on its own GPU, training is data-parallel over all N, and only the main process
writes the run's files (ipo/parallel.py).
"""

from __future__ import annotations

import sys

from ipo import cli
from ipo.cli import selfimprove as loop_cli
from ipo.judges.batching import DEFAULT_BATCH_SIZE
from ipo.runs import seed_everything
from ipo.selfimprove.judging import yes_no_judge_spec
from ipo.selfimprove.loop import Loop
from ipo.selfimprove.outputs import push_final_model, write_outputs
from ipo.selfimprove.prompts_pool import load_prompts

logger = cli.logger

UPSTREAM_MODEL = "mistralai/Mistral-7B-Instruct-v0.1"


def add_judge_args(parser) -> None:
    judge = parser.add_argument_group("Yes/No judge (same model; the scoring mode follows --prompt_format)")
    judge.add_argument("--judge_max_length", type=int, default=1024, help="max judge prompt tokens (upstream: 1024)")
    judge.add_argument(
        "--judge_batch_size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="max sequences per judge forward pass (the token budget usually binds first)",
    )
    judge.add_argument(
        "--max_batch_tokens",
        type=int,
        default=None,
        help="max padded tokens per judge forward pass (default: the judge's, 2048 on a CPU where "
        "small passes are faster, 16384 on a GPU)",
    )
    judge.add_argument(
        "--no_prefix_sharing",
        dest="prefix_sharing",
        action="store_false",
        help="run every judge prompt in full instead of sharing a prompt's prefix",
    )


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    loop_cli.add_loop_args(parser, default_model=UPSTREAM_MODEL, judge_args=add_judge_args)
    args = parser.parse_args(argv)
    loop_cli.check_loop_args(parser, args)
    cli.check_positive(parser, args, "judge_batch_size", "max_batch_tokens", "judge_max_length")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)

    ###############
    # Setup: the judge is the policy itself, asked the Yes/No question of each prompt's category
    ###############
    cli.setup_logging(args.log_level)
    seed_everything(args.seed)
    loop_cli.note_unused_args(args)
    judge = yes_no_judge_spec(
        args.prompt_format,
        scoring=args.prompt_format,
        max_length=args.judge_max_length,
        batch_size=args.judge_batch_size,
        max_batch_tokens=args.max_batch_tokens,
        prefix_sharing=args.prefix_sharing,
    )

    ###############
    # Load prompts, then the run folder (a re-run of the same command resumes it)
    ###############
    prompts = load_prompts(
        args.dataset_name, args.split_name, args.prompt_format, args.max_prompts, require_category=judge.uses_category
    )
    logger.info("%d prompts from %s", len(prompts), args.dataset_name)
    run, settings = loop_cli.start_run(args, judge, len(prompts), run_prefix="dpo")
    loop = Loop(run.path, prompts, settings, judge, on_resolved=lambda found: run.update_resolved(**found))

    for rnd in loop.rounds():  # each stage skips what an earlier run of the same command already wrote
        ###############
        # 1. Sample: N responses per prompt from this round's policy (round 1: the base model)
        ###############
        rnd.sample()
        if rnd.stop_after("sample"):
            break

        ###############
        # 2. Judge: the same model scores every response by P(Yes)
        ###############
        rnd.judge()
        if rnd.stop_after("score"):
            break

        ###############
        # 3. Pair: chosen = highest P(Yes), rejected = lowest; held-out prompts give the eval pairs
        ###############
        rnd.pair()
        if rnd.stop_after("pairs"):
            break

        ###############
        # 4. Train (DPO + LoRA) on the round's pairs, the policy as reference
        ###############
        rnd.train()
        if rnd.stop_after("train"):
            break

        ###############
        # 5. Merge the adapter into the policy: the next round's policy (the last round: --merge_adapters)
        ###############
        rnd.merge()
        if rnd.stop_after("merge"):
            break

        ###############
        # Judge after (--judge_after): the trained model's samples, judged by this round's judge
        ###############
        rnd.judge_after()
        rnd.done()

    ###############
    # Save: metrics.json and results.md of the run; the upload with --push_to_hub
    ###############
    result = loop.result()
    if not loop.ranks.main:  # under several processes the main one writes the outputs
        return 0
    title = f"IPO self-improvement ({args.prompt_format}): {cli.model_short_name(args.model_name)}"
    print(write_outputs(run.path, result, title, method="dpo_loop_ipo"))
    logger.info("outputs in %s", run.path)
    if args.push_to_hub:
        push_final_model(result, loop_cli.hub_repo(args))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
