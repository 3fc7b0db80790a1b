"""Self-Rewarding self-improvement: the model samples responses, scores them itself on the 5-point scale, and DPO
trains on best vs worst.

The paper's baseline arm (Yuan et al. 2024, Self-Rewarding Language Models; Garg et al. 2025, arXiv 2502.16182,
section 5), upstream's DPO/self_reward.py: DPO/ours.py with the additive 5-point judge (ipo/judges/self_reward.py,
shared with Preference_Comparison/*/self_reward.py) in place of the Yes/No judge. The judge writes a short justification
and a score for each response (greedy, 128 new tokens); chosen = best score, rejected = worst. Upstream's
command works as it was:

    python DPO/self_reward.py --model_id mistralai/Mistral-7B-Instruct-v0.2 \
        --dataset_name Ayush-Singh/UltraFeedback-1k-Each --split_name split_1 --num_train_epochs 1 \
        --learning_rate 5e-5 --dpo_beta 0.1 --output_dir outputs --run_name self-reward-mistral --merge_adapters \
        --load_in_4bit --dtype float16

Offline, on the embedded SmolLM2-135M-Instruct and the project's demo prompts (a few minutes on a CPU). A model
this small does not follow the rubric: in upstream mode every score is 0 and every pair a tie (kept, as upstream
kept them); in chat mode no judgement is readable, and the run stops after judging with one line saying so:

    python DPO/self_reward.py --model_id "$(python -m ipo.assets smollm2)" --dataset_name data/demo_prompts.jsonl \
        --prompt_format upstream --max_new_tokens 32 --max_new_tokens_judge 48 --test_fraction 0.25 --max_steps 2 \
        --per_device_train_batch_size 2 --lora_r 16 --lora_alpha 32 --warmup_ratio 0 --merge_adapters

On a serving engine (docs/serving.md; --model_name still gives the local tokenizer that builds the prompts):

    python DPO/self_reward.py --model_id mistralai/Mistral-7B-Instruct-v0.2 \
        --dataset_name Ayush-Singh/UltraFeedback-1k-Each --split_name split_1 --backend server \
        --base_url http://localhost:8000/v1 --merge_adapters


The judge's mode follows --prompt_format:
  upstream  raw-text 5-point prompt; upstream's regexes searched over prompt + generation, 0 when none matches
            (a 0 is a score, as upstream had it: it loses to any parsed score); every pair kept; score ties
            broken as upstream's sort of (response, (score, decoded text)) tuples broke them, i.e. by the
            decoded judge prompt + generation (which holds the response), in reverse string order; each sampled
            response is cut at a literal '<|eot_id|>', as upstream's sampler did.
  chat      chat template; the last "Score: N" of the judge's own text; a response without one is a parse
            failure and no candidate (a prompt with fewer than two scored responses gives no pair); ties drawn
            at random with --seed; tied and identical pairs dropped. All are counted in metrics.json.

Defaults follow upstream's self_reward.py where it differed from ours.py: Mistral-7B-Instruct-v0.2, batch 8,
eval batch 4, eval every 700 steps. Upstream trained in fp16 (fp16 weights and autocast); --dtype auto picks
bf16 on GPUs that have it, fp16 on older ones, fp32 on CPU; --dtype float16 reproduces upstream. Upstream
evaluated on its training pairs; here --test_fraction of the prompts is held out for evaluation.

Stages, run folder, resume, rounds, merge and outputs are DPO/ours.py's (ipo/selfimprove/loop.py): <output_dir>/
<run_name>/ holds config.json, metrics.json, results.md and round_<k>/ (responses.jsonl -> scored.jsonl with
each response's score, parse_failed and judge_text -> pairs.jsonl -> adapter/ -> merged/). Each stage frees its
model before the next loads one (upstream kept the sampling model in memory while it loaded the training model,
and ran out of memory).
"""

from __future__ import annotations

import sys

from ipo import cli
from ipo.cli import selfimprove as loop_cli
from ipo.judges.batching import DEFAULT_BATCH_SIZE
from ipo.prompts import UPSTREAM_END_MARKER
from ipo.runs import seed_everything
from ipo.selfimprove.judging import self_reward_judge_spec
from ipo.selfimprove.loop import Loop
from ipo.selfimprove.outputs import push_final_model, write_outputs
from ipo.selfimprove.prompts_pool import load_prompts

logger = cli.logger

UPSTREAM_MODEL = "mistralai/Mistral-7B-Instruct-v0.2"
# upstream self_reward.py's DPOConfig where it differed from ours.py's (6 / 3 / 300)
UPSTREAM_TRAINING = {"per_device_train_batch_size": 8, "per_device_eval_batch_size": 4, "eval_steps": 700}


def add_judge_args(parser) -> None:
    judge = parser.add_argument_group("5-point judge (same model; the mode follows --prompt_format)")
    judge.add_argument(
        "--judge_max_length",
        type=int,
        default=2048,
        help="max judge prompt tokens (upstream: 2048, cut on the right in upstream mode)",
    )
    judge.add_argument(
        "--max_new_tokens_judge",
        type=int,
        default=128,
        help="max tokens of each judgement (upstream: 128; the prompt asks for up to 100 words)",
    )
    judge.add_argument(
        "--judge_batch_size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="max judgements generated together (greedy; the token budget usually binds first)",
    )
    judge.add_argument(
        "--max_batch_tokens",
        type=int,
        default=None,
        help="max padded tokens per generation batch, new tokens included (unset: 16384)",
    )


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    loop_cli.add_loop_args(
        parser, default_model=UPSTREAM_MODEL, judge_args=add_judge_args, training_defaults=UPSTREAM_TRAINING
    )
    args = parser.parse_args(argv)
    loop_cli.check_loop_args(parser, args)
    cli.check_positive(parser, args, "judge_max_length", "max_new_tokens_judge", "judge_batch_size", "max_batch_tokens")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)

    ###############
    # Setup: the judge is the policy itself, writing a justification and a 1-5 score for each response
    ###############
    cli.setup_logging(args.log_level)
    seed_everything(args.seed)
    loop_cli.note_unused_args(args)
    judge = self_reward_judge_spec(
        args.prompt_format,
        max_length=args.judge_max_length,
        max_new_tokens=args.max_new_tokens_judge,
        batch_size=args.judge_batch_size,
        max_batch_tokens=args.max_batch_tokens,
    )
    cut_responses_at = UPSTREAM_END_MARKER if args.prompt_format == "upstream" else None  # as upstream's sampler

    ###############
    # Load prompts, then the run folder (a re-run of the same command resumes it)
    ###############
    prompts = load_prompts(
        args.dataset_name, args.split_name, args.prompt_format, args.max_prompts, require_category=judge.uses_category
    )
    logger.info("%d prompts from %s", len(prompts), args.dataset_name)
    run, settings = loop_cli.start_run(
        args, judge, len(prompts), run_prefix="dpo-self-reward", cut_responses_at=cut_responses_at
    )
    loop = Loop(run.path, prompts, settings, judge, on_resolved=lambda found: run.update_resolved(**found))

    for rnd in loop.rounds():  # each stage skips what an earlier run of the same command already wrote
        ###############
        # 1. Sample: N responses per prompt from this round's policy (round 1: the base model)
        ###############
        rnd.sample()
        if rnd.stop_after("sample"):
            break

        ###############
        # 2. Judge: the same model scores every response on the additive 5-point scale
        ###############
        rnd.judge()
        if rnd.stop_after("score"):
            break

        ###############
        # 3. Pair: chosen = best score, rejected = worst (unreadable scores take no part)
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
    title = f"Self-Rewarding self-improvement ({args.prompt_format}): {cli.model_short_name(args.model_name)}"
    print(write_outputs(run.path, result, title, method="dpo_loop_self_rewarding"))
    logger.info("outputs in %s", run.path)
    if args.push_to_hub:
        push_final_model(result, loop_cli.hub_repo(args))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
