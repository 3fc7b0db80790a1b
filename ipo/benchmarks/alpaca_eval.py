"""An AlpacaEval-style win rate: a model's outputs against reference outputs, judged pairwise through an API.

The paper (Garg et al., arXiv 2502.16182, downstream table of the DPO-trained Mistral-7B) reports an
AlpacaEval win rate without naming the annotator or the reference model, and the authors' code has no
downstream harness. AlpacaEval (Li et al. 2023, https://github.com/tatsu-lab/alpaca_eval) compares each of a
model's outputs with a reference output for the same instruction through a GPT-4 annotator and reports the
percentage the model wins. Here the annotator is the project's own pairwise API judge
(ipo.judges.api_client: any OpenAI-compatible endpoint, retries, response cache, failures counted), with
the prompt ipo.prompts.ALPACA_EVAL_PAIRWISE_PROMPT, read as "Output (a)" or "Output (b)":

* Files in AlpacaEval's format: a JSON list (or JSON Lines) of {"instruction", "output", "generator"}; the
  reference file decides the instructions, the model's outputs are matched to them by instruction text.
* Each instruction is asked in both orders (model as (a), then as (b)), cancelling the judge's position
  bias: the model scores 1 for an instruction when it wins both orders, 0 when it loses both, and 0.5 when
  the orders disagree (a position tie, counted and stated). Identical outputs are a tie without a request,
  as AlpacaEval scores them.
* A request that fails for good, or an answer naming neither output, makes the instruction a failure:
  counted by kind, never scored, and asked again by the next run (answers already paid for come from the
  cache). The win rate is over the instructions judged in both orders, with its standard error.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Sequence

from ipo import IpoError
from ipo.data import Example, read_local_records
from ipo.judges.api import Answer, ApiScorer, answer_fields, parse_generated
from ipo.judges.api_client import ApiClient
from ipo.prompts import ALPACA_EVAL_PAIRWISE_PROMPT, ALPACA_EVAL_SYSTEM
from ipo.report import markdown_table
from ipo.runs import RecordLog, score_into_log

logger = logging.getLogger("ipo")

# The orders each instruction is asked in: (name, the label that means the model's output won).
ORDERS = (("model_first", "a"), ("model_second", "b"))
# Greedy, so the verdict is reproducible; the answer is "Output (a)" (4 or 5 tokens): 32 leave room for a
# judge that adds a word or two before it.
JUDGE_REQUEST = {"max_tokens": 32, "temperature": 0}
# "Output (a)", "output b", "**Output (b)**": the first such label in the judge's text.
VERDICT = re.compile(r"output\s*\(?\s*([ab])\s*\)?(?![a-z])", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------------
# Files in AlpacaEval's format
# ---------------------------------------------------------------------------------------------------
def read_outputs(path: str, what: str) -> list[dict]:
    """Rows {"instruction", "output", "generator"} of an AlpacaEval-format file (JSON list or JSON Lines);
    one line (IpoError) for a row without instruction or output text, or for an empty file."""
    rows = read_local_records(path)
    if not rows:
        raise IpoError(f"{what} {path} holds no outputs")
    out = []
    for number, row in enumerate(rows, start=1):
        instruction, output = row.get("instruction"), row.get("output")
        if not isinstance(instruction, str) or not isinstance(output, str):
            raise IpoError(
                f"{what} {path}: row {number} needs text fields 'instruction' and 'output' (AlpacaEval's format)"
            )
        out.append({"instruction": instruction, "output": output, "generator": str(row.get("generator") or "")})
    return out


def match_outputs(references: Sequence[dict], outputs: Sequence[dict], path: str) -> list[dict]:
    """The model's output row for each reference instruction (matched by instruction text); one line naming
    how many instructions the model's file lacks."""
    by_instruction: dict[str, dict] = {}
    for row in outputs:
        by_instruction.setdefault(row["instruction"], row)
    missing = [r["instruction"] for r in references if r["instruction"] not in by_instruction]
    if missing:
        raise IpoError(
            f"--model_outputs {path} lacks {len(missing)} of the {len(references)} reference instructions "
            f"(first: {missing[0][:80]!r}); outputs are matched to the references by instruction text"
        )
    return [by_instruction[r["instruction"]] for r in references]


def comparisons(references: Sequence[dict], outputs: Sequence[dict]) -> list[Example]:
    """One Example per instruction: responses [model output, reference output], id = the reference row."""
    return [
        Example(
            id=str(index),
            prompt=ref["instruction"],
            responses=[out["output"], ref["output"]],
            meta={"generator": out["generator"], "reference_generator": ref["generator"]},
        )
        for index, (ref, out) in enumerate(zip(references, outputs))
    ]


# ---------------------------------------------------------------------------------------------------
# Requests and answers (pure)
# ---------------------------------------------------------------------------------------------------
def judge_request(instruction: str, output_1: str, output_2: str) -> dict:
    """The body of one pairwise request (without the model): system turn, prompt, JUDGE_REQUEST."""
    content = ALPACA_EVAL_PAIRWISE_PROMPT.format(instruction=instruction, output_1=output_1, output_2=output_2)
    return {
        "messages": [{"role": "system", "content": ALPACA_EVAL_SYSTEM}, {"role": "user", "content": content}],
        **JUDGE_REQUEST,
    }


def requests_for(example: Example) -> list[dict]:
    """Both orders: the model's output as (a), then as (b); none for identical outputs (a tie as it is)."""
    model_output, reference = example.responses
    if model_output.strip() == reference.strip():
        return []
    return [
        judge_request(example.prompt, model_output, reference),
        judge_request(example.prompt, reference, model_output),
    ]


def verdict(text: str) -> str | None:
    """ "a" or "b": the first "Output (a|b)" in the judge's text; None when it names neither."""
    match = VERDICT.search(text)
    return match.group(1).lower() if match else None


def parse_verdict(response: dict) -> Answer:
    return parse_generated(response, verdict)


def scorer(client: ApiClient) -> ApiScorer:
    return ApiScorer(client, requests_for, parse_verdict)


def judgement_record(example: Example, verdicts: list, extra: dict) -> dict:
    """One instruction's record: each order's verdict and whether the model won it, and ``score`` (1, 0.5,
    0; None for a failure); ``position_tie``: the orders disagree; ``identical``: no request was needed."""
    identical = not verdicts
    names = [name for name, _ in ORDERS]
    wins = [None if v is None else v == label for v, (_, label) in zip(verdicts, ORDERS)]
    failure = extra["failure"] if not identical else None
    score = 0.5 if identical else (None if failure else sum(wins) / len(wins))
    record = {
        "id": example.id,
        "instruction": example.prompt,
        "generator": example.meta.get("generator", ""),
        "reference_generator": example.meta.get("reference_generator", ""),
        "score": score,
        "identical": identical,
        "position_tie": not identical and not failure and len(set(wins)) > 1,
        **{f"verdict_{name}": (verdicts[i] if not identical else None) for i, name in enumerate(names)},
    }
    if identical:
        record.update({"failure": None, "failed": [], **{f"judge_text_{name}": None for name in names}})
    else:
        record.update(answer_fields(extra, names, keys=("judge_text",)))
    return record


def judge_into_log(client: ApiClient, examples: Sequence[Example], log: RecordLog) -> int:
    """Judge the instructions ``log`` lacks (failed ones were dropped from it by the caller), appending one
    judgement_record each as answers arrive; identical outputs are recorded as ties without a request.
    The first request not cached goes alone (ApiScorer.probe), so a wrong key, URL or model fails at once.
    Returns how many instructions were judged now."""
    todo = [e for e in examples if e.id not in log]
    identical = [e for e in todo if not requests_for(e)]
    log.append([judgement_record(e, [], {}) for e in identical])
    asked = [e for e in todo if requests_for(e)]
    if not asked:
        return len(identical)
    judge = scorer(client)
    judge.probe(asked)
    return len(identical) + score_into_log(judge, asked, log, judgement_record, unit="instruction", desc="judging")


# ---------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------
def percent(value: float | None) -> float | None:
    """A fraction as a percentage rounded to 2 decimals (AlpacaEval's leaderboard precision); None stays."""
    return None if value is None else round(100 * value, 2)


def win_rate_metrics(records: Sequence[dict], n_in_data: int) -> dict:
    """win_rate (percent, ties half) and its standard error over the instructions judged, with the counts:
    wins (both orders), losses, position ties, identical outputs, failures by kind, and each order's own
    win rate (how far the judge's position bias pulls)."""
    judged = [r for r in records if r["score"] is not None]
    failures = Counter(r["failure"] for r in records if r["score"] is None)
    scores = [r["score"] for r in judged]
    n = len(scores)
    mean = sum(scores) / n if n else None
    stderr = (
        math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1)) / math.sqrt(n) if n > 1 and mean is not None else None
    )
    orders = {}
    for name, label in ORDERS:
        answered = [r[f"verdict_{name}"] for r in records if r[f"verdict_{name}"] is not None]
        won = sum(v == label for v in answered)
        orders[name] = {"n_answered": len(answered), "win_rate": percent(won / len(answered)) if answered else None}
    return {
        "win_rate": percent(mean),
        "win_rate_stderr": percent(stderr),
        "n_judged": n,
        "n_wins": sum(s == 1 for s in scores),
        "n_losses": sum(s == 0 for s in scores),
        "n_position_ties": sum(bool(r["position_tie"]) for r in judged),
        "n_identical": sum(bool(r["identical"]) for r in judged),
        "n_failed": sum(failures.values()),
        "failures_by_kind": dict(failures),
        "n_in_data": n_in_data,
        "ties": "a position tie (the two orders disagree) and identical outputs count 0.5",
        "orders": orders,
    }


def win_rate_markdown(metrics: dict) -> str:
    """The win-rate section of results.md."""
    m = metrics
    rows = [
        ["win rate %", m["win_rate"]],
        ["standard error (points)", m["win_rate_stderr"]],
        ["judged in both orders", m["n_judged"]],
        ["won both orders", m["n_wins"]],
        ["lost both orders", m["n_losses"]],
        ["orders disagree (tie, 0.5)", m["n_position_ties"]],
        ["identical outputs (tie, 0.5)", m["n_identical"]],
        ["failed (not scored)", m["n_failed"]],
    ]
    rows += [[f"win rate % with the model {name.split('_')[1]}", o["win_rate"]] for name, o in m["orders"].items()]
    text = "## AlpacaEval-style win rate\n\n" + markdown_table(["", "value"], rows)
    if m["failures_by_kind"]:
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(m["failures_by_kind"].items()))
        text += f"\nFailures ({kinds}) are not scored; re-running the command asks them again.\n"
    return text
