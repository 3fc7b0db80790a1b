"""Generate MMLU answers as upstream did, then grade them (upstream's DPO/Evals/sample_mmlu.py, which had no grading).

Upstream wrapped each question in its multiple-choice prompt (choices numbered from 1) and "[INST] ... [/INST]",
sampled one answer (temperature 0.7, 100 new tokens, seed 42) from a base model plus a PEFT adapter and pushed
the answers. Here the answers are also mapped back to a choice and scored against the 0-based ``answer``:

    python DPO/Evals/sample_mmlu.py --model_name mistralai/Mistral-7B-Instruct-v0.1 \
        --adapter outputs/dpo-run/round_1/adapter --dataset_name mmlu_sampled_500.jsonl

    python DPO/Evals/sample_mmlu.py --model_name outputs/dpo-run/round_1/merged --dataset_name cais/mmlu \
        --config_name all --split test --max_examples 100 --prompt_format chat --temperature 0

The data needs columns question, choices (a list) and answer (0-based index or letter); subject is optional.
Outputs in <output_dir>/<run_name>/: responses.jsonl (resumable), predictions.jsonl, metrics.json, results.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ipo import cli, hub
from ipo.benchmarks.mmlu import answer_index, extract_choice, mmlu_metrics
from ipo.cli.selfimprove import add_sampling_args, sampling_settings_from_args
from ipo.data import read_records, require_columns, row_ids
from ipo.modeling import load_model_and_tokenizer, load_tokenizer
from ipo.prompts import UPSTREAM_INST_PROMPT, mmlu_instruction
from ipo.report import markdown_table, pct
from ipo.runs import RecordLog, RunDir, atomic_write_json, atomic_write_jsonl, atomic_write_text, seed_everything
from ipo.selfimprove.prompts_pool import Prompt
from ipo.selfimprove.sampling import Sampler, check_can_generate, sample_into_log
from ipo.training.merge import read_adapter_config

logger = cli.logger


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_model_args(parser)
    parser.add_argument("--adapter", default=None, help="a PEFT adapter folder applied on top of --model_name")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", required=True, help="Hub dataset id or local json/jsonl/parquet file")
    data.add_argument("--config_name", default=None, help="Hub configuration (e.g. 'all' for cais/mmlu)")
    data.add_argument("--split", default="train", help="split (upstream read its subset's 'train' split)")
    data.add_argument("--max_examples", type=int, default=None, help="use only the first N questions (smoke runs)")
    add_sampling_args(parser, defaults={"num_return_sequences": 1, "max_new_tokens": 100, "sample_batch_size": 8})
    cli.add_output_args(parser)
    upload = parser.add_argument_group("Hugging Face Hub (nothing is uploaded without --push_to_hub)")
    upload.add_argument("--push_to_hub", action="store_true", help="upload the graded answers as a Hub dataset")
    upload.add_argument("--hub_dataset_id", default=None, help="Hub dataset for --push_to_hub ('user/name' or 'name')")
    args = parser.parse_args(argv)
    cli.check_positive(parser, args, "max_examples", "max_new_tokens", "sample_batch_size")
    if args.num_return_sequences != 1:
        parser.error("sample_mmlu.py grades one answer per question: --num_return_sequences 1")
    return args


def load_questions(args) -> list[dict]:
    rows = read_records(args.dataset_name, args.split, config=args.config_name)
    require_columns(rows, ["question", "choices", "answer"], args.dataset_name)
    ids = row_ids(rows, args.dataset_name)
    questions = []
    for row_id, row in zip(ids, rows):
        choices = [str(c) for c in row["choices"]]
        questions.append(
            {
                "id": row_id,
                "question": row["question"],
                "choices": choices,
                "answer": answer_index(row["answer"], len(choices)),
                "subject": row.get("subject", ""),
            }
        )
    return questions[: args.max_examples] if args.max_examples else questions


def formatted_input(question: dict, prompt_format: str) -> str:
    """What the model is asked: upstream's [INST] text, or (chat) the bare instruction for the chat template."""
    instruction = mmlu_instruction(question["question"], question["choices"])
    return UPSTREAM_INST_PROMPT.format(instruction=instruction) if prompt_format == "upstream" else instruction


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.log_level)
    seed_everything(args.seed)
    questions = load_questions(args)
    check_can_generate(args.model_name, args.trust_remote_code)
    name = cli.model_short_name(args.model_name)
    if args.adapter:  # adapters are folders named "adapter": name them by the run folder that holds them
        name += f"-{Path(args.adapter).resolve().parent.name}-adapter"
    run = RunDir(args.output_dir, args.run_name or f"mmlu-{name}-{args.prompt_format}", overwrite=args.overwrite)
    run.check(cli.public_args(args))

    ###############
    # Model (base + optional adapter) and sampler
    ###############
    model, tokenizer, device, dtype = load_model_and_tokenizer(cli.model_spec(args))
    if args.adapter:
        from peft import PeftModel

        read_adapter_config(args.adapter)
        model = PeftModel.from_pretrained(model, args.adapter).eval()
        if (Path(args.adapter) / "tokenizer_config.json").is_file():  # the tokenizer trained with the adapter
            tokenizer = load_tokenizer(args.adapter)
    sampler = Sampler(
        model, tokenizer, sampling_settings_from_args(args), batch_size=args.sample_batch_size, salt="mmlu"
    )
    run.start(
        cli.public_args(args),
        resolved={"device": device, "dtype": str(dtype), "n_questions": len(questions), "sampling": sampler.resolved()},
    )

    ###############
    # Generate (resumable), then grade
    ###############
    # In upstream mode the [INST] text is the raw prompt; in chat mode the instruction goes through the template.
    prompts = [Prompt(q["id"], formatted_input(q, args.prompt_format), q["subject"]) for q in questions]
    log = RecordLog(run.file("responses.jsonl"))
    sample_into_log(
        sampler, tokenizer, prompts, log, "upstream" if args.prompt_format == "upstream" else "chat", desc="MMLU"
    )
    responses = {str(r["id"]): r["responses"][0] for r in log.ordered(q["id"] for q in questions)}
    predictions = []
    for q in questions:
        response = responses[str(q["id"])]
        predicted = extract_choice(response, q["choices"])
        predictions.append(
            {
                "id": q["id"],
                "subject": q["subject"],
                "formatted_input": formatted_input(q, args.prompt_format),
                "model_response": response,
                "predicted": predicted,
                "answer": q["answer"],
                "correct": predicted == q["answer"],
            }
        )
    metrics = mmlu_metrics(predictions)
    atomic_write_jsonl(run.file("predictions.jsonl"), predictions)
    atomic_write_json(run.file("metrics.json"), metrics)
    rows = [["all", metrics["n"], pct(metrics["accuracy"]), pct(metrics["parsed"])]]
    rows += [[s, m["n"], pct(m["accuracy"]), pct(m["parsed"])] for s, m in metrics["subjects"].items()]
    markdown = (
        f"# MMLU (generative, {args.prompt_format} prompt): {name}\n\n"
        + markdown_table(["subject", "questions", "accuracy %", "answer parsed %"], rows)
        + "\nAn answer that names no choice counts as wrong.\n"
    )
    atomic_write_text(run.file("results.md"), markdown)
    print(markdown)
    if args.push_to_hub:
        hub.push_records(
            predictions,
            args.hub_dataset_id
            if args.hub_dataset_id and "/" in args.hub_dataset_id
            else hub.repo_id(None, args.hub_dataset_id or run.path.name),
        )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
