"""What every script shares on the command line: one-line errors, flag groups, secrets, logging.

Flag groups live here so that a flag is spelled, defaulted and documented once for all scripts.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence

from ipo import IpoError
from ipo.benchmarks import rewardbench, rmbench, rmbench_metrics
from ipo.judges.batching import DEFAULT_BATCH_SIZE
from ipo.judges.server import (
    BACKENDS,
    DEFAULT_SERVER_KEY_ENV,
    DEFAULT_TOP_LOGPROBS,
    P_YES_METHODS,
    PROMPT_AS,
    ServerSettings,
    ServerYesNoJudge,
    check_server_settings,
    load_server_judge,
)
from ipo.judges.yes_no import load_judge
from ipo.modeling import ModelSpec
from ipo.prompts import PROMPT_FORMATS
from ipo.run_info import model_short_name  # noqa: F401 (the scripts call cli.model_short_name)
from ipo.runs import SECRET_ARGS, RunDir, release_locks

logger = logging.getLogger("ipo")
# bitsandbytes (imported by peft and trl even without 4-bit) asks every CPU user to `pip install kernels` for a
# faster 4-bit CPU kernel; only 4-bit runs on a CPU would use it, and they work without (more slowly). Set at
# import, before any script imports the training layer, so the line never reaches stderr.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


# Strings that look like a token wherever they appear: Hugging Face (hf_...) and OpenAI-style (sk-..., sk-or-...).
TOKEN_PATTERN = re.compile(r"(?<![A-Za-z0-9])(?:hf_|sk-)[A-Za-z0-9_-]{6,}")


def is_secret_flag(flag: str) -> bool:
    """--hf_key, --api_key and the rest of SECRET_ARGS, an abbreviation of one argparse would take (--hf_ke),
    or any flag named like a secret (--hf_token, --wandb_key, --password); not --api_key_env."""
    name = flag[2:] if flag.startswith("--") else ""
    return bool(name) and (
        name in SECRET_ARGS
        or (len(name) >= 4 and any(secret.startswith(name) for secret in SECRET_ARGS))
        or re.fullmatch(r"[\w-]*(key|token|secret|password)", name) is not None
    )


def scrub_secrets(text: str, argv: Sequence[str] = ()) -> str:
    """``text`` with '***' for every value a secret-looking flag takes in ``argv`` (``--hf_key X``,
    ``--hf_token=X``) and for every token-looking string (hf_..., sk-...)."""
    argv = list(argv)
    secrets = [value for flag, value in zip(argv, argv[1:]) if is_secret_flag(flag) and not value.startswith("--")]
    secrets += [token.split("=", 1)[1] for token in argv if "=" in token and is_secret_flag(token.split("=", 1)[0])]
    for secret in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return TOKEN_PATTERN.sub("***", text)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help appends each option's default, except an unset one (None, a flag's False, an empty list): those
    say nothing, or their help already says what happens ("default: the file's ..."), which a trailing
    "(default: None)" would contradict."""

    def _get_help_string(self, action):
        default = action.default
        if default is None or default is False or (isinstance(default, list) and not default):
            return action.help
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: `prog: error: message` on stderr, exit status 2, secrets scrubbed
    (argparse echoes what it did not recognise, e.g. `--hf_key hf_...` given to a script without that flag)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self._argv: list[str] = []

    def parse_known_args(self, args=None, namespace=None):
        self._argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {scrub_secrets(message, self._argv)} (see --help)\n")
        sys.exit(2)


def run(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Call a script's ``main(argv)``; report an IpoError as one line (exit 1), Ctrl-C as exit 130. The run
    folders' locks are released when it returns, however it ends."""
    try:
        return main(argv) or 0
    except IpoError as err:
        sys.stderr.write(f"error: {err}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: re-run the same command to resume where it stopped\n")
        return 130
    finally:
        release_locks()


def setup_logging(level: str = "info") -> None:
    """Timestamped `ipo` logs on stderr; silence the libraries' progress bars and chatter."""
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        level=getattr(logging, level.upper()),
        stream=sys.stderr,
        force=True,
    )
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()


# ---------------------------------------------------------------------------------------------------
# Flag groups
# ---------------------------------------------------------------------------------------------------
def add_model_args(parser: argparse.ArgumentParser, default_model: str | None = None) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model_name",
        "--model_name_or_path",
        dest="model_name",
        required=default_model is None,
        default=default_model,
        help="Hub id, local folder, or local .gguf file of the model",
    )
    group.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights dtype; auto = bf16 on GPUs that have it, fp16 on other GPUs, fp32 on CPU "
        "(upstream used fp16); the judge's Yes/No head and the reward head run in fp32 (docs/precision.md)",
    )
    group.add_argument(
        "--device",
        default="auto",
        help="auto, cpu, cuda, cuda:N, mps, or shard (one model spread over every visible GPU with "
        "transformers' device_map='auto'; inference only: judges, reward model, sampling)",
    )
    group.add_argument(
        "--quantized",
        action="store_true",
        help="load the model in 4-bit NF4 through bitsandbytes (upstream's --quantized)",
    )
    group.add_argument("--trust_remote_code", action="store_true", help="allow model code from the Hub")


def model_spec(args: argparse.Namespace) -> ModelSpec:
    """The values of the add_model_args flags, for the core."""
    return ModelSpec(
        args.model_name,
        dtype=args.dtype,
        device=args.device,
        quantized=args.quantized,
        trust_remote_code=args.trust_remote_code,
    )


def judge_settings(args: argparse.Namespace) -> dict:
    """The keyword arguments of judges.yes_no.load_judge from add_judge_args / add_batch_args."""
    return {
        "scoring": args.scoring,
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "max_batch_tokens": args.max_batch_tokens,
        "prefix_sharing": args.prefix_sharing,
    }


# ---------------------------------------------------------------------------------------------------
# The backend: the model in this process (hf) or behind a serving engine (server; docs/serving.md)
# ---------------------------------------------------------------------------------------------------
def add_backend_args(parser: argparse.ArgumentParser) -> None:
    """--backend hf|server and the server's flags: the same in every script that samples or judges Yes/No."""
    group = parser.add_argument_group("serving engine (--backend server; docs/serving.md)")
    group.add_argument(
        "--backend",
        choices=list(BACKENDS),
        default="hf",
        help="hf: the model runs in this process; server: sampling and Yes/No judging go to an OpenAI-compatible "
        "server (vLLM, SGLang, llama.cpp) at --base_url; --model_name still names the local tokenizer that "
        "builds the token-id prompts (its weights are not loaded)",
    )
    group.add_argument("--base_url", default=None, help="the server's API root, e.g. http://localhost:8000/v1")
    group.add_argument(
        "--served_model",
        default=None,
        help="the model id the server serves (its GET /v1/models); default: --model_name, the id `vllm serve "
        "MODEL` serves under",
    )
    group.add_argument(
        "--server_p_yes",
        choices=list(P_YES_METHODS),
        default="exact",
        help="exact: P(Yes) from vLLM's prompt_logprobs of each Yes/No token (equals the local judge); approx: "
        "from the first token's top log-probabilities (any server; marked approximate)",
    )
    group.add_argument(
        "--server_top_logprobs",
        type=int,
        default=DEFAULT_TOP_LOGPROBS,
        help="alternatives asked for with --server_p_yes approx (vLLM returns at most 20 unless started with "
        "--max-logprobs)",
    )
    group.add_argument(
        "--server_prompt",
        choices=list(PROMPT_AS),
        default="tokens",
        help="tokens: send the exact token ids (vLLM, SGLang); text: their decoded text, for servers that take "
        "only text (llama-cpp-python), approximate P(Yes) only",
    )
    group.add_argument(
        "--server_api_key_env",
        default=DEFAULT_SERVER_KEY_ENV,
        help="environment variable holding the server's API key (unset: none is sent)",
    )
    group.add_argument(
        "--server_concurrency",
        type=int,
        default=32,
        help="requests in flight (a continuous-batching engine wants many)",
    )
    group.add_argument("--server_timeout", type=float, default=600.0, help="seconds per request before it is retried")
    group.add_argument("--server_max_retries", type=int, default=5, help="retries of a failed request (backoff)")
    group.add_argument(
        "--server_retry_base_delay", type=float, default=1.0, help="seconds before the first retry, doubled each time"
    )


def server_settings(args: argparse.Namespace) -> ServerSettings | None:
    """The add_backend_args flags as ServerSettings, or None for --backend hf."""
    if getattr(args, "backend", "hf") != "server":
        return None
    return ServerSettings(
        base_url=args.base_url or "",
        served_model=args.served_model or args.model_name,
        p_yes_method=args.server_p_yes,
        top_logprobs=args.server_top_logprobs,
        key_env=args.server_api_key_env,
        timeout=args.server_timeout,
        max_retries=args.server_max_retries,
        retry_base_delay=args.server_retry_base_delay,
        max_concurrency=args.server_concurrency,
        prompt_as=args.server_prompt,
    )


def check_backend_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One-line usage errors for the add_backend_args flags; sends nothing (the server is asked when the run
    starts, before any model or config.json)."""
    if args.backend == "hf":
        given = [flag for flag in ("base_url", "served_model") if getattr(args, flag)]
        if given:
            parser.error(f"--{given[0]} is for --backend server; add --backend server or drop it")
        return
    if not args.base_url:
        parser.error("--backend server needs --base_url, e.g. http://localhost:8000/v1")
    try:
        check_server_settings(server_settings(args))
    except IpoError as err:
        parser.error(str(err))


def load_yes_no_judge(args: argparse.Namespace, spec: ModelSpec | None = None):
    """(judge, resolved settings) of the Yes/No judge scripts: the local model of ``spec`` (default: the flags';
    judges.yes_no.load_judge) or, with --backend server, the server's judge (checked and probed; only the
    tokenizer is loaded here)."""
    settings = server_settings(args)
    if settings is None:
        return load_judge(spec or model_spec(args), **judge_settings(args))
    return load_server_judge(
        args.model_name,
        settings,
        scoring=args.scoring,
        max_length=args.max_length,
        batch_size=args.batch_size,
        trust_remote_code=args.trust_remote_code,
    )


def backend_metrics(judge) -> dict:
    """What metrics.json says of a server judge: where P(Yes) came from, whether it is approximate, the missing
    ids of the approximate method and the client's request counts (retries, errors by kind) of this invocation;
    nothing for a local judge."""
    if not isinstance(judge, ServerYesNoJudge):
        return {}
    usage = judge.client.usage()
    return {"server_backend": {**judge.describe(), "stats": dict(judge.stats), "requests_this_invocation": usage}}


def add_rewardbench_data_args(
    parser: argparse.ArgumentParser, set_names: Sequence[str] = (), set_help: str = ""
) -> argparse._ArgumentGroup:
    """--dataset and --split of the RewardBench scripts, and --set_name where a script has subset groups."""
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset",
        default=rewardbench.HUB_ID,
        help="Hub dataset id, or a local .json/.jsonl/.parquet file in RewardBench's schema",
    )
    group.add_argument(
        "--split",
        default="raw",
        choices=list(rewardbench.SPLITS),
        help="raw: the unfiltered 5,123 pairs the paper's numbers come from; "
        "filtered: the 2,985 pairs of the official leaderboard",
    )
    if set_names:
        group.add_argument(
            "--set_name",
            default=None,
            choices=list(set_names),
            help=f"{set_help} (upstream required it; default: all subsets)",
        )
    return group


def add_rmbench_data_args(
    parser: argparse.ArgumentParser, set_names: Sequence[str] = (), set_help: str = ""
) -> argparse._ArgumentGroup:
    """--dataset and --domain of the RM-Bench scripts, and --set_name where a script has domain groups."""
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset",
        nargs="+",
        default=list(rmbench.UPSTREAM_HUB_IDS),
        help="one or more local .json/.jsonl/.parquet files or Hub ids, in the official RM-Bench "
        "format (chosen/rejected lists of 3, e.g. THU-KEG/RM-Bench or data/*_filtered.json) "
        "or upstream's flattened one (chosen_1..3, rejected_1..3); default: the five Hub "
        "datasets upstream read",
    )
    group.add_argument(
        "--domain",
        default=None,
        choices=list(rmbench_metrics.DOMAINS),
        help="domain of rows without a 'domain' field; default: taken from the file name or "
        "Hub id (chat_filtered.json -> chat, RM-Bench-safety-refuse -> safety-refuse)",
    )
    if set_names:
        group.add_argument(
            "--set_name",
            default=None,
            choices=list(set_names),
            help=f"{set_help} (upstream required it; default: all domains)",
        )
    return group


def add_hub_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Hugging Face Hub (nothing is uploaded without --push_to_hub)")
    group.add_argument(
        "--hf_key",
        default=None,
        help="DEPRECATED, accepted for the paper's commands: a Hub token on the command line leaks into "
        "shell history. Use the HF_TOKEN environment variable or `hf auth login`. Never saved.",
    )
    group.add_argument("--hf_user", default=None, help="Hub namespace for --push_to_hub")
    group.add_argument("--push_to_hub", action="store_true", help="upload the predictions as a Hub dataset (opt-in)")


def add_output_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("outputs")
    group.add_argument("--output_dir", default="outputs", help="parent folder of run folders")
    group.add_argument(
        "--run_name",
        default=None,
        help="run folder name under --output_dir; the default is derived from the settings, so "
        "re-running the same command resumes the same run",
    )
    group.add_argument("--overwrite", action="store_true", help="discard an existing run folder instead of resuming it")
    group.add_argument("--seed", type=int, default=42, help="random seed (the paper's value)")
    group.add_argument("--log_level", default="info", choices=["debug", "info", "warning", "error"])


def run_dir(
    args: argparse.Namespace, default_name: str, datasets: str | Sequence[str], model: str | None = None
) -> RunDir:
    """The run folder of a benchmark script: <--output_dir>/<--run_name, else ``default_name``>, --overwrite.

    Its identity covers the content of the data (``datasets``: one source or several) and of a local
    ``model`` folder or file (a Hub id: its local snapshot's commit), and --limit as the run's coverage: a
    resume may widen it, never narrow it (ipo.runs.RunDir).
    """
    inputs = {source: "dataset" for source in ([datasets] if isinstance(datasets, str) else datasets)}
    if model:
        inputs[model] = "model"
    name = args.run_name or default_name
    return RunDir(args.output_dir, name, overwrite=args.overwrite, inputs=inputs, coverage=("limit",))


# The one switch between upstream's raw-text prompts and the model's chat template. Every script spells it
# --prompt_format; the name each script had before stays as an alias (argparse lists it in --help), and
# ``dest`` keeps the old attribute name so config.json, and with it every run's identity, is unchanged.


def add_prompt_format_arg(group, dest: str, help: str, default: str = "upstream") -> None:
    """--prompt_format upstream|chat, stored as ``dest``; ``--<dest>`` is accepted as an alias."""
    flags = ["--prompt_format"] + ([f"--{dest}"] if dest != "prompt_format" else [])
    group.add_argument(*flags, dest=dest, default=default, choices=list(PROMPT_FORMATS), help=help)


def add_judge_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Yes/No judge")
    add_prompt_format_arg(
        group,
        "scoring",
        help="upstream: the paper's raw-text prompts, ' Yes'/' No' ids summed, right truncation "
        "(reproduces its numbers); chat: the model's chat template, single-token Yes/No variants, "
        "truncation that keeps the question and the judge instruction",
    )
    group.add_argument("--max_length", type=int, default=1024, help="max judge prompt tokens (upstream: 1024)")
    add_batch_args(parser)


def add_reward_model_args(parser: argparse.ArgumentParser) -> None:
    """--input_format and --max_length of the reward-model baselines (RewardBench and RM-Bench), and batching."""
    group = parser.add_argument_group("reward model")
    add_prompt_format_arg(
        group,
        "input_format",
        help="upstream: the raw 'Instruction: ...\\nResponse: ...' text (reproduces upstream); "
        "chat: the reward model's chat template, user and assistant turns",
    )
    group.add_argument(
        "--max_length", type=int, default=1024, help="max input tokens (upstream's pipeline: 1024, cut on the right)"
    )
    add_batch_args(parser, prefix_sharing=False)


def add_self_reward_args(parser: argparse.ArgumentParser, upstream_parsing: str) -> None:
    """--scoring, --max_length and --max_new_tokens of the 5-point self-reward judge, and batching;
    ``upstream_parsing`` says which of upstream's regex sets the script's upstream mode reads."""
    group = parser.add_argument_group("5-point judge")
    add_prompt_format_arg(
        group,
        "scoring",
        help=f"upstream: raw-text prompt, {upstream_parsing} over prompt + generation, 0 if none "
        "(reproduces upstream); chat: chat template, last 'Score: N' of the generation "
        "only, a failure is reported, never a score",
    )
    group.add_argument(
        "--max_length",
        type=int,
        default=2048,
        help="max prompt tokens (upstream: 2048, cut on the right in upstream mode)",
    )
    group.add_argument(
        "--max_new_tokens",
        type=int,
        default=200,
        help="max generated tokens per judgement (upstream: 200; the prompt asks for 100 words)",
    )
    add_batch_args(parser, prefix_sharing=False)


def add_batch_args(parser: argparse.ArgumentParser, prefix_sharing: bool = True) -> None:
    """--batch_size, --max_batch_tokens, --limit, and --no_prefix_sharing for scorers that share prefixes."""
    group = parser.add_argument_group("batching")
    group.add_argument(
        "--batch_size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="max sequences per forward pass; the responses of one prompt always share a batch",
    )
    group.add_argument(
        "--max_batch_tokens",
        type=int,
        default=None,
        help="max padded tokens per forward pass, keeping memory flat across short and long inputs "
        "(default: 2048 on a CPU, where small passes are faster, 16384 on a GPU; 16384 for generation, "
        "new tokens included)",
    )
    if prefix_sharing:
        group.add_argument(
            "--no_prefix_sharing",
            dest="prefix_sharing",
            action="store_false",
            help="run every sequence in full instead of computing a prompt's shared token prefix once",
        )
    group.add_argument(
        "--limit",
        type=int,
        default=None,
        help="score at most N examples per subset (RewardBench) or per data domain (RM-Bench); smoke runs",
    )


def check_positive(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            parser.error(f"--{name} must be positive, got {value}")


def consume_secrets(args: argparse.Namespace) -> None:
    """Move a token given on the command line into the process environment and forget it.

    Upstream required ``--hf_key``; we still accept it so the paper's commands run, but warn, export it
    as HF_TOKEN for this process only, and blank it so it can never reach config.json or a log.
    """
    key = getattr(args, "hf_key", None)
    if key:
        logger.warning(
            "--hf_key puts your token in shell history and `ps`; prefer `export HF_TOKEN=...` or "
            "`hf auth login`. The key is used for this process only and is not saved."
        )
        os.environ["HF_TOKEN"] = key
    for name in SECRET_ARGS:
        if hasattr(args, name):
            setattr(args, name, None)


def public_args(args: argparse.Namespace) -> dict:
    """The arguments as a dict, without anything that may hold a secret."""
    return {k: v for k, v in vars(args).items() if k not in SECRET_ARGS}
