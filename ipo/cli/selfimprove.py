"""The command line of the self-improvement scripts.

DPO/ours.py, DPO/self_reward.py and DPO/reward_model.py share every flag but their judge's (``add_loop_args``);
the sampling flags are also DPO/sample_responses.py's and DPO/Evals/sample_mmlu.py's (``add_sampling_args``).
The flags become values here (``sampling_settings_from_args``, ``loop_settings``), and ``start_run`` opens the
run folder the loop scripts write. Every flag is checked (``check_loop_args``, ``check_sampling_args``) before
anything is loaded or written.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable

from ipo import IpoError, cli
from ipo.cli.training import add_training_args, options_from_args
from ipo.judges.server import connect, make_yes_no_judge
from ipo.modeling import load_tokenizer
from ipo.parallel import current_ranks
from ipo.runs import RunDir
from ipo.selfimprove.judging import JudgeSpec
from ipo.selfimprove.loop import STAGES, LoopSettings, check_loop_settings
from ipo.selfimprove.pairs_from import SOURCE_ARGS, PairsSource, check_source_judge, find_source
from ipo.selfimprove.prompts_pool import DEFAULT_PROMPTS, DEFAULT_SPLIT
from ipo.selfimprove.sampling import SamplingSettings, check_can_generate, check_sampling_settings

logger = logging.getLogger("ipo")


# ---------------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------------
def add_sampling_args(
    parser: argparse.ArgumentParser, defaults: dict | None = None, helps: dict[str, str] | None = None
) -> None:
    """Sampling flags of DPO/ours.py, DPO/self_reward.py, DPO/sample_responses.py and DPO/Evals/sample_mmlu.py
    (and DPO/Evals/downstream.py's answers). ``defaults`` and ``helps`` ({flag dest: text}) replace the
    self-improvement loop's defaults and help texts for a script whose sampling serves another purpose."""
    d = {**vars(SamplingSettings()), **(defaults or {})}
    text = {
        "prompt_format": "upstream: the raw instruction, as the paper sampled (and [INST] DPO records); "
        "chat: the tokenizer's chat template for sampling and training",
        "num_return_sequences": "responses sampled per prompt (paper: 4)",
        "temperature": "sampling temperature (paper: 0.7); 0 = greedy",
        "max_new_tokens": "max tokens per response (paper: 256)",
        **(helps or {}),
    }
    group = parser.add_argument_group("sampling")
    cli.add_prompt_format_arg(
        group, "prompt_format", default=d.get("prompt_format", "upstream"), help=text["prompt_format"]
    )
    group.add_argument(
        "--num_return_sequences",
        "--num_responses",
        dest="num_return_sequences",
        type=int,
        default=d["num_return_sequences"],
        help=text["num_return_sequences"],
    )
    group.add_argument("--temperature", type=float, default=d["temperature"], help=text["temperature"])
    group.add_argument("--max_new_tokens", type=int, default=d["max_new_tokens"], help=text["max_new_tokens"])
    group.add_argument(
        "--top_k",
        type=int,
        default=d["top_k"],
        help="top-k filter; default: the model's generation config, else 50 (what upstream ran with)",
    )
    group.add_argument(
        "--top_p",
        type=float,
        default=d["top_p"],
        help="nucleus filter; default: the model's generation config, else 1.0",
    )
    group.add_argument(
        "--sample_batch_size",
        type=int,
        default=d.get("sample_batch_size", 16),
        help="prompts per generate call (x num_return_sequences rows); samples do not depend on it",
    )


def check_sampling_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One-line usage errors for the flags of ``add_sampling_args`` (and --max_prompts where a script has it)."""
    cli.check_positive(parser, args, "max_prompts", "num_return_sequences", "max_new_tokens", "sample_batch_size")
    try:
        check_sampling_settings(sampling_settings_from_args(args))
    except IpoError as err:
        parser.error(str(err))


def sampling_settings_from_args(args: argparse.Namespace) -> SamplingSettings:
    """The values of the add_sampling_args flags (and --seed), for the core."""
    return SamplingSettings(
        num_return_sequences=args.num_return_sequences,
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )


# ---------------------------------------------------------------------------------------------------
# The loop scripts: DPO/ours.py and DPO/self_reward.py (everything but the judge)
# ---------------------------------------------------------------------------------------------------
def add_loop_args(
    parser: argparse.ArgumentParser,
    default_model: str,
    judge_args: Callable | None = None,
    training_defaults: dict | None = None,
) -> None:
    """The flags of a self-improvement script: model, prompts and pair files, sampling, ``judge_args(parser)``
    (the script's judge group), training (``training_defaults`` override TrainingOptions' values), the
    loop, outputs and the Hub. Upstream's flags are all accepted."""
    cli.add_model_args(parser, default_model=default_model)
    parser.add_argument(
        "--model_id",
        dest="model_name",
        default=argparse.SUPPRESS,
        help="upstream's name for --model_name: policy, judge and DPO reference of round 1",
    )
    data = parser.add_argument_group("prompts and pair files")
    data.add_argument(
        "--dataset_name",
        default=DEFAULT_PROMPTS,
        help="prompt pool: a Hub dataset or a local json/jsonl/parquet file with a column "
        "'instruction' and, where the judge's question depends on it, 'category' (chat, code, "
        "math, safety)",
    )
    data.add_argument("--split_name", default=DEFAULT_SPLIT, help="split of a Hub --dataset_name")
    data.add_argument("--max_prompts", type=int, default=None, help="use only the first N prompts (smoke runs)")
    data.add_argument(
        "--test_fraction",
        type=float,
        default=0.1,
        help="seeded fraction of prompts held out of training; their pairs are the eval set "
        "(upstream evaluated on the training pairs); 0 = no eval set",
    )
    data.add_argument(
        "--train_path",
        default=None,
        help="also write round 1's training pairs here, as upstream's DPO-format JSON list",
    )
    data.add_argument(
        "--test_path", default=None, help="also write round 1's held-out pairs here (never the training pairs)"
    )
    data.add_argument(
        "--mapped_path", default=None, help="also write upstream's intermediate 'Assistant:/Response:' JSON here"
    )
    data.add_argument(
        "--pairs_from",
        default=None,
        help="train on the pairs of a finished run (its folder: round 1; or RUN/round_k) instead of sampling and "
        "judging again: its model, prompts, prompt format, held-out split, sampling and judge settings are used, "
        "this command's training settings (e.g. another --beta) (DPO/README.md 'Train again on a run's pairs')",
    )
    data.add_argument(
        "--dataset_id",
        default=None,
        help="accepted for upstream's command and unused: upstream read it only in a fallback that "
        "trained on human UltraFeedback labels; train on a preference dataset with "
        "DPO/train_preferences.py",
    )
    add_sampling_args(parser)
    cli.add_backend_args(parser)
    if judge_args is not None:
        judge_args(parser)
    add_training_args(parser, training_defaults)
    loop = parser.add_argument_group("the loop")
    loop.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="self-improvement rounds; round k samples and judges with round k-1's merged model (the paper ran 1)",
    )
    loop.add_argument(
        "--stop_after",
        choices=list(STAGES),
        default=None,
        help="run the stages up to this one (those already done are skipped), then stop",
    )
    loop.add_argument(
        "--just_sample",
        action="store_true",
        help="upstream's flag: stop once the pairs are written (= --stop_after pairs)",
    )
    loop.add_argument(
        "--judge_after",
        action="store_true",
        help="after training, sample the same prompts from the trained model and judge them with "
        "the round's judge: before/after scores in metrics.json",
    )
    cli.add_output_args(parser)
    hub_group = parser.add_argument_group("Hugging Face Hub (nothing is uploaded without --push_to_hub)")
    hub_group.add_argument(
        "--push_to_hub",
        action="store_true",
        help="upload the last round's merged model (or its adapter) with its tokenizer",
    )
    hub_group.add_argument(
        "--hub_repo_id", default=None, help="target repo, 'user/name' or 'name' (upstream: dpo-ultrafeedback-<model>)"
    )


def check_loop_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One-line usage errors for the flags of ``add_loop_args``: all of them, the training flags included
    (ipo.selfimprove.loop.check_loop_settings), before any model is loaded or config.json is written. With
    --pairs_from, the source run's settings replace the command's first (``apply_pairs_source``)."""
    cli.check_positive(parser, args, "rounds")
    if args.pairs_from:
        try:
            apply_pairs_source(args)
        except IpoError as err:
            parser.error(str(err))
        if args.rounds != 1:
            parser.error("--pairs_from trains one round on the source's pairs; drop --rounds")
        if (args.stop_after or ("pairs" if args.just_sample else None)) in ("sample", "score", "pairs"):
            parser.error("--pairs_from skips sampling, judging and pairing: --stop_after train or merge, or none")
    check_sampling_args(parser, args)
    cli.check_backend_args(parser, args)
    if args.num_return_sequences < 2:
        parser.error("--num_return_sequences must be at least 2 to form a pair")
    if not 0 <= args.test_fraction < 1:
        parser.error(f"--test_fraction must be in [0, 1), got {args.test_fraction}")
    if args.test_path and args.train_path and same_path(args.test_path, args.train_path):
        parser.error(
            "--test_path equals --train_path: the evaluation would run on the training pairs; "
            "give another file, or omit --test_path"
        )
    if args.test_path and args.test_fraction == 0:
        parser.error("--test_path needs held-out pairs: set --test_fraction > 0")
    if args.just_sample and args.stop_after not in (None, "pairs"):
        parser.error(f"--just_sample means --stop_after pairs, not {args.stop_after}")
    try:
        check_loop_settings(loop_settings(args, args.run_name or "run"))
    except IpoError as err:
        parser.error(str(err))


def apply_pairs_source(args: argparse.Namespace) -> None:
    """--pairs_from: find the source round (one line when its pairs are not finished) and take the source run's
    values of SOURCE_ARGS (model, prompts, prompt format, held-out split, sampling, judge) over the command's,
    logging those that differ; ``args.pairs_from`` becomes the source's round folder (``pairs_source`` reads it)."""
    source = find_source(args.pairs_from)
    changed = []
    for key in SOURCE_ARGS:
        if key in source.args and hasattr(args, key) and getattr(args, key) != source.args[key]:
            changed.append(f"{key} {getattr(args, key)!r} -> {source.args[key]!r}")
            setattr(args, key, source.args[key])
    args.pairs_from = str(source.round_dir)  # config.json names the round, wherever the command pointed
    if changed:
        logger.info(
            "--pairs_from %s: the source run's settings replace this command's: %s", source.run, "; ".join(changed)
        )


def pairs_source(args: argparse.Namespace) -> PairsSource | None:
    """The --pairs_from source round (after ``apply_pairs_source``), or None."""
    return find_source(args.pairs_from) if getattr(args, "pairs_from", None) else None


def same_path(a: str, b: str) -> bool:
    return os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))


def note_unused_args(args: argparse.Namespace) -> None:
    """A warning for upstream's flags that are accepted and do nothing here."""
    if args.dataset_id:
        logger.warning(
            "--dataset_id %s is not used: the pairs are self-generated from --dataset_name "
            "(upstream used it only in a fallback on human labels)",
            args.dataset_id,
        )


def loop_settings(args: argparse.Namespace, run_name: str, cut_responses_at: str | None = None) -> LoopSettings:
    """The values of the add_loop_args flags, for ipo.selfimprove.loop.Loop."""
    return LoopSettings(
        model=args.model_name,
        prompt_format=args.prompt_format,
        sampling=sampling_settings_from_args(args),
        training=options_from_args(args),
        rounds=args.rounds,
        stop_after=args.stop_after or ("pairs" if args.just_sample else None),
        test_fraction=args.test_fraction,
        seed=args.seed,
        merge_final=args.merge_adapters,
        judge_after=args.judge_after,
        dtype=args.dtype,
        device=args.device,
        quantized=args.quantized,
        trust_remote_code=args.trust_remote_code,
        sample_batch_size=args.sample_batch_size,
        cut_responses_at=cut_responses_at,
        run_name=run_name,
        train_path=args.train_path,
        test_path=args.test_path,
        mapped_path=args.mapped_path,
        source=pairs_source(args),
        server=cli.server_settings(args),
    )


def start_run(
    args: argparse.Namespace, judge: JudgeSpec, n_prompts: int, run_prefix: str, cut_responses_at: str | None = None
) -> tuple[RunDir, LoopSettings]:
    """Check that the model can end a response, then open the run folder (resumed when its settings match;
    refused while another run holds it) and write its config.json. The default folder is
    <run_prefix>-<model>-<prompt_format>. Under several processes the main one opens the folder and the
    others wait for it (and log warnings only)."""
    ranks = current_ranks()
    if not ranks.main:
        logger.setLevel(logging.WARNING)
    stop_ids = check_can_generate(args.model_name, args.trust_remote_code)
    model_short = cli.model_short_name(args.model_name)
    source = pairs_source(args)
    inputs = {args.dataset_name: "dataset", args.model_name: "model"}
    name = f"{run_prefix}-{model_short}-{args.prompt_format}"
    if source:  # the source's pairs and config.json are inputs: a resume after either changed is refused
        check_source_judge(source, judge.name)
        inputs.update({str(source.pairs): "dataset", str(source.config_path): "dataset", source.policy: "model"})
        name = f"{source.run.name}-{source.round_dir.name}-{args.loss_type}-beta{args.beta:g}-lr{args.learning_rate:g}"
    run = RunDir(args.output_dir, args.run_name or name, overwrite=args.overwrite, inputs=inputs)
    if source and same_path(str(run.path), str(source.run)):
        raise IpoError(f"--pairs_from {source.run} is this run's own folder: pass another --run_name")
    settings = loop_settings(args, run.path.name, cut_responses_at)
    if settings.server is not None and not source:  # the server answers, serves the model and can judge: or one line
        served = connect(args.model_name, settings.server, args.trust_remote_code)
        if judge.name == "yes_no":
            tokenizer = load_tokenizer(args.model_name, trust_remote_code=args.trust_remote_code)
            make_yes_no_judge(served, tokenizer, scoring=args.prompt_format)  # probes the P(Yes) method
    if ranks.main:
        run.check(cli.public_args(args))
        run.start(
            cli.public_args(args),
            resolved={
                "n_prompts": n_prompts,
                "stop_token_ids": stop_ids,
                "judge": judge.name,
                "tie_break": judge.tie_break,
                "cut_responses_at": cut_responses_at,
            },
        )
    ranks.wait()
    return run, settings


def hub_repo(args: argparse.Namespace) -> str:
    """--hub_repo_id, or upstream's name dpo-ultrafeedback-<model> under the logged-in account."""
    return args.hub_repo_id or f"dpo-ultrafeedback-{args.model_name.replace('/', '-')}"
