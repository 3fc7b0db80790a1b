"""Command-line flags of the API judge scripts (Preference_Comparison/*/{ours,binary,self_reward}_gpt.py).

The endpoint, key variable, robustness and cache flags (add_api_args / check_api_args), the pairwise judges'
order flags (add_order_args / resolve_orders), and ``client_from_args``, which turns them into an
ipo.judges.api_client.ApiClient; the core never sees the Namespace.
"""

from __future__ import annotations

import argparse
import os
import re

from ipo.cli import add_prompt_format_arg
from ipo.judges.api import PAIRWISE_ORDERS
from ipo.judges.api_client import (
    DEFAULT_BASE_URL,
    DEFAULT_KEY_ENV,
    DEFAULT_MODEL,
    ApiClient,
    ResponseCache,
    read_api_key,
)
from ipo.runs import check_output_dir


class _RejectKeyOnCommandLine(argparse.Action):
    """Upstream's --api_key / --openai_key: refused, because a key on the command line leaks."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(
            f"{option_string} is not accepted: a key on the command line leaks into shell history and `ps`. "
            f"Export it instead (export {DEFAULT_KEY_ENV}=...), or name the variable that holds it with "
            "--api_key_env"
        )


def add_api_args(
    parser: argparse.ArgumentParser,
    prompt_format_help: str | None,
    default_model: str = DEFAULT_MODEL,
    with_limit: bool = True,
) -> None:
    """The flags every API judge script shares: endpoint, key variable, robustness, cache, prompt format
    (--prompt_format, alias --scoring, stored as ``scoring``; left out when ``prompt_format_help`` is None),
    limit (left out with ``with_limit=False``, for a script that has its own)."""
    group = parser.add_argument_group("API endpoint (any OpenAI-compatible chat-completions server)")
    group.add_argument(
        "--model",
        default=default_model,
        help="model id as the server names it: gpt-4o-mini on OpenAI (cheap, returns log-probabilities); "
        "OpenRouter ids carry the vendor, e.g. openai/gpt-4o-mini or the paper's openai/chatgpt-4o-latest",
    )
    group.add_argument(
        "--base_url",
        default=DEFAULT_BASE_URL,
        help="the API's base URL: OpenAI by default; https://openrouter.ai/api/v1 for OpenRouter (the "
        "paper's); http://localhost:8000/v1 for a local vLLM server",
    )
    group.add_argument(
        "--api_key_env",
        default=DEFAULT_KEY_ENV,
        help="name of the environment variable holding the key (e.g. OPENROUTER_API_KEY); for a local "
        "server without authentication set it to any value, e.g. EMPTY",
    )
    for flag in ("--api_key", "--openai_key"):
        group.add_argument(
            flag,
            nargs="?",
            action=_RejectKeyOnCommandLine,
            default=None,
            help="upstream's key argument: NOT accepted (keys come from the environment, see --api_key_env)",
        )
    group.add_argument(
        "--max_concurrency",
        type=int,
        default=8,
        help="requests in flight at once; 8 keeps a tier-1 OpenAI account mostly under its rate limit "
        "(429s are retried anyway)",
    )
    group.add_argument(
        "--max_retries",
        type=int,
        default=5,
        help="retries per request after a 429, 5xx, timeout or dropped connection (backoff 1, 2, 4, 8, "
        "16 s covers a typical 30-second outage)",
    )
    group.add_argument(
        "--retry_base_delay",
        type=float,
        default=1.0,
        help="first backoff in seconds, doubled per retry up to 60 s, with jitter; a server's "
        "Retry-After takes precedence",
    )
    group.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds per attempt before it counts as a timeout and is retried (a 200-token answer "
        "takes a few seconds; the SDK's default of 10 minutes would hide a stalled request)",
    )
    group.add_argument(
        "--cache_dir",
        default=None,
        help="folder of the response cache (one JSONL file per model); default <output_dir>/api_cache, "
        "shared by all runs there so that --overwrite, a new --run_name or a resume never pays twice",
    )
    if prompt_format_help is not None:
        add_prompt_format_arg(group, "scoring", help=prompt_format_help)
    if with_limit:
        group.add_argument(
            "--limit", type=int, default=None, help="judge at most N examples per subset (smoke runs; costs money)"
        )


def check_api_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject impossible values with argparse's one-line error (exit 2)."""
    for name in ("max_concurrency", "timeout", "limit"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name} must be positive, got {value}")
    for name in ("max_retries", "retry_base_delay"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0, got {getattr(args, name)}")
    if not re.match(r"^https?://[^/\s]+", args.base_url):
        parser.error(f"--base_url must be an http(s) URL such as {DEFAULT_BASE_URL}, got {args.base_url!r}")
    if not args.api_key_env or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", args.api_key_env):
        parser.error(f"--api_key_env takes the NAME of an environment variable, got {args.api_key_env!r}")


def add_order_args(parser: argparse.ArgumentParser) -> None:
    """--both_orders / --no_both_orders of the pairwise judges (default: resolved by resolve_orders)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--both_orders",
        action="store_true",
        default=None,
        help="ask each pair twice, chosen response first and second (twice the requests); default: off "
        "with --prompt_format upstream (upstream's chosen-first), on with --prompt_format chat",
    )
    group.add_argument(
        "--no_both_orders",
        dest="both_orders",
        action="store_false",
        default=None,
        help="ask chosen-first only, also with --prompt_format chat",
    )


def resolve_orders(args: argparse.Namespace) -> tuple[tuple[str, int], ...]:
    """The orders to ask; sets ``args.both_orders`` when it was left to the mode (call it in parse_args,
    so that config.json and resume see the value used)."""
    if args.both_orders is None:
        args.both_orders = args.scoring == "chat"
    return PAIRWISE_ORDERS if args.both_orders else PAIRWISE_ORDERS[:1]


def client_from_args(args: argparse.Namespace) -> ApiClient:
    """A client from add_api_args' flags; the key from the environment, the output and cache folders checked
    (one line if the key is missing or a folder is a file or not writable, before any request)."""
    check_output_dir(args.output_dir)
    cache_dir = args.cache_dir or os.path.join(args.output_dir, "api_cache")
    check_output_dir(cache_dir, "--cache_dir")
    return ApiClient(
        base_url=args.base_url,
        model=args.model,
        api_key=read_api_key(args.api_key_env),
        timeout=args.timeout,
        max_retries=args.max_retries,
        max_concurrency=args.max_concurrency,
        retry_base_delay=args.retry_base_delay,
        cache=ResponseCache(cache_dir, args.model),
        key_env=args.api_key_env,
    )
