"""Sampling speed: the batched, seeded sampler against upstream's loop, in one process on the same model.

Upstream (DPO/ours.py, DPO/sample_responses.py) called ``generate`` once per response: 4 calls per prompt,
batch size 1, ``do_sample=True``. ``ipo.selfimprove.sampling.Sampler`` makes one call for many prompts with N rows each.
Both sample the same prompts with the same settings (temperature 0.7, top-k 50); the rate is new response
tokens per second (up to and excluding the stop token), so early stops count the same on both sides.

    python benchmarks/bench_sampling.py                       # SmolLM2-135M-Instruct, 16 prompts x 4 x 64 tokens
    python benchmarks/bench_sampling.py --gpu_random_qwen     # plus a random Qwen2.5-0.5B-sized model in bf16 (GPU)
    python benchmarks/bench_sampling.py --random_model tiny --random_device cpu --only_random --no_dpo  # dry run

It also times one DPO training step (LoRA as in the paper, r 256 on all linear layers) and reports its peak
memory. The last line of output is a JSON object with both rates and their ``ratio``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from ipo.assets import smollm2_dir  # noqa: E402
from ipo.cli import setup_logging  # noqa: E402
from ipo.modeling import RANDOM_SHAPES, load_model, load_tokenizer, random_causal_lm  # noqa: E402
from ipo.selfimprove.sampling import Sampler, SamplingSettings, cut_at_stop, encode_prompt  # noqa: E402
from ipo.training.dpo import build_trainer  # noqa: E402
from ipo.training.options import TrainingOptions  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model folder (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--num_prompts", type=int, default=16)
    parser.add_argument("--num_return_sequences", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--dpo_batch_size", type=int, default=2, help="pairs in the timed DPO step")
    parser.add_argument("--lora_r", type=int, default=256, help="LoRA rank of the timed DPO step (paper: 256)")
    parser.add_argument("--no_dpo", dest="dpo", action="store_false", help="skip the DPO step timing")
    parser.add_argument(
        "--random_model",
        default=None,
        choices=list(RANDOM_SHAPES),
        help="also compare on a random-weight model of this shape in bf16 on --random_device (qwen2.5-0.5b: the "
        "GPU check; tiny: a CPU dry run); speed does not depend on the weights",
    )
    parser.add_argument(
        "--gpu_random_qwen",
        dest="random_model",
        action="store_const",
        const="qwen2.5-0.5b",
        help="the same as --random_model qwen2.5-0.5b (on a CUDA GPU)",
    )
    parser.add_argument("--random_device", default="cuda", help="device of --random_model (default: cuda)")
    parser.add_argument("--only_random", action="store_true", help="skip the SmolLM2 CPU comparison (and its DPO step)")
    return parser.parse_args(argv)


def bench_prompts(n: int) -> list[str]:
    rows = [
        json.loads(line) for line in (REPO / "data" / "demo_prompts.jsonl").read_text().splitlines() if line.strip()
    ]
    base = [r["instruction"] for r in rows]
    return [
        base[i % len(base)] + ("" if i < len(base) else f" (Answer in {i - len(base) + 2} sentences.)")
        for i in range(n)
    ]


def upstream_loop(model, tokenizer, prompt_ids, n, max_new_tokens, stop_ids) -> int:
    """Upstream's sampler: one generate call per response, batch 1, transformers' own sampling."""
    import torch

    tokens = 0
    for ids in prompt_ids:
        input_ids = torch.tensor([ids], device=model.device)
        for _ in range(n):
            with torch.inference_mode():
                out = model.generate(
                    input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    do_sample=True,
                    temperature=0.7,
                    top_k=50,
                    max_new_tokens=max_new_tokens,
                    num_return_sequences=1,
                    pad_token_id=stop_ids[0],
                    eos_token_id=stop_ids,
                )
            tokens += len(cut_at_stop(out[0, len(ids) :].tolist(), stop_ids)[0])
    return tokens


def compare(model, tokenizer, args, label: str) -> dict:
    if model.device.type == "cuda":
        import torch

        sync = torch.cuda.synchronize
    else:

        def sync():
            return None

    prompt_ids = [encode_prompt(tokenizer, p, "upstream") for p in bench_prompts(args.num_prompts)]
    settings = SamplingSettings(
        num_return_sequences=args.num_return_sequences, max_new_tokens=args.max_new_tokens, top_k=50, top_p=1.0
    )
    sampler = Sampler(model, tokenizer, settings, batch_size=args.num_prompts)
    # warm-up (first-call allocations, kernel selection) on one prompt, for both paths
    list(Sampler(model, tokenizer, settings, batch_size=1).sample([(0, prompt_ids[0])]))
    upstream_loop(model, tokenizer, prompt_ids[:1], 1, 4, sampler.stop_ids)
    sync()
    start = time.perf_counter()
    upstream_tokens = upstream_loop(
        model, tokenizer, prompt_ids, args.num_return_sequences, args.max_new_tokens, sampler.stop_ids
    )
    sync()
    upstream_s = time.perf_counter() - start
    start = time.perf_counter()
    samples = [s for batch in sampler.sample(list(enumerate(prompt_ids))) for s in batch]
    sync()
    batched_s = time.perf_counter() - start
    batched_tokens = sum(sum(s.n_tokens) for s in samples)
    result = {
        "upstream_tokens": upstream_tokens,
        "upstream_s": round(upstream_s, 3),
        "upstream_tokens_per_s": round(upstream_tokens / upstream_s, 2),
        "batched_tokens": batched_tokens,
        "batched_s": round(batched_s, 3),
        "batched_tokens_per_s": round(batched_tokens / batched_s, 2),
    }
    result["ratio"] = round(result["batched_tokens_per_s"] / result["upstream_tokens_per_s"], 2)
    print(
        f"{label}: upstream loop {result['upstream_tokens_per_s']} tok/s ({upstream_tokens} tokens in "
        f"{upstream_s:.1f} s), batched {result['batched_tokens_per_s']} tok/s ({batched_tokens} tokens in "
        f"{batched_s:.1f} s): x{result['ratio']}",
        flush=True,
    )
    return result, samples


def dpo_step(model_dir: str, samples, tokenizer, args, device: str) -> dict:
    """Time one optimizer step of the paper's DPO setup on pairs built from the samples."""
    import torch

    prompts = bench_prompts(args.num_prompts)
    records = [
        {"prompt": f"[INST] {prompts[s.prompt_id]} [/INST]", "chosen": s.responses[0], "rejected": s.responses[1]}
        for s in samples
    ][: args.dpo_batch_size]
    options = TrainingOptions(
        max_steps=1,
        per_device_train_batch_size=args.dpo_batch_size,
        lora_r=args.lora_r,
        lora_alpha=args.lora_r // 2,
        warmup_ratio=0.0,
        logging_steps=1,
        save_steps=1000,
    )
    with tempfile.TemporaryDirectory() as tmp:
        trainer, _, _ = build_trainer(model_dir, records, options, tmp, device=device, tokenizer=tokenizer)
        trainer.args.disable_tqdm = True
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        trainer.train()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = (
            torch.cuda.max_memory_allocated() / 2**20
            if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        )
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    result = {
        "dpo_step_s": round(seconds, 2),
        "dpo_peak_memory_mb": round(peak, 1),
        "dpo_peak_memory_kind": "cuda max_memory_allocated" if device.startswith("cuda") else "process max RSS",
        "dpo_pairs": len(records),
        "dpo_lora_r": args.lora_r,
        "dpo_trainable_params": trainable,
    }
    print(
        f"one DPO step ({len(records)} pairs, LoRA r {args.lora_r}, {trainable / 1e6:.1f}M trainable): "
        f"{seconds:.2f} s, peak memory {peak:.0f} MB ({result['dpo_peak_memory_kind']})",
        flush=True,
    )
    return result


def random_model(tokenizer_dir: str, args) -> dict:
    """The comparison on a random-weight model of --random_model's shape (ipo.modeling.random_causal_lm), bf16."""
    tokenizer = load_tokenizer(tokenizer_dir)
    model = random_causal_lm(args.random_model, args.random_device, "bfloat16", tokenizer)
    label = f"random {args.random_model} shape, bf16, {model.device}"
    result, _ = compare(model, tokenizer, args, label)
    return {
        "model": f"random {args.random_model}-sized (bf16)",
        "device": str(model.device),
        "params": sum(p.numel() for p in model.parameters()),
        **result,
    }


def main(argv=None) -> int:
    import torch

    args = parse_args(argv)
    setup_logging("warning")
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = args.model or str(smollm2_dir())
    report = {
        "prompts": args.num_prompts,
        "samples_per_prompt": args.num_return_sequences,
        "max_new_tokens": args.max_new_tokens,
        "threads": torch.get_num_threads(),
    }
    if not args.only_random:
        model, device, _ = load_model(model_dir, dtype="float32", device="cpu")
        tokenizer = load_tokenizer(model_dir)
        label = f"{Path(model_dir).name} fp32 CPU, {torch.get_num_threads()} threads"
        sampling, samples = compare(model, tokenizer, args, label)
        report.update({"model": Path(model_dir).name, "device": device, **sampling})
        del model
        if args.dpo:
            report.update(dpo_step(model_dir, samples, tokenizer, args, device="cpu"))
    if args.random_model:
        if args.random_device.startswith("cuda") and not torch.cuda.is_available():
            report["random_model"] = None
            print(f"--random_model on {args.random_device}: no CUDA GPU here, skipped", flush=True)
        else:
            report["random_model"] = random_model(model_dir, args)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
