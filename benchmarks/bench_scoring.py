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
from ipo.modeling import RANDOM_SHAPES  # noqa: E402
from ipo.prompts import (  # noqa: E402
    REWARDBENCH_FALLBACK_SUBSET,
    REWARDBENCH_LAYOUT,
    REWARDBENCH_PROMPTS,
    render_upstream,
)

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
        "target_floor_fraction": 0.6,  # issue 13: bf16 on a CPU with native bf16, one thread
    },
    "long": {
        "prompt_tokens": (20, 80),
        "response_tokens": (300, 400),
        "max_total_tokens": 1024,
        "n_pairs": 24,
        "subsets": ["alpacaeval-length", "hep-python", "math-prm", "mt-bench-med"],
        "target_ratio": 1.25,
        "target_floor_fraction": None,
    },
}
UPSTREAM_MAX_LENGTH = 1024
DTYPES = ("float32", "bfloat16", "float16")
DEMO_PAIRS = Path(__file__).resolve().parent.parent / "data" / "demo_rewardbench.jsonl"
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


def matmul_flops_per_second(device: str, dtype, size: int | None = None, repeats: int | None = None) -> float:
    """Measured dense matmul throughput (FLOP/s) of ``device`` at ``dtype``: the denominator of the FLOP floor.
    A GPU multiplies 8192 x 8192 matrices 10 times; a CPU 4096 x 4096 ones 3 times (same rate, seconds not
    minutes)."""
    import torch

    gpu = device.startswith("cuda")
    size, repeats = size or (8192 if gpu else 4096), repeats or (10 if gpu else 3)
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
# Floor and agreement
# ---------------------------------------------------------------------------------------------------
def flop_floor_fraction(n_parameters: int, forward_tokens: int, flops_per_second: float, seconds: float) -> float:
    """Fraction of the FLOP floor reached: (2 x parameters x tokens run / peak FLOP/s) / measured seconds."""
    return 2 * n_parameters * forward_tokens / flops_per_second / seconds


def non_embedding_parameters(model) -> int:
    embedding = model.get_input_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    return total - embedding.numel()


def verdicts_changed(reference: list[float], scores: list[float]) -> int:
    """Pairs (consecutive chosen, rejected scores) whose verdict, chosen > rejected, differs from the reference's."""
    return sum(
        (reference[i] > reference[i + 1]) != (scores[i] > scores[i + 1]) for i in range(0, len(reference) - 1, 2)
    )


def agreement(reference: list[float], scores: list[float]) -> dict:
    """max and mean |dP| and verdicts changed, of ``scores`` against ``reference`` (same responses, same order)."""
    diffs = [abs(a - b) for a, b in zip(reference, scores)]
    return {
        "max_abs_diff": max(diffs),
        "mean_abs_diff": sum(diffs) / len(diffs),
        "verdicts_changed": verdicts_changed(reference, scores),
    }


def dtypes_to_run(requested: str, device: str) -> list[str]:
    """--dtypes: "auto" is float32 plus bfloat16 where the hardware multiplies bf16 natively (a CPU with
    AVX512-BF16 or AMX, a GPU of compute capability 8.0+); else the comma-separated list as given. float32
    always runs: its upstream-style loop is every row's reference."""
    import torch

    from ipo.modeling import cpu_has_native_bf16

    if requested != "auto":
        asked = requested.split(",")
        return ["float32", *[d for d in asked if d != "float32"]]
    if device.startswith("cuda"):
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    else:
        native = device == "cpu" and cpu_has_native_bf16()
    return ["float32", "bfloat16"] if native else ["float32"]


def load_demo_pairs(path: str) -> list[Example]:
    """The real pairs the agreement between dtypes is measured on (--agreement_data); a subset without a judge
    question of its own gets upstream's fallback question, as in Reward_Bench/ours.py."""
    from ipo.benchmarks.rewardbench import load_examples

    examples, _ = load_examples(path, "filtered")
    known = [e.subset in REWARDBENCH_PROMPTS for e in examples]
    return [
        e if ok else Example(id=e.id, prompt=e.prompt, responses=e.responses, subset=REWARDBENCH_FALLBACK_SUBSET)
        for e, ok in zip(examples, known)
    ]


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model_name", default=None, help="model folder or Hub id; default: the embedded SmolLM2-135M-Instruct"
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer folder (default: the model's; with --random_model, SmolLM2's, whose ids all fit the "
        "random models' vocabularies)",
    )
    parser.add_argument(
        "--random_model",
        default=None,
        choices=list(RANDOM_SHAPES),
        help="score with a random-weight model of this shape instead of --model_name (qwen2.5-0.5b: the GPU "
        "timing run; tiny: a CPU dry run of the same code); speed does not depend on the weights",
    )
    parser.add_argument(
        "--random_qwen_0_5b",
        dest="random_model",
        action="store_const",
        const="qwen2.5-0.5b",
        help="the same as --random_model qwen2.5-0.5b",
    )
    parser.add_argument(
        "--no_floor",
        dest="floor",
        action="store_false",
        help="skip the matmul peak measurement (about 10 s per dtype on a CPU) and the floor fractions",
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
        "--dtypes",
        "--dtype",
        dest="dtypes",
        default="auto",
        help="comma-separated from float32, bfloat16, float16 (float32 always runs: the reference); auto = "
        "float32, plus bfloat16 where the hardware has it natively, so both are compared where the choice exists",
    )
    parser.add_argument(
        "--agreement_data",
        default=str(DEMO_PAIRS) if DEMO_PAIRS.is_file() else "none",
        help="real RewardBench-format pairs on which each dtype's scores are compared with float32's (max |dP|, "
        "verdicts changed; default: data/demo_rewardbench.jsonl); 'none' skips it",
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
    wrong = [d for d in args.dtypes.split(",") if d not in DTYPES] if args.dtypes != "auto" else []
    if wrong:
        parser.error(f"unknown dtype {wrong[0]!r}; choose from auto or {', '.join(DTYPES)}")
    if args.agreement_data != "none" and not Path(args.agreement_data).is_file():
        parser.error(f"--agreement_data {args.agreement_data}: no such file")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.setup_logging("warning")
    import torch

    from ipo.assets import smollm2_dir
    from ipo.judges.yes_no import YesNoJudge
    from ipo.modeling import load_model, load_tokenizer, random_causal_lm, resolve_device

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtypes = dtypes_to_run(args.dtypes, device)
    model_name = None if args.random_model else args.model_name or str(smollm2_dir())
    tokenizer = load_tokenizer(args.tokenizer or model_name or str(smollm2_dir()))
    label = f"random {args.random_model}-sized" if args.random_model else cli.model_short_name(model_name)
    models = {}
    for dtype in dtypes:
        if args.random_model:
            models[dtype] = random_causal_lm(args.random_model, device, dtype, tokenizer)
        else:
            models[dtype] = load_model(model_name, dtype=dtype, device=device)[0]
    judge_options = {k: getattr(args, k) for k in ("batch_size", "max_batch_tokens") if getattr(args, k)}
    judges = {
        dtype: YesNoJudge(model, tokenizer, scoring="upstream", max_length=UPSTREAM_MAX_LENGTH, **judge_options)
        for dtype, model in models.items()
    }
    clock = make_clock(device)
    peaks = {dtype: matmul_flops_per_second(device, getattr(torch, dtype)) for dtype in dtypes} if args.floor else {}
    demo = load_demo_pairs(args.agreement_data) if args.agreement_data != "none" else []
    demo_scores = {dtype: project_scores(judge, demo) for dtype, judge in judges.items()} if demo else {}

    for setting in args.settings.split(","):
        examples = synthetic_pairs(tokenizer, setting, args.n_pairs or SETTINGS[setting]["n_pairs"], args.seed)
        lengths = [prompt_length(tokenizer, e.subset, e.prompt, r) for e in examples for r in e.responses]
        functions = {}
        for dtype in dtypes:
            model, judge = models[dtype], judges[dtype]
            # Warm-up, not timed: the scorer over every pair, so each batch shape it will run has been run once
            # (allocator and kernel choices settle per shape); the upstream loop runs one sequence at a time.
            upstream_style_scores(model, tokenizer, examples[: min(2, len(examples))])
            project_scores(judge, examples)
            judge.stats = dict.fromkeys(judge.stats, 0)
            functions[f"upstream/{dtype}"] = lambda m=model, e=examples: upstream_style_scores(m, tokenizer, e)
            functions[f"project/{dtype}"] = lambda j=judge, e=examples: project_scores(j, e)
        seconds, scores = interleaved_minimum(functions, args.rounds, clock)
        n_sequences = len(lengths)
        for dtype in dtypes:
            upstream, project = seconds[f"upstream/{dtype}"], seconds[f"project/{dtype}"]
            line = {
                "setting": setting,
                "dtype": dtype,
                "model": label,
                "device": device,
                "threads": args.threads if device == "cpu" else None,
                "n_pairs": len(examples),
                "n_sequences": n_sequences,
                "tokens_mean": round(sum(lengths) / n_sequences, 1),
                "tokens_min": min(lengths),
                "tokens_max": max(lengths),
                # Tokens run through the model per pass over the pairs: the upstream loop runs every token with
                # the full-vocabulary head; the project runs padded tokens, shared prefixes once, head at the end.
                "upstream_forward_tokens": sum(lengths),
                "project_forward_tokens": judges[dtype].stats["forward_tokens"] // args.rounds,
                "upstream_float32_seq_per_s": round(n_sequences / seconds["upstream/float32"], 3),
                "upstream_seq_per_s": round(n_sequences / upstream, 3),
                "project_seq_per_s": round(n_sequences / project, 3),
                # ratio: against the float32 upstream-style loop (the reference of every row); the second
                # against that loop run in this row's dtype (what the scorer's design gains, the dtype aside).
                "ratio": round(seconds["upstream/float32"] / project, 3),
                "ratio_vs_upstream_same_dtype": round(upstream / project, 3),
                "target_ratio": SETTINGS[setting]["target_ratio"],
                # Agreement with the float32 upstream-style loop on the same synthetic pairs.
                **agreement(scores["upstream/float32"], scores[f"project/{dtype}"]),
                "max_abs_diff_vs_upstream_same_dtype": max(
                    abs(a - b) for a, b in zip(scores[f"upstream/{dtype}"], scores[f"project/{dtype}"])
                ),
                "timer": "wall (synchronised)" if device.startswith("cuda") else "process CPU time",
                "judge": {"batch_size": judges[dtype].batch_size, "max_batch_tokens": judges[dtype].max_batch_tokens},
            }
            if demo_scores:
                # Real pairs: this dtype's scorer against the float32 scorer (same batches, only the dtype differs).
                found = agreement(demo_scores["float32"], demo_scores[dtype])
                line.update({f"demo_{k}": v for k, v in found.items()})
                line["demo_n_pairs"] = len(demo)
            if peaks:
                n_parameters = non_embedding_parameters(models[dtype])
                line["matmul_tflops"] = round(peaks[dtype] / 1e12, 3)
                line["floor_tokens"] = line["project_forward_tokens"]
                line["floor_fraction"] = round(
                    flop_floor_fraction(n_parameters, line["floor_tokens"], peaks[dtype], project), 3
                )
                line["upstream_floor_fraction"] = round(
                    flop_floor_fraction(n_parameters, line["upstream_forward_tokens"], peaks[dtype], upstream), 3
                )
                line["target_floor_fraction"] = SETTINGS[setting]["target_floor_fraction"]
            print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
