"""Choosing the judge question per RewardBench subset from candidates, without tuning on the test pairs.

Upstream's Reward_Bench/prompt_search.py scored every candidate of ``candidate_prompts.json`` on the
*whole* subset and left the choice to the reader (so the paper's prompts were picked on RewardBench
itself: the very pairs they are then reported on). Here each subset's pairs are split by a seeded
draw into a selection part and a held-out part; the best candidate on the selection part is reported
with its accuracy on the held-out part, next to the paper's prompt on the same held-out pairs. Upstream's
whole-subset report is still written, in its format.

Candidate file format (upstream's): ``{"default": str, "<subset>": [str, ...], ...}``; a subset without
an entry gets ``[default]``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from ipo import IpoError
from ipo.benchmarks.rewardbench import judge_template, section_scores
from ipo.data import Coverage, Example
from ipo.report import markdown_table, mean, pct
from ipo.run_info import describe_run
from ipo.runs import RunDir, atomic_write_json, atomic_write_text

logger = logging.getLogger("ipo")

PAPER = "paper"  # candidate id of the paper's own question when it is not among the candidates


def load_candidate_prompts(path: str | Path) -> dict:
    """The candidate file, checked: one line naming the file on any problem."""
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IpoError(f"{path}: no such prompts file")
    except (OSError, UnicodeDecodeError) as err:
        raise IpoError(f"{path}: cannot be read ({type(err).__name__}: {err})")
    except json.JSONDecodeError as err:
        raise IpoError(f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})")
    if not isinstance(data, dict):
        raise IpoError(f'{path}: expected a JSON object {{"default": "...", "<subset>": ["...", ...]}}')
    if not isinstance(data.get("default"), str) or not data["default"].strip():
        raise IpoError(f'{path}: needs a non-empty "default" prompt string')
    for subset, candidates in data.items():
        if subset == "default":
            continue
        if not isinstance(candidates, list) or not candidates:
            raise IpoError(f"{path}: {subset!r} must be a non-empty list of prompt strings")
        for index, candidate in enumerate(candidates):
            if not isinstance(candidate, str) or not candidate.strip():
                raise IpoError(f"{path}: {subset!r} candidate {index + 1} is not a non-empty string")
    return data


def prompts_fingerprint(prompts: dict) -> str:
    """sha256 of the candidate set, so a resumed run refuses an edited file."""
    return hashlib.sha256(json.dumps(prompts, sort_keys=True).encode("utf-8")).hexdigest()


def candidates_for(subset: str, prompts: dict) -> list[str]:
    """Upstream's ``prompts_dict.get(subset, [prompts_dict['default']])``."""
    return list(prompts.get(subset, [prompts["default"]]))


def paper_candidate(subset: str, candidates: Sequence[str]) -> int | str:
    """The candidate id under which the paper's question for ``subset`` is scored: its index if it is
    one of the candidates (its predictions are then shared), else PAPER."""
    question, _ = judge_template(subset)
    return candidates.index(question) if question in candidates else PAPER


def expand(examples: Sequence[Example], prompts: dict) -> tuple[list[Example], dict[str, dict]]:
    """One example per (pair, candidate), id ``"<pair id>#<candidate id>"``; and per subset its candidates.

    Returns (expanded examples, {subset: {"candidates": [...], "paper": candidate id, "paper_prompt": str}}).
    """
    plan: dict[str, dict] = {}
    expanded = []
    for example in examples:
        if example.subset not in plan:
            candidates = candidates_for(example.subset, prompts)
            plan[example.subset] = {
                "candidates": candidates,
                "paper": paper_candidate(example.subset, candidates),
                "paper_prompt": judge_template(example.subset)[0],
            }
        subset_plan = plan[example.subset]
        ids = list(range(len(subset_plan["candidates"]))) + ([PAPER] if subset_plan["paper"] == PAPER else [])
        for candidate in ids:
            template = subset_plan["paper_prompt"] if candidate == PAPER else subset_plan["candidates"][candidate]
            expanded.append(
                Example(
                    id=f"{example.id}#{candidate}",
                    prompt=example.prompt,
                    responses=example.responses,
                    subset=example.subset,
                    meta={"pair_id": example.id, "candidate": candidate, "template": template},
                )
            )
    return expanded, plan


def selection_split(pair_ids: Sequence, subset: str, fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """(selection ids, held-out ids) of one subset, as strings: a seeded shuffle, the first ``fraction``
    for selection. Both parts are non-empty when the subset has two pairs or more."""
    ids = sorted(str(i) for i in pair_ids)
    random.Random(f"{seed}:{subset}").shuffle(ids)
    n_select = round(fraction * len(ids))
    n_select = min(max(n_select, 1), max(len(ids) - 1, 1))
    return set(ids[:n_select]), set(ids[n_select:])


def _accuracy(rows: Sequence[dict]) -> float | None:
    return sum(r["correct"] for r in rows) / len(rows) if rows else None


def summarize(records: Sequence[dict], plan: dict[str, dict], fraction: float, seed: int) -> tuple[dict, dict]:
    """(metrics, upstream multi-prompt report) from per-(pair, candidate) records.

    records: {"pair_id", "subset", "candidate", "correct", ...}. Metrics are fractions; the upstream
    report is in percent on the whole subset, as upstream wrote it.
    """
    by_cell: dict[tuple[str, object], dict[str, dict]] = defaultdict(dict)
    for record in records:
        by_cell[(record["subset"], record["candidate"])][str(record["pair_id"])] = record
    subsets, upstream_subsets, upstream_prompts = {}, {}, {}
    pooled = {"selected": [], "paper": []}
    for subset, subset_plan in sorted(plan.items()):
        candidates = subset_plan["candidates"]
        pair_ids = sorted(by_cell[(subset, 0)], key=str)
        selection, heldout = selection_split(pair_ids, subset, fraction, seed)

        def rows(candidate, part, subset=subset):
            cell = by_cell[(subset, candidate)]
            return [cell[i] for i in sorted(part) if i in cell]

        selection_accuracy = [_accuracy(rows(k, selection)) for k in range(len(candidates))]
        best = max(range(len(candidates)), key=lambda k: (selection_accuracy[k], -k))  # ties: the first
        selected_heldout, paper_heldout = rows(best, heldout), rows(subset_plan["paper"], heldout)
        pooled["selected"] += selected_heldout
        pooled["paper"] += paper_heldout
        whole = [_accuracy(rows(k, set(pair_ids))) for k in range(len(candidates))]
        subsets[subset] = {
            "n_pairs": len(pair_ids),
            "n_selection": len(selection),
            "n_heldout": len(heldout),
            "n_candidates": len(candidates),
            "best_candidate": best + 1,
            "best_prompt": candidates[best],
            "selection_accuracy": selection_accuracy[best],
            "heldout_accuracy": _accuracy(selected_heldout),
            "paper_prompt_heldout_accuracy": _accuracy(paper_heldout),
            "paper_prompt_candidate": subset_plan["paper"] + 1 if subset_plan["paper"] != PAPER else None,
            "selection_accuracies": selection_accuracy,
            "whole_subset_accuracies": whole,
        }
        upstream_subsets[subset] = {
            "average_accuracy": 100 * sum(whole) / len(whole),
            "individual_accuracies": [100 * a for a in whole],
        }
        for k, candidate in enumerate(candidates):
            upstream_prompts[f"{subset}_prompt_{k + 1}"] = {"accuracy": 100 * whole[k], "prompt_template": candidate}
    heldout = {}
    for name in ("selected", "paper"):
        per_subset = {
            s: v["heldout_accuracy" if name == "selected" else "paper_prompt_heldout_accuracy"]
            for s, v in subsets.items()
        }
        sections = section_scores({s: a for s, a in per_subset.items() if a is not None})
        heldout[name] = {
            "accuracy": _accuracy(pooled[name]),
            "n_pairs": len(pooled[name]),
            "sections": sections,
            "score": mean(sections.values()),
        }
    metrics = {"select_fraction": fraction, "seed": seed, "heldout": heldout, "subsets": subsets}
    return metrics, {"subset_accuracies": upstream_subsets, "prompt_accuracies": upstream_prompts}


def results_markdown(metrics: dict, title: str) -> str:
    """results.md: the held-out comparison, then per subset the selection and the chosen prompt."""
    selected, paper = metrics["heldout"]["selected"], metrics["heldout"]["paper"]
    out = [f"# {title}\n"]
    out.append(
        f"Each subset's pairs were split by a seeded draw (seed {metrics['seed']}): "
        f"{pct(metrics['select_fraction'])}% to choose the prompt, the rest held out. On the "
        f"{selected['n_pairs']} held-out pairs the selected prompts score {pct(selected['accuracy'])}% "
        f"(RewardBench score {pct(selected['score'])}) and the paper's prompts {pct(paper['accuracy'])}% "
        f"(score {pct(paper['score'])}).\n"
    )
    rows = [
        [
            subset,
            f"{s['n_selection']}/{s['n_heldout']}",
            f"{s['best_candidate']} of {s['n_candidates']}",
            pct(s["selection_accuracy"]),
            pct(s["heldout_accuracy"]),
            pct(s["paper_prompt_heldout_accuracy"]),
        ]
        for subset, s in metrics["subsets"].items()
    ]
    out.append(
        markdown_table(
            [
                "subset",
                "pairs (select/held out)",
                "selected candidate",
                "selection acc %",
                "held-out acc %",
                "paper prompt held-out acc %",
            ],
            rows,
        )
    )
    out.append("## Selected prompts\n")
    out += [f"- **{subset}**: {s['best_prompt']}" for subset, s in metrics["subsets"].items()]
    return "\n".join(out) + "\n"


def write_outputs(
    run: RunDir,
    records: Sequence[dict],
    plan: dict[str, dict],
    fraction: float,
    seed: int,
    title: str,
    upstream_file: str,
    coverage: Coverage | None = None,
) -> tuple[dict, str]:
    """metrics.json and results.md (the selection and held-out accuracies, see summarize) and upstream's
    whole-subset multi-prompt file, in ``run``. Returns (metrics, results markdown). ``coverage``: which
    pairs of the data were searched on, stated in metrics.json ("coverage") and under results.md's title."""
    metrics, upstream = summarize(records, plan, fraction, seed)
    n_pairs = len({str(r["pair_id"]) for r in records})
    if coverage is not None:
        metrics["coverage"] = coverage.metrics(n_pairs)
    metrics["run"] = describe_run(run.path, "rewardbench", "prompt_search", n=n_pairs, coverage=metrics.get("coverage"))
    too_small = sorted(s for s, v in metrics["subsets"].items() if v["n_heldout"] == 0)
    if too_small:
        logger.warning(
            "%d subsets have a single pair, so nothing of them is held out: %s", len(too_small), ", ".join(too_small)
        )
    markdown = results_markdown(metrics, title)
    if coverage is not None:
        markdown = markdown.replace("\n", "\n\n" + coverage.markdown(n_pairs) + "\n", 1)
    atomic_write_json(run.file("metrics.json"), metrics)
    atomic_write_text(run.file("results.md"), markdown)
    atomic_write_json(run.file(upstream_file), upstream)
    return metrics, markdown
