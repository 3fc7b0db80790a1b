"""Self-improvement layer: the model samples responses, judges them itself, and DPO trains on best vs worst.

May import plumbing (ipo/*.py), ipo.judges and ipo.training; never ipo.benchmarks or ipo.cli. Settings
arrive as values (``LoopSettings``, ``SamplingSettings``, ``TrainingOptions``); the flags that fill them
live in ipo/cli/selfimprove.py, and DPO/ours.py, DPO/self_reward.py and DPO/reward_model.py call the stages
one by one.

Modules (one per step of a round, so that each stage's rules can be read on their own):
    prompts_pool  the prompt pool: Prompt, load_prompts, the judge key of each category
    sampling      Sampler (batched, seeded per prompt and sample), sample_into_log (the sample stage)
    judging       JudgeSpec of the Yes/No, 5-point and reward-model judges, the judge stage's log, judge_summary
    pairs         pure pair selection (ties, held-out split), upstream's exported files
    loop          LoopSettings and their checks, Loop and Round (the stages, resumable)
    pairs_from    --pairs_from: train again on a finished round's pairs (source settings, split check, copy)
    outputs       metrics.json (run, held_out), results.md headlined by the held-out change, figures, upload

Several processes (torchrun, accelerate launch): prompts sharded, one writer, a GPU each, by ipo/parallel.py.
"""
