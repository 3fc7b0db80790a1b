"""Speed of the project's Yes/No scorer against an upstream-style loop: same model, same pairs, one process.

The upstream loop (upstream Preference_Comparison/Reward_Bench/ours.py, generate_yes_no_probability) scores one sequence at a time: ``model(input_ids).logits[:, -1, :]``
(transformers computes the logits of every position), a softmax over the whole vocabulary, and the sum
of the Yes/No probabilities. The project's scorer is ``ipo.judges.yes_no.YesNoScorer`` with its default
settings: length-sorted batches under a token budget, the last position's logits only, the Yes/No
logits alone in float32, and each shared token prefix (the judge question of a batch, the prompt of a
pair) run once.

Both run on synthetic pairs in RewardBench's shape (prompt, chosen, rejected, subset; the paper's judge
questions) with controlled token lengths, in interleaved rounds; the minimum of the rounds counts, in
process CPU time on a CPU (the machine may be shared, and CPU time is what other jobs do not steal) and in synchronised wall time on
a GPU. Prints one JSON line per setting:

    python benchmarks/bench_scoring.py                       # SmolLM2-135M-Instruct, CPU, 1 thread
    python benchmarks/bench_scoring.py --settings short --n_pairs 16 --rounds 2
    python benchmarks/bench_scoring.py --device cuda --random_qwen_0_5b   # GPU: random Qwen2.5-0.5B-sized, bf16

Settings: ``short`` (every judge prompt under 60 tokens: there the batch-1 loop pays for re-reading the
weights and for the judge question on every sequence) and ``long`` (responses of 300-400 tokens: the floor
is the model body's arithmetic, so the gain can only come from what the score does not need: the
full-vocabulary head at every position and the prompt computed twice). With ``--flop_floor`` (implied by
``--random_qwen_0_5b``) the line also gives the fraction of the FLOP floor reached: 2 x non-embedding
parameters x the tokens the scorer actually runs (padding included, shared prefixes once) over a dense matmul
throughput measured in the same process at the run's dtype. Counting the upstream loop's tokens instead
would credit the scorer with work it skipped and could exceed 1.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from ipo import IpoError, cli  # noqa: E402
from ipo.data import Example  # noqa: E402
from ipo.prompts import REWARDBENCH_LAYOUT, REWARDBENCH_PROMPTS, render_upstream  # noqa: E402

# Per setting: token ranges of the prompt and of each response, the longest judge prompt allowed, the
# subsets (whose questions fit), pairs by default (enough that a batch of the scorer is full, as in a
# real run where each question has hundreds of pairs), and the ratio the issue asks for.
SETTINGS = {
    "short": {
        "prompt_tokens": (5, 12),
        "response_tokens": (4, 12),
        "max_total_tokens": 59,
        "n_pairs": 128,
        "subsets": ["alpacaeval-easy", "llmbar-natural", "xstest-should-respond", "refusals-offensive"],
        "target_ratio": 8.0,
    },
    "long": {
        "prompt_tokens": (20, 80),
        "response_tokens": (300, 400),
        "max_total_tokens": 1024,
        "n_pairs": 24,
        "subsets": ["alpacaeval-length", "hep-python", "math-prm", "mt-bench-med"],
        "target_ratio": 1.25,
    },
}
UPSTREAM_MAX_LENGTH = 1024
WORDS = (
    "the a of to and in is it that for on with as was at by this be from or have an are not but had his they "
    "you were her one all we can their there been if more when will would who so no out up into do time only "
    "about could new some these two may first then any like other how its our over also after most made well "
    "function return value list number answer because water system people world between under never same"
).split()


# ---------------------------------------------------------------------------------------------------
# Synthetic pairs
# ---------------------------------------------------------------------------------------------------
def text_of_tokens(tokenizer, rng: random.Random, n_tokens: int) -> str:
    """Random English words, at most ``n_tokens`` tokens long and as close to it as the words allow."""
    words, count = [], 0
    while True:
        word = rng.choice(WORDS)
        cost = len(tokenizer((" " if words else "") + word, add_special_tokens=False).input_ids)
        if words and count + cost > n_tokens:
            break
        words.append(word)
        count += cost
    while len(words) > 1 and len(tokenizer(" ".join(words), add_special_tokens=False).input_ids) > n_tokens:
        words.pop()  # merges across word boundaries can differ from the per-word count
    return " ".join(words).capitalize()


def synthetic_pairs(tokenizer, setting: str, n_pairs: int, seed: int = 0) -> list[Example]:
    """RewardBench-shaped pairs whose judge prompts have the setting's token lengths."""
    spec = SETTINGS[setting]
    rng = random.Random(f"{seed}:{setting}")
    examples = []
    for i in range(n_pairs):
        subset = spec["subsets"][i % len(spec["subsets"])]
        prompt = text_of_tokens(tokenizer, rng, rng.randint(*spec["prompt_tokens"])) + "?"
        responses = [text_of_tokens(tokenizer, rng, rng.randint(*spec["response_tokens"])) + "." for _ in range(2)]
        for k, response in enumerate(responses):
            # Shorten the response (down to one word) until the whole judge prompt fits the setting.
            while prompt_length(tokenizer, subset, prompt, response) > spec["max_total_tokens"] and " " in response:
                response = response.rsplit(" ", 1)[0]
            responses[k] = response
            if prompt_length(tokenizer, subset, prompt, response) > spec["max_total_tokens"]:
                raise IpoError(
                    f"this tokenizer makes the {setting!r} judge prompts longer than "
                    f"{spec['max_total_tokens']} tokens even with one-word responses"
                )
        examples.append(Example(id=i, prompt=prompt, responses=responses, subset=subset))
    return examples


def judge_question(example: Example) -> str:
    return REWARDBENCH_PROMPTS[example.subset]


def prompt_length(tokenizer, subset: str, prompt: str, response: str) -> int:
    return len(tokenizer(render_upstream(REWARDBENCH_LAYOUT, REWARDBENCH_PROMPTS[subset], prompt, response)).input_ids)


# ---------------------------------------------------------------------------------------------------
# The two scorers
# ---------------------------------------------------------------------------------------------------
def upstream_style_scores(model, tokenizer, examples: list[Example]) -> list[float]:
    """Upstream's generate_yes_no_probability (Reward_Bench/ours.py), one sequence at a time; p'_yes per response."""
    import torch

    yes_ids = tokenizer.encode(" Yes", add_special_tokens=False)
    no_ids = tokenizer.encode(" No", add_special_tokens=False)
    scores = []
    for example in examples:
        for response in example.responses:
            text = render_upstream(REWARDBENCH_LAYOUT, judge_question(example), example.prompt, response)
            input_ids = tokenizer.encode(text, return_tensors="pt", max_length=UPSTREAM_MAX_LENGTH, truncation=True)
            with torch.no_grad():
                logits = model(input_ids.to(model.device)).logits[:, -1, :]
            probs = torch.softmax(logits.float(), dim=-1)[0]
            p_yes = sum(probs[t].item() for t in yes_ids)
            p_no = sum(probs[t].item() for t in no_ids)
            scores.append(p_yes / (p_yes + p_no) if p_yes + p_no > 0 else p_yes)
    return scores


def project_scores(judge, examples: list[Example]) -> list[float]:
    """ipo.judges.yes_no.YesNoScorer on the same pairs; p'_yes per response in the examples' order."""
    from ipo.judges.yes_no import YesNoScorer

    scorer = YesNoScorer(judge, REWARDBENCH_LAYOUT, judge_question)
    by_id = {}
    for batch in scorer.score(examples):
        for example, scores, _ in batch:
            by_id[example.id] = scores
    return [score for example in examples for score in by_id[example.id]]


# ---------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------
def make_clock(device: str):
    """Process CPU time on a CPU (robust to other processes on a shared machine); synced wall time on a GPU."""
    import torch

    if device.startswith("cuda"):

        def clock():
            torch.cuda.synchronize()
            return time.perf_counter()

        return clock
    return time.process_time


def interleaved_minimum(functions: dict, rounds: int, clock) -> tuple[dict, dict]:
    """Run each function once per round, alternating their order; (minimum seconds, last result) per name."""
    best = {name: float("inf") for name in functions}
    results = {}
    names = list(functions)
    for round_index in range(rounds):
        for name in names if round_index % 2 == 0 else reversed(names):
            start = clock()
            results[name] = functions[name]()
            best[name] = min(best[name], clock() - start)
    return best, results


def matmul_flops_per_second(device: str, dtype, size: int = 8192, repeats: int = 10) -> float:
    """Measured dense matmul throughput (FLOP/s) of ``device`` at ``dtype``: the denominator of the FLOP floor."""
    import torch

    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    clock = make_clock(device)
    for _ in range(2):
        a @ b
    start = clock()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (clock() - start)


# ---------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------
def random_qwen_0_5b(device: str, vocab_size: int = 151936):
    """A random-weight model with Qwen2.5-0.5B's shape (speed does not depend on the weights), bf16."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    return model.eval()


def flop_floor_fraction(n_parameters: int, forward_tokens: int, flops_per_second: float, seconds: float) -> float:
    """Fraction of the FLOP floor reached: (2 x parameters x tokens run / peak FLOP/s) / measured seconds."""
    return 2 * n_parameters * forward_tokens / flops_per_second / seconds


def non_embedding_parameters(model) -> int:
    embedding = model.get_input_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    return total - embedding.numel()


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model_name", default=None, help="model folder or Hub id; default: the embedded SmolLM2-135M-Instruct"
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer folder (default: the model's; with --random_qwen_0_5b, SmolLM2's, whose "
        "ids all fit Qwen's vocabulary)",
    )
    parser.add_argument(
        "--random_qwen_0_5b",
        action="store_true",
        help="score with a random-weight Qwen2.5-0.5B-sized model in bf16 (for GPU timing runs) "
        "and report the fraction of the FLOP floor reached",
    )
    parser.add_argument(
        "--flop_floor",
        action="store_true",
        help="also measure the matmul peak at the run's dtype and report the fraction of the FLOP "
        "floor the scorer reaches (adds about a minute on a CPU)",
    )
    parser.add_argument("--settings", default="short,long", help=f"comma-separated, from {', '.join(SETTINGS)}")
    parser.add_argument(
        "--n_pairs",
        type=int,
        default=None,
        help="pairs per setting (default: short 128, long 24; the batch-1 loop takes most of the time)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds; the minimum counts")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads; 1 gives stable CPU-time ratios on a shared machine"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="weights dtype (default: float32 on CPU; bf16 with --random_qwen_0_5b)",
    )
    parser.add_argument("--batch_size", type=int, default=None, help="the scorer's batch size (default: its own)")
    parser.add_argument(
        "--max_batch_tokens", type=int, default=None, help="the scorer's token budget per batch (default: its own)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic pairs")
    args = parser.parse_args(argv)
    cli.check_positive(parser, args, "n_pairs", "rounds", "threads", "batch_size", "max_batch_tokens")
    unknown = [s for s in args.settings.split(",") if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting {unknown[0]!r}; choose from {', '.join(SETTINGS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.setup_logging("warning")
    import torch

    from ipo.judges.yes_no import YesNoJudge
    from ipo.modeling import load_model, load_tokenizer, resolve_device

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.random_qwen_0_5b:
        from ipo.assets import smollm2_dir

        tokenizer = load_tokenizer(args.tokenizer or str(smollm2_dir()))
        if args.dtype not in (None, "bfloat16"):
            raise IpoError("--random_qwen_0_5b runs in bf16")
        model, dtype, model_label = random_qwen_0_5b(device), torch.bfloat16, "random Qwen2.5-0.5B-sized"
    else:
        from ipo.assets import smollm2_dir

        model_name = args.model_name or str(smollm2_dir())
        tokenizer = load_tokenizer(args.tokenizer or model_name)
        model, device, dtype = load_model(model_name, dtype=args.dtype or "float32", device=device)
        model_label = cli.model_short_name(model_name)
    judge_options = {k: getattr(args, k) for k in ("batch_size", "max_batch_tokens") if getattr(args, k)}
    judge = YesNoJudge(model, tokenizer, scoring="upstream", max_length=UPSTREAM_MAX_LENGTH, **judge_options)
    clock = make_clock(device)
    matmul_flops = matmul_flops_per_second(device, dtype) if args.flop_floor or args.random_qwen_0_5b else None

    for setting in args.settings.split(","):
        examples = synthetic_pairs(tokenizer, setting, args.n_pairs or SETTINGS[setting]["n_pairs"], args.seed)
        lengths = [prompt_length(tokenizer, e.subset, e.prompt, r) for e in examples for r in e.responses]
        # Warm-up, not timed: the scorer over every pair, so each batch shape it will run has been run once
        # (allocator and kernel choices settle per shape); the upstream loop runs one sequence at a time.
        upstream_style_scores(model, tokenizer, examples[: min(2, len(examples))])
        project_scores(judge, examples)
        judge.stats = dict.fromkeys(judge.stats, 0)
        seconds, scores = interleaved_minimum(
            {
                "upstream": lambda examples=examples: upstream_style_scores(model, tokenizer, examples),
                "project": lambda examples=examples: project_scores(judge, examples),
            },
            args.rounds,
            clock,
        )
        n_sequences = len(lengths)
        line = {
            "setting": setting,
            "model": model_label,
            "device": device,
            "dtype": str(dtype).replace("torch.", ""),
            "threads": args.threads if device == "cpu" else None,
            "n_pairs": len(examples),
            "n_sequences": n_sequences,
            "tokens_mean": round(sum(lengths) / n_sequences, 1),
            "tokens_min": min(lengths),
            "tokens_max": max(lengths),
            # Tokens run through the model per pass over the pairs: the upstream loop runs every token with
            # the full-vocabulary head; the project runs padded tokens, shared prefixes once, head at the end.
            "upstream_forward_tokens": sum(lengths),
            "project_forward_tokens": judge.stats["forward_tokens"] // args.rounds,
            "upstream_seq_per_s": round(n_sequences / seconds["upstream"], 3),
            "project_seq_per_s": round(n_sequences / seconds["project"], 3),
            "ratio": round(seconds["upstream"] / seconds["project"], 3),
            "max_abs_diff": max(abs(a - b) for a, b in zip(scores["upstream"], scores["project"])),
            "target_ratio": SETTINGS[setting]["target_ratio"],
            "timer": "wall (synchronised)" if device.startswith("cuda") else "process CPU time",
            "judge": {"batch_size": judge.batch_size, "max_batch_tokens": judge.max_batch_tokens},
        }
        if matmul_flops:
            line["matmul_tflops"] = round(matmul_flops / 1e12, 3)
            line["floor_tokens"] = line["project_forward_tokens"]
            line["flop_floor_fraction"] = round(
                flop_floor_fraction(
                    non_embedding_parameters(model), line["floor_tokens"], matmul_flops, seconds["project"]
                ),
                3,
            )
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
