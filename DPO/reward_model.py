"""Reward-model self-improvement: the model samples responses, an external reward model scores them, and DPO trains
on best vs worst.

The paper's third downstream arm, "Reward (Skywork RM)" (Garg et al. 2025, arXiv 2502.16182, the downstream table
of the DPO-trained Mistral-7B): DPO/ours.py's loop with a sequence-classification reward model in place of the
model's own Yes/No judge. Upstream has no script for it (its repository stops at the IPO and Self-Rewarding arms)
and the paper names no checkpoint; docs/differences.md says what is assumed. The policy, prompts, sampling, pairs
(chosen = highest reward, rejected = lowest), held-out split and DPO settings are DPO/ours.py's, so the arms
differ by the judge alone. The reward is the raw logit of the reward model's one-label head in float32, on the
reward model's chat template (a user and an assistant turn), as the RewardBench reward-model baseline scores
(ipo/judges/reward_model.py). The paper's arm, then the downstream benchmarks of its merged model:

    python DPO/reward_model.py --model_id mistralai/Mistral-7B-Instruct-v0.1 \
        --reward_model Skywork/Skywork-Reward-Llama-3.1-8B-v0.2 --dataset_name Ayush-Singh/UltraFeedback-1k-Each \
        --split_name split_1 --num_train_epochs 1 --learning_rate 5e-5 --dpo_beta 0.1 --load_in_4bit \
        --merge_adapters --judge_after --output_dir outputs --run_name reward-model-mistral
    python DPO/Evals/downstream.py --model_name outputs/reward-model-mistral/round_1/merged \
        --output_dir outputs/downstream --run_name downstream-reward-model-mistral

A quick check of the whole chain on the same models (8 prompts, 2 optimizer steps; a GPU):

    python DPO/reward_model.py --max_prompts 8 --test_fraction 0.25 --max_new_tokens 32 --max_steps 2 \
        --per_device_train_batch_size 2 --lora_r 16 --lora_alpha 32 --warmup_ratio 0 --judge_after \
        --run_name reward-model-check

The policy is loaded to sample and freed before the reward model loads to judge; the reward model is freed
before training (a 7B policy and an 8B reward model never share the GPU). --judge_after samples the same
prompts from the trained model and the same reward model scores them: metrics.json "held_out" is the reward
model's mean reward on the held-out prompts before and after DPO. --pairs_from RUN trains again on a finished
run's pairs (another beta, loss or learning rate) and re-judges the held-out prompts with that run's reward model.

Stages, run folder, resume, rounds, merge, several processes (torchrun / accelerate launch) and outputs are
DPO/ours.py's (ipo/selfimprove/loop.py): <output_dir>/<run_name>/ holds config.json, metrics.json (its "run"
method is "dpo_loop_reward_model", which the collector, Preference_Comparison/collect.py, puts on the paper's
"Reward (Skywork RM)" row through a downstream run of the merged model), results.md and round_<k>/
(responses.jsonl -> scored.jsonl with each response's "reward" -> pairs.jsonl -> adapter/ -> merged/).
"""

from __future__ import annotations

import sys

from ipo import cli
from ipo.cli import selfimprove as loop_cli
from ipo.judges.batching import DEFAULT_BATCH_SIZE
from ipo.judges.reward_model import check_reward_model
from ipo.runs import seed_everything
from ipo.selfimprove.judging import reward_model_judge_spec
from ipo.selfimprove.loop import Loop
from ipo.selfimprove.outputs import push_final_model, write_outputs
from ipo.selfimprove.prompts_pool import load_prompts

logger = cli.logger

# The policy of upstream's DPO/ours.py (the IPO arm this arm is compared with in the paper's downstream table).
UPSTREAM_MODEL = "mistralai/Mistral-7B-Instruct-v0.1"
# The paper says "Skywork RM" without a checkpoint; the one the project's RewardBench recipe runs
# (recipes/paper/rewardbench.yaml), so that the arm's judge is the reward-model baseline of the RewardBench table.
DEFAULT_REWARD_MODEL = "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2"


def add_judge_args(parser) -> None:
    judge = parser.add_argument_group("reward-model judge (its own model, loaded after the policy is freed)")
    judge.add_argument(
        "--reward_model",
        default=DEFAULT_REWARD_MODEL,
        help="Hub id or local folder of a one-label sequence-classification reward model (default: the Skywork RM "
        "of recipes/paper/rewardbench.yaml; the paper names no checkpoint)",
    )
    judge.add_argument(
        "--input_format",
        choices=list(cli.PROMPT_FORMATS),
        default="chat",
        help="chat: the reward model's chat template, user and assistant turns (how Skywork's RMs were trained); "
        "upstream: the RewardBench scripts' raw 'Instruction: ...\\nResponse: ...' text",
    )
    judge.add_argument(
        "--judge_max_length",
        type=int,
        default=1024,
        help="max reward-model input tokens (the RewardBench reward-model baseline's --max_length: 1024)",
    )
    judge.add_argument(
        "--judge_batch_size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="max responses per reward-model forward pass (the token budget usually binds first)",
    )
    judge.add_argument(
        "--max_batch_tokens",
        type=int,
        default=None,
        help="max padded tokens per reward-model forward pass (default: 2048 on a CPU, 16384 on a GPU)",
    )
    judge.add_argument(
        "--reward_dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default=None,
        help="the reward model's weights dtype (default: --dtype's; its head runs in float32 either way)",
    )
    judge.add_argument(
        "--reward_quantized",
        action="store_true",
        help="load the reward model in 4-bit NF4 (bitsandbytes); off by default: 4-bit changes its rewards",
    )


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    loop_cli.add_loop_args(parser, default_model=UPSTREAM_MODEL, judge_args=add_judge_args)
    args = parser.parse_args(argv)
    loop_cli.check_loop_args(parser, args)  # with --pairs_from: the source run's reward model and its settings
    cli.check_positive(parser, args, "judge_max_length", "judge_batch_size", "max_batch_tokens")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)

    ###############
    # Setup: the judge is an external reward model, checked now (config and tokenizer) and loaded only to judge
    ###############
    cli.setup_logging(args.log_level)
    seed_everything(args.seed)
    loop_cli.note_unused_args(args)
    check_reward_model(
        args.reward_model, args.input_format, args.judge_max_length, args.trust_remote_code, flag="--judge_max_length"
    )
    judge = reward_model_judge_spec(
        args.reward_model,
        args.prompt_format,
        input_format=args.input_format,
        max_length=args.judge_max_length,
        batch_size=args.judge_batch_size,
        max_batch_tokens=args.max_batch_tokens,
        dtype=args.reward_dtype or args.dtype,
        quantized=args.reward_quantized,
        trust_remote_code=args.trust_remote_code,
    )

    ###############
    # Load prompts, then the run folder (a re-run of the same command resumes it)
    ###############
    prompts = load_prompts(
        args.dataset_name, args.split_name, args.prompt_format, args.max_prompts, require_category=judge.uses_category
    )
    logger.info("%d prompts from %s", len(prompts), args.dataset_name)
    run, settings = loop_cli.start_run(args, judge, len(prompts), run_prefix="dpo-reward-model")
    loop = Loop(run.path, prompts, settings, judge, on_resolved=lambda found: run.update_resolved(**found))

    for rnd in loop.rounds():  # each stage skips what an earlier run of the same command already wrote
        ###############
        # 1. Sample: N responses per prompt from this round's policy (round 1: the base model), then free it
        ###############
        rnd.sample()
        if rnd.stop_after("sample"):
            break

        ###############
        # 2. Judge: the reward model scores every response (raw logit of its head), then is freed
        ###############
        rnd.judge()
        if rnd.stop_after("score"):
            break

        ###############
        # 3. Pair: chosen = highest reward, rejected = lowest; held-out prompts give the eval pairs
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
        # Judge after (--judge_after): the trained model's samples, scored by the same reward model
        ###############
        rnd.judge_after()
        rnd.done()

    ###############
    # Save: metrics.json and results.md of the run; the upload with --push_to_hub
    ###############
    result = loop.result()
    if not loop.ranks.main:  # under several processes the main one writes the outputs
        return 0
    title = (
        f"Reward-model self-improvement ({args.prompt_format}): {cli.model_short_name(args.model_name)} judged by "
        f"{cli.model_short_name(args.reward_model)} ({args.input_format} input)"
    )
    print(write_outputs(run.path, result, title, method="dpo_loop_reward_model"))
    logger.info("outputs in %s", run.path)
    if args.push_to_hub:
        push_final_model(result, loop_cli.hub_repo(args))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
