"""Downstream evaluation as the paper: lm-eval's BBH, ARC-Easy, MMLU, IFEval and an AlpacaEval-style win rate.

The paper (Garg et al., arXiv 2502.16182) reports these five for the self-improved Mistral-7B. The four
lm-eval tasks run through EleutherAI's lm-evaluation-harness with each task's own settings in lm-eval 0.4.13
(bbh: 3-shot chain of thought, exact match; arc_easy, mmlu: 0-shot accuracy; ifeval: 0-shot prompt-level
strict accuracy; --num_fewshot TASK=N overrides). The win rate compares the model's greedy answers (chat
template) with reference outputs from a file, judged by an OpenAI-compatible API in both orders
(ipo/benchmarks/alpaca_eval.py); it runs when --reference_outputs is given. --model_name is a base model,
a merged model, or a PEFT adapter folder (its adapter_config.json names the base):

    python DPO/Evals/downstream.py --model_name outputs/dpo-run/round_1/merged

    hf download tatsu-lab/alpaca_eval alpaca_eval_gpt4_baseline.json --repo-type dataset --local-dir data/
    export OPENAI_API_KEY=...
    python DPO/Evals/downstream.py --model_name outputs/dpo-run/round_1/adapter \
        --reference_outputs data/alpaca_eval_gpt4_baseline.json --model gpt-4o-mini

    python DPO/Evals/downstream.py --model_name mistralai/Mistral-7B-Instruct-v0.1 --tasks mmlu \
        --num_fewshot mmlu=5 --limit 20 --batch_size auto

    python DPO/Evals/downstream.py --model_name MODEL --tasks my_task --include_path my_tasks/

Outputs in <output_dir>/<run_name>/: config.json, lm_eval/<task>.json and <task>.samples.jsonl,
alpaca_eval/{model_outputs.json,judgements.jsonl}, metrics.json (scores in percent under "scores", the
metric behind each under "metric_names"), results.md. Re-running the same command resumes: finished tasks
are skipped, outputs and judgements already made are kept, failed judgements are asked again.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

from ipo import IpoError, cli
from ipo.benchmarks import alpaca_eval, downstream
from ipo.cli.api import add_api_args, check_api_args, client_from_args
from ipo.cli.selfimprove import add_sampling_args, check_sampling_args, sampling_settings_from_args
from ipo.modeling import ModelSpec, load_model_and_tokenizer, load_tokenizer
from ipo.runs import RecordLog, RunDir, atomic_write_json, seed_everything
from ipo.selfimprove.prompts_pool import Prompt
from ipo.selfimprove.sampling import Sampler, check_can_generate, sample_into_log
from ipo.training.merge import ADAPTER_CONFIG, read_adapter_config

logger = cli.logger


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_model_args(parser)
    model = parser.add_argument_group("adapter")
    model.add_argument(
        "--base_model",
        default=None,
        help="base model of a PEFT adapter given as --model_name; default: the base its adapter_config.json names",
    )
    tasks = parser.add_argument_group("lm-eval tasks")
    tasks.add_argument(
        "--tasks",
        default=",".join(downstream.PAPER_TASKS),
        help="comma-separated lm-eval task or group names (default: the paper's four); 'none' for the win rate alone",
    )
    tasks.add_argument("--include_path", default=None, help="a folder of extra lm-eval task YAML files (local tasks)")
    tasks.add_argument(
        "--num_fewshot",
        nargs="*",
        default=[],
        metavar="TASK=N",
        help="shots for a task instead of lm-eval's setting for it (the paper states none), e.g. mmlu=5",
    )
    tasks.add_argument(
        "--apply_chat_template",
        action="store_true",
        help="lm-eval formats each request with the model's chat template (off: lm-eval's plain prompts, its default)",
    )
    tasks.add_argument(
        "--batch_size",
        default="8",
        help="lm-eval's batch size, or 'auto' (lm-eval finds the largest that fits); 8 rows of a 7B model's "
        "longest requests (3-shot BBH with its 1,024 generated tokens, ~2,500 positions) need a few GB of cache",
    )
    tasks.add_argument(
        "--limit", type=int, default=None, help="at most N examples per task and N win-rate instructions (smoke runs)"
    )
    win = parser.add_argument_group("AlpacaEval-style win rate (runs when --reference_outputs is given)")
    win.add_argument(
        "--reference_outputs",
        default=None,
        help="AlpacaEval-format JSON/JSONL file of reference answers (instruction, output, generator)",
    )
    win.add_argument(
        "--model_outputs",
        default=None,
        help="the model's answers in the same format, instead of generating them (matched by instruction)",
    )
    # Greedy, one answer, the chat template: how AlpacaEval's leaderboard generates (2,048 tokens rarely cut an
    # answer; a cut one is counted in metrics.json).
    add_sampling_args(
        parser,
        defaults={
            "num_return_sequences": 1,
            "temperature": 0.0,
            "max_new_tokens": 2048,
            "sample_batch_size": 8,
            "prompt_format": "chat",
        },
        helps={
            "prompt_format": "chat: the tokenizer's chat template (AlpacaEval's models answer in chat); upstream: "
            "the raw instruction",
            "num_return_sequences": "answers per instruction; the win rate compares one (1)",
            "temperature": "0 = greedy, as AlpacaEval's leaderboard generates",
            "max_new_tokens": "max tokens per answer (a cut answer is counted in metrics.json)",
        },
    )
    add_api_args(parser, prompt_format_help=None, with_limit=False)
    cli.add_output_args(parser)
    args = parser.parse_args(argv)
    check_api_args(parser, args)
    check_sampling_args(parser, args)
    if args.num_return_sequences != 1:
        parser.error("the win rate compares one answer per instruction: --num_return_sequences 1")
    if args.batch_size != "auto" and not (args.batch_size.isdigit() and int(args.batch_size) > 0):
        parser.error(f"--batch_size takes a positive integer or 'auto', got {args.batch_size!r}")
    if args.model_outputs and not args.reference_outputs:
        parser.error("--model_outputs needs --reference_outputs (the answers it is compared with)")
    args.task_list = downstream.parse_task_list(args.tasks)
    if not args.task_list and not args.reference_outputs:
        parser.error("nothing to do: --tasks none and no --reference_outputs")
    return args


def model_label(model_name: str, adapter: str | None) -> str:
    """The model's name in the default run name and results.md. A self-improvement run's model folders are all
    called round_<k>/merged or round_<k>/adapter, so those are named by the run that holds them
    (outputs/ipo-m/round_1/merged -> ipo-m-round_1-merged), and any adapter by its parent folder."""
    path = Path(model_name)
    if not (adapter or (path.name == "merged" and path.is_dir())):
        return cli.model_short_name(model_name)
    parent = path.resolve().parent
    holder = f"{parent.parent.name}-{parent.name}" if re.fullmatch(r"round_\d+", parent.name) else parent.name
    return f"{holder}-{path.name}"


def adapter_and_base(args) -> tuple[str | None, str]:
    """(adapter folder or None, the model to load): a folder holding adapter_config.json is an adapter."""
    if not (Path(args.model_name) / ADAPTER_CONFIG).is_file():
        return None, args.model_name
    base = args.base_model or read_adapter_config(args.model_name).get("base_model_name_or_path")
    if not base:
        raise IpoError(f"{args.model_name}/{ADAPTER_CONFIG} names no base model; pass --base_model")
    return args.model_name, base


def load_model(args, adapter: str | None, base: str):
    """The model (base + adapter when given) and tokenizer, loaded once for lm-eval and the generation."""
    model, tokenizer, device, dtype = load_model_and_tokenizer(
        ModelSpec(base, args.dtype, args.device, args.quantized, args.trust_remote_code)
    )
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).eval()
        if (Path(adapter) / "tokenizer_config.json").is_file():  # the tokenizer trained with the adapter
            tokenizer = load_tokenizer(adapter)
    return model, tokenizer, device, dtype


def win_rate_inputs(args) -> tuple[list[dict], list[dict] | None, int]:
    """(references, the model's outputs from --model_outputs or None, references in the file before --limit),
    read and matched before any load."""
    references = alpaca_eval.read_outputs(args.reference_outputs, "--reference_outputs")
    n_in_file = len(references)
    references = references[: args.limit] if args.limit else references
    outputs = None
    if args.model_outputs:
        outputs = alpaca_eval.match_outputs(
            references, alpaca_eval.read_outputs(args.model_outputs, "--model_outputs"), args.model_outputs
        )
    return references, outputs, n_in_file


def generate_outputs(run: RunDir, args, state: dict, references: list[dict], name: str) -> list[dict]:
    """The model's greedy answer to each reference instruction, generated into alpaca_eval/outputs.jsonl
    (resumable) and written in AlpacaEval's format as alpaca_eval/model_outputs.json."""
    log = RecordLog(run.file("alpaca_eval/outputs.jsonl"))
    prompts = [Prompt(str(i), ref["instruction"], "") for i, ref in enumerate(references)]
    if any(p.id not in log for p in prompts):
        model, tokenizer = state["load"]()
        sampler = Sampler(
            model, tokenizer, sampling_settings_from_args(args), batch_size=args.sample_batch_size, salt="alpaca_eval"
        )
        run.update_resolved(sampling=sampler.resolved())
        sample_into_log(sampler, tokenizer, prompts, log, args.prompt_format, desc="answers")
    records = log.ordered(p.id for p in prompts)
    outputs = [
        {"instruction": ref["instruction"], "output": r["responses"][0], "generator": name, "cut": not r["finished"][0]}
        for ref, r in zip(references, records)
    ]
    atomic_write_json(run.file("alpaca_eval/model_outputs.json"), [{k: o[k] for k in o if k != "cut"} for o in outputs])
    return outputs


def run_win_rate(run: RunDir, args, state: dict, inputs: tuple, client, name: str) -> dict:
    references, outputs, n_in_file = inputs
    generated = outputs is None
    if generated:
        outputs = generate_outputs(run, args, state, references, name)
    examples = alpaca_eval.comparisons(references, outputs)
    log = RecordLog(run.file("alpaca_eval/judgements.jsonl"))
    failed = [k for k, r in log.records.items() if r.get("failure")]
    if failed:
        logger.info("asking again %d judgement(s) that failed in an earlier run", len(failed))
        log.discard(failed)
    alpaca_eval.judge_into_log(client, examples, log)
    metrics = alpaca_eval.win_rate_metrics(log.ordered(e.id for e in examples), n_in_file)
    metrics["limit"] = args.limit
    metrics["judge"] = client.describe()
    metrics["usage"] = client.usage()
    metrics["model_outputs"] = "generated" if generated else args.model_outputs
    if generated:
        metrics["n_cut_at_max_new_tokens"] = sum(bool(o["cut"]) for o in outputs)
    return metrics


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.log_level)
    logging.getLogger("lm_eval").setLevel(logging.WARNING if args.log_level != "debug" else logging.DEBUG)
    seed_everything(args.seed)

    ###############
    # Everything checked before a model loads or a request is sent
    ###############
    num_fewshot = downstream.parse_num_fewshot(args.num_fewshot, args.task_list)
    manager = downstream.task_manager(args.task_list, args.include_path) if args.task_list else None
    downstream.check_task_requirements(args.task_list)
    adapter, base = adapter_and_base(args)
    win_inputs = win_rate_inputs(args) if args.reference_outputs else None
    client = client_from_args(args) if args.reference_outputs else None
    if win_inputs and win_inputs[1] is None:  # the model answers the instructions: it needs a stop token
        check_can_generate(base, args.trust_remote_code)
    elif args.task_list:  # a wrong model path or id: one line now, not after the run folder is made
        load_tokenizer(base, trust_remote_code=args.trust_remote_code)
    name = model_label(args.model_name, adapter)
    inputs = {args.model_name: "model", base: "model"}  # an adapter's base too: a changed base changes the scores
    inputs.update({path: "dataset" for path in (args.reference_outputs, args.model_outputs) if path})
    run = RunDir(
        args.output_dir,
        args.run_name or f"downstream-{name}",
        overwrite=args.overwrite,
        inputs=inputs,
        coverage=("limit",),  # a resume may widen --limit (tasks run again, new instructions added), never narrow it
    )
    run.check(cli.public_args(args))
    run.start(
        cli.public_args(args),
        resolved={
            "adapter": adapter,
            "base_model": base,
            "tasks": args.task_list,
            "num_fewshot": num_fewshot,
            "judge": client.describe() if client else None,
            "lm_eval_version": _version("lm_eval"),
        },
    )

    state: dict = {}

    def load():  # once, and only when something is left to compute
        if "model" not in state:
            model, tokenizer, device, dtype = load_model(args, adapter, base)
            state.update(model=model, tokenizer=tokenizer)
            run.update_resolved(device=device, dtype=str(dtype))
        return state["model"], state["tokenizer"]

    state["load"] = load

    ###############
    # lm-eval tasks, one at a time (a finished one is skipped on resume)
    ###############
    folder = run.file("lm_eval")
    tasks: dict[str, dict] = {}
    for task in args.task_list:
        settings = {
            "num_fewshot": num_fewshot.get(task),
            "limit": args.limit,
            "apply_chat_template": args.apply_chat_template,
        }
        summary = downstream.finished_task(folder, task, settings)
        if summary is None:
            if "lm" not in state:
                model, tokenizer = load()
                batch = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
                state["lm"] = downstream.lm_eval_model(model, tokenizer, batch)
            logger.info("lm-eval: %s", task)
            summary = downstream.run_task(state["lm"], manager, task, folder, **settings)
        tasks[task] = summary

    ###############
    # AlpacaEval-style win rate
    ###############
    win = run_win_rate(run, args, state, win_inputs, client, name) if args.reference_outputs else None

    ###############
    # metrics.json, results.md
    ###############
    markdown = downstream.write_outputs(
        run.path,
        args.model_name,
        name,
        tasks,
        win,
        reference_outputs=args.reference_outputs,
        limit=args.limit,
        apply_chat_template=args.apply_chat_template,
    )
    print(markdown)
    return 0


def _version(package: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(package.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(cli.run(main))
