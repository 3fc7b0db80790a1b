"""RM-Bench (Liu et al., ICLR 2025): loading both data formats, the 3x3 style matrix, and outputs.

Every RM-Bench prompt has 3 chosen and 3 rejected responses in three styles, ordered
[concise, detailed plain, detailed markdown]. A pointwise judge scores all six once; the official
metric (THU-KEG/RM-Bench @ 73c52d7, scripts/utils.py::compute_accuracy and the README's "Clarity on
Avg Calculation") then compares every chosen style with every rejected style:

    M[i][j] = mean over prompts of [score(chosen_i) > score(rejected_j)]    (strict: a tie is wrong)
    hard   = sum of the strict upper triangle / 3   (chosen plainer than rejected: style works against it)
    normal = mean of the diagonal                   (same style)
    easy   = sum of the strict lower triangle / 3   (chosen fancier than rejected)

Rows are split into the domains chat, code, math and safety with ``domain.startswith(...)``, so the
safety-refuse and safety-response files are pooled into one safety matrix (weighted by prompts, not
averaged per file). A domain's score is mean(hard, normal, easy); the overall hard/normal/easy are the
means over domains, and the overall average (the leaderboard's "Overall") is the mean of the domain
scores, which equals the mean of overall hard/normal/easy.

The IPO authors' RM_Bench/ours.py reported only ``level_k`` = accuracy of chosen_k vs rejected_k, i.e.
the diagonal, per Hub dataset (so safety-refuse and safety-response separately). That is kept as
``levels_by_source`` and in upstream's ``accuracy-rm-bench-<model>-yesno.json``.

Used by Preference_Comparison/RM_Bench/{ours,reward_model,self_reward}.py with any scorer whose
``.score(examples)`` yields ``(example, six scores, extra)`` batches (ipo.judges.yes_no.YesNoScorer,
ipo.judges.reward_model.RewardModelScorer, ipo.judges.self_reward.SelfRewardScorer): ``load_rmbench`` -> Examples with
responses [c1, c2, c3, r1, r2, r3]; ``record_maker`` / ``prediction_record`` -> predictions.jsonl lines;
``write_outputs`` -> metrics, tables, heat maps. Records of the 5-point judge carry parse-failure flags
per response; the metrics then count them per domain. A score of None (a chat-mode parse failure) loses
every comparison and ties with nothing.
"""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from typing import Callable, Sequence

from ipo import IpoError
from ipo.data import Example, limit_per_group, read_records, require_columns, require_text
from ipo.prompts import RMBENCH_PROMPTS
from ipo.judges.self_reward import parse_failure_counts

logger = logging.getLogger("ipo")

# The five data domains (the `domain` values of RM-Bench's total_dataset.json, one file each).
DOMAINS = ("chat", "code", "math", "safety-refuse", "safety-response")
# The four scored domains; safety pools safety-refuse and safety-response (official split_dataset_by_domain).
SCORED_DOMAINS = ("chat", "code", "math", "safety")
STYLES = ("concise", "detailed plain", "detailed markdown")
N_STYLES = len(STYLES)

OFFICIAL_HUB_ID = "THU-KEG/RM-Bench"  # the benchmark's own copy: official rows with a `domain` field
# What upstream's RM_Bench/ours.py read, in its order: flattened per-domain re-uploads (chosen_1..3, ...).
UPSTREAM_HUB_IDS = tuple(
    f"Ayush-Singh/RM-Bench-{d}" for d in ("chat", "code", "math", "safety-response", "safety-refuse")
)
HUB_SPLIT = "train"  # the only split of both (upstream: load_dataset(name)["train"])
# Prompts per data domain in the official filtered release (../shared/spec/ipo_upstream.md §3.14).
OFFICIAL_SIZES = {"chat": 129, "code": 228, "math": 529, "safety-refuse": 284, "safety-response": 157}

# Upstream RM_Bench/self_reward.py's --set_name groups of data domains (spec ../shared/spec/ipo_upstream.md
# §3.14; the authors ran the 5-point judge in two halves). RM_Bench/self_reward_gpt.py split differently
# (set1 = chat, code, math, safety-response; set2 = safety-refuse) and is not this table.
SELF_REWARD_SETS: dict[str, tuple[str, ...]] = {
    "set1": ("chat", "code", "math"),
    "set2": ("safety-response", "safety-refuse"),
}

# predictions.jsonl is keyed by "<domain>/<id>": the per-domain files reuse ids (chat and code share 23).
RECORD_KEY = "key"


# ---------------------------------------------------------------------------------------------------
# Domains
# ---------------------------------------------------------------------------------------------------
def scored_domain(domain: str) -> str:
    """The scored domain of a data domain: safety-refuse / safety-response -> safety (official startswith)."""
    return next(d for d in SCORED_DOMAINS if domain.startswith(d))


def domain_from_name(source: str) -> str | None:
    """The data domain a file name or Hub id names, if exactly one: chat_filtered.json -> chat,
    Ayush-Singh/RM-Bench-safety-refuse -> safety-refuse; total_dataset.json or THU-KEG/RM-Bench -> None."""
    name = os.path.basename(source.rstrip("/"))
    found = set(re.findall(r"(?<![A-Za-z])(safety-refuse|safety-response|chat|code|math)(?![A-Za-z])", name))
    return found.pop() if len(found) == 1 else None


def judge_question(domain: str) -> str:
    """Upstream's RM-Bench judge question for a data domain (appendix A.3, keyed RM-Bench-<domain>)."""
    return RMBENCH_PROMPTS[domain]


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------
FLAT_COLUMNS = tuple(f"{side}_{k}" for side in ("chosen", "rejected") for k in range(1, N_STYLES + 1))


def _where(index: int, row: dict) -> str:
    return f"row {index}" + (f" (id {row['id']})" if "id" in row else "")


def _styled_responses(row: dict, index: int, source: str, flattened: bool) -> list[str]:
    """[chosen x3, rejected x3] of one row, in style order, each checked to be text."""
    if flattened:
        return [require_text(row[c], source, row.get("id", index), c) for c in FLAT_COLUMNS]
    responses = []
    for side in ("chosen", "rejected"):
        value = row[side]
        if not isinstance(value, list) or len(value) != N_STYLES:
            got = f"{len(value)} responses" if isinstance(value, list) else f"a {type(value).__name__}"
            raise IpoError(f"{source}: {_where(index, row)}: {side!r} has {got}; RM-Bench rows need exactly "
                           f"{N_STYLES} ({', '.join(STYLES)})")  # fmt: skip
        responses += [require_text(v, source, row.get("id", index), f"{side}[{k}]") for k, v in enumerate(value)]
    return responses


def _row_domain(row: dict, index: int, source: str, domain_flag: str | None, name_domain: str | None) -> str:
    if row.get("domain") is not None:
        domain = row["domain"]
        if domain not in DOMAINS:
            raise IpoError(f"{source}: {_where(index, row)}: unknown domain {domain!r}; "
                           f"expected one of {', '.join(DOMAINS)}")  # fmt: skip
        return domain
    if domain_flag or name_domain:
        return domain_flag or name_domain
    raise IpoError(
        f"{source}: cannot tell the RM-Bench domain of {_where(index, row)}: it has no 'domain' field, no "
        f"--domain was given, and the name names none of {', '.join(DOMAINS)}; pass --domain"
    )


def load_rmbench_source(source: str, domain: str | None = None) -> list[Example]:
    """Examples of one local file or Hub dataset, in either RM-Bench format.

    Official rows: ``id, subset, prompt, chosen [3], rejected [3]`` (and ``domain`` in total_dataset.json
    / THU-KEG/RM-Bench). Flattened rows (upstream's Ayush-Singh/RM-Bench-<domain>): ``prompt, chosen_1..3,
    rejected_1..3`` (id and subset used when present). Each row's domain is its ``domain`` field, else
    ``domain`` (--domain), else the one the source's name gives. Example ids are "<domain>/<id>"; the
    row's own id is kept in ``meta["id"]``.
    """
    if domain is not None and domain not in DOMAINS:
        raise IpoError(f"unknown --domain {domain!r}; expected one of {', '.join(DOMAINS)}")
    rows = read_records(source, HUB_SPLIT)
    if not rows:
        raise IpoError(f"{source}: the dataset is empty")
    flattened = "chosen" not in rows[0] and any(k.startswith("chosen_") for k in rows[0])
    require_columns(rows, ("prompt", *(FLAT_COLUMNS if flattened else ("chosen", "rejected"))), source)
    name_domain = domain_from_name(source)
    examples = []
    overridden = False
    for index, row in enumerate(rows):
        row_domain = _row_domain(row, index, source, domain, name_domain)
        if domain and row_domain != domain and not overridden:
            logger.warning("%s: rows carry their own domain (%s), which wins over --domain %s",
                           source, row_domain, domain)  # fmt: skip
            overridden = True
        row_id = row.get("id", index)
        examples.append(Example(
            id=f"{row_domain}/{row_id}",
            prompt=require_text(row["prompt"], source, row_id, "prompt"),
            responses=_styled_responses(row, index, source, flattened),
            subset=str(row.get("subset") or ""),
            domain=row_domain,
            meta={"id": row_id},
        ))  # fmt: skip
    return examples


def load_rmbench(sources: Sequence[str] = UPSTREAM_HUB_IDS, domain: str | None = None) -> list[Example]:
    """Examples of several sources (files or Hub ids, either format); (domain, id) must be unique overall."""
    examples: list[Example] = []
    origin: dict[str, str] = {}
    for source in sources:
        for example in load_rmbench_source(source, domain):
            if example.id in origin:
                other = origin[example.id]
                raise IpoError(f"{source}: id {example.meta['id']!r} of domain {example.domain} "
                               f"{'occurs twice' if other == source else f'is also in {other}'}; "
                               "ids must be unique per domain to resume safely")  # fmt: skip
            origin[example.id] = source
            examples.append(example)
    return examples


def default_sources(domains: Sequence[str] | None = None) -> list[str]:
    """Upstream's Hub datasets (the default --dataset), only those of ``domains`` when given."""
    return [h for h in UPSTREAM_HUB_IDS if domains is None or domain_from_name(h) in domains]


def select_domains(examples: list[Example], domains: Sequence[str] | None, set_name: str) -> list[Example]:
    """The examples of the named group of data domains (e.g. SELF_REWARD_SETS["set2"]); all if None."""
    if domains is None:
        return examples
    kept = [e for e in examples if e.domain in domains]
    if not kept:
        found = ", ".join(domain_counts(examples)) or "none"
        raise IpoError(f"no prompts of the domains of --set_name {set_name} ({', '.join(domains)}) in --dataset "
                       f"(its domains: {found})")  # fmt: skip
    return kept


def load_examples(sources: Sequence[str], domain: str | None = None, limit: int | None = None,
                  set_name: str | None = None) -> tuple[list[Example], dict[str, int]]:  # fmt: skip
    """What an RM-Bench script scores, from its --dataset, --domain, --limit and --set_name: the examples
    (at most ``limit`` per data domain, in file order) and the number per data domain, logged.

    ``set_name`` (a key of SELF_REWARD_SETS) keeps that group's domains; with the default --dataset only
    the group's Hub datasets are fetched.
    """
    domains = SELF_REWARD_SETS[set_name] if set_name else None
    if domains and list(sources) == default_sources():
        sources = default_sources(domains)
    examples = select_domains(load_rmbench(sources, domain), domains, set_name)
    examples = limit_per_group(examples, limit, key=lambda e: e.domain)
    counts = domain_counts(examples)
    logger.info("%d prompts (%s) from %d source(s)", len(examples), ", ".join(f"{d} {n}" for d, n in counts.items()),
                len(sources))  # fmt: skip
    return examples, counts


def domain_counts(examples: Sequence[Example]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for example in examples:
        counts[example.domain] += 1
    return {d: counts[d] for d in DOMAINS if d in counts}


# ---------------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------------
def by_side(name: str, values: Sequence) -> dict[str, list]:
    """Per-response values [chosen x3, rejected x3] as {<name>_chosen: [3], <name>_rejected: [3]}."""
    if len(values) != 2 * N_STYLES:
        raise ValueError(f"expected {2 * N_STYLES} values of {name}, got {len(values)}")
    return {f"{name}_chosen": list(values[:N_STYLES]), f"{name}_rejected": list(values[N_STYLES:])}


def prediction_record(example: Example, scores: Sequence[float | None], extra: dict | None = None,
                      score_name: str = "p_yes") -> dict:  # fmt: skip
    """One predictions.jsonl line: key, id, domain, subset, <score>_chosen [3], <score>_rejected [3], extra."""
    return {
        RECORD_KEY: example.id,
        "id": example.meta.get("id", example.id),
        "domain": example.domain,
        "subset": example.subset,
        **by_side(score_name, scores),
        **(extra or {}),
    }


def record_maker(score_name: str = "p_yes") -> Callable[[Example, Sequence[float], dict], dict]:
    """The ``make_record`` for ipo.runs.score_into_log."""
    return lambda example, scores, extra: prediction_record(example, scores, extra, score_name)


# ---------------------------------------------------------------------------------------------------
# The official metric (small pure functions)
# ---------------------------------------------------------------------------------------------------
def _pairwise_fraction(chosen_scores, rejected_scores, compare) -> list[list[float]]:
    import numpy as np

    chosen = np.asarray(chosen_scores, dtype=float)
    rejected = np.asarray(rejected_scores, dtype=float)
    if chosen.ndim != 2 or chosen.shape[1] != N_STYLES or rejected.shape != chosen.shape or len(chosen) == 0:
        raise ValueError(f"expected two (N, {N_STYLES}) score arrays with N > 0, got {chosen.shape} and {rejected.shape}")
    return compare(chosen[:, :, None], rejected[:, None, :]).mean(axis=0).tolist()


def style_accuracy_matrix(chosen_scores, rejected_scores) -> list[list[float]]:
    """The official 3x3 accuracy matrix (THU-KEG/RM-Bench scripts/utils.py::compute_accuracy).

    Args:
        chosen_scores, rejected_scores: (N, 3) scores of N prompts' responses in style order
            [concise, detailed plain, detailed markdown].
    Returns:
        (3, 3) nested lists, M[i][j] = mean_n [chosen_scores[n, i] > rejected_scores[n, j]]: rows are the
        chosen style, columns the rejected style; strict >, so a tie counts as wrong. A None score (a
        chat-mode parse failure) becomes NaN, which loses every comparison on either side.
    """
    import numpy as np

    return _pairwise_fraction(chosen_scores, rejected_scores, np.greater)


def style_tie_matrix(chosen_scores, rejected_scores) -> list[list[float]]:
    """(3, 3) fraction of prompts where chosen_i and rejected_j score exactly the same (same shapes; a
    None score ties with nothing)."""
    import numpy as np

    return _pairwise_fraction(chosen_scores, rejected_scores, np.equal)


def parsed_accuracy_matrix(chosen_scores, rejected_scores, chosen_failed, rejected_failed) -> list[list[float | None]]:
    """The 3x3 accuracy matrix over parsed judgements only (the 5-point judge's parse failures left out).

    Args:
        chosen_scores, rejected_scores: (N, 3) scores as for style_accuracy_matrix (None allowed).
        chosen_failed, rejected_failed: (N, 3) booleans, True where that judgement failed to parse.
    Returns:
        (3, 3) nested lists, M[i][j] = mean of [chosen_i > rejected_j] over the prompts where neither
        chosen_i nor rejected_j failed; None where no prompt qualifies.
    """
    import numpy as np

    chosen = np.asarray(chosen_scores, dtype=float)[:, :, None]
    rejected = np.asarray(rejected_scores, dtype=float)[:, None, :]
    parsed = ~np.asarray(chosen_failed, dtype=bool)[:, :, None] & ~np.asarray(rejected_failed, dtype=bool)[:, None, :]
    wins = ((chosen > rejected) & parsed).sum(axis=0)
    counts = parsed.sum(axis=0)
    return [[float(wins[i, j] / counts[i, j]) if counts[i, j] else None for j in range(N_STYLES)]
            for i in range(N_STYLES)]  # fmt: skip


def _cells_mean(cells: Sequence[float | None]) -> float | None:
    """Mean of matrix cells; None if any cell was not measured (a pairwise judge that compared only some)."""
    return None if any(v is None for v in cells) else sum(cells) / len(cells)


def hard_normal_easy(matrix: Sequence[Sequence[float | None]]) -> dict[str, float | None]:
    """hard = strict upper triangle / 3, normal = mean of the diagonal, easy = strict lower triangle / 3.

    With 3 styles each triangle has 3 cells, so each value is the mean of its cells (compute_accuracy).
    A value whose cells include an unmeasured one (None) is None.
    """
    n = len(matrix)
    return {
        "hard": _cells_mean([matrix[i][j] for i in range(n) for j in range(i + 1, n)]),
        "normal": _cells_mean([matrix[i][i] for i in range(n)]),
        "easy": _cells_mean([matrix[i][j] for i in range(n) for j in range(i)]),
    }


def pairwise_matrices(records: Sequence[dict]) -> tuple[list[list[float | None]], list[list[float | None]]]:
    """(accuracy matrix, tie matrix) of a pairwise judge's records, for compute_metrics(matrices=...).

    Each record holds ``correct`` and ``tie``: (3, 3) nested lists, cell [i][j] = the verdict on chosen
    style i vs rejected style j (True/False), None where that pair was not compared. Cell [i][j] of the
    result is the mean over the records that compared it; None where none did (e.g. off the diagonal,
    when only chosen_k vs rejected_k was asked, as upstream's binary_gpt.py did).
    """
    def mean_matrix(name: str) -> list[list[float | None]]:
        return [[_mean([r[name][i][j] for r in records if r[name][i][j] is not None]) for j in range(N_STYLES)]
                for i in range(N_STYLES)]  # fmt: skip

    return mean_matrix("correct"), mean_matrix("tie")


def score_matrices(score_name: str = "p_yes") -> Callable[[Sequence[dict]], tuple[list, list]]:
    """The default ``matrices`` of compute_metrics: both matrices from each record's six scores. A score
    that is None (a failed API request) becomes NaN, so every comparison with it is wrong and not a tie."""
    def matrices(records: Sequence[dict]) -> tuple[list, list]:
        chosen = [r[f"{score_name}_chosen"] for r in records]
        rejected = [r[f"{score_name}_rejected"] for r in records]
        return style_accuracy_matrix(chosen, rejected), style_tie_matrix(chosen, rejected)

    return matrices


def diagonal_levels(matrix: Sequence[Sequence[float]]) -> dict[str, float]:
    """Upstream's level_k (chosen_k vs rejected_k, k = 1..3): the diagonal of the matrix."""
    return {f"level_{k + 1}": matrix[k][k] for k in range(len(matrix))}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _mean_weighted(pairs) -> float | None:
    pairs = [(v, w) for v, w in pairs if v is not None]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else None


def _has_parse_flags(records: Sequence[dict]) -> bool:
    return "parse_failed_chosen" in records[0]


def _parse_failure_block(records: Sequence[dict], score_name: str) -> dict:
    """Parse failures of one domain's records and its score without them (the 5-point judge)."""
    counts = parse_failure_counts(records)
    matrix = parsed_accuracy_matrix(*([r[f"{score_name}_{side}"] for r in records] for side in ("chosen", "rejected")),
                                    *([r[f"parse_failed_{side}"] for r in records] for side in ("chosen", "rejected")))  # fmt: skip
    return {
        "n_judgements": counts["n_judgements"],
        "n_parse_failures": counts["n_parse_failures"],
        "parse_failure_rate": counts["parse_failure_rate"],
        "prompts_with_parse_failure": counts["records_with_parse_failure"],
        "matrix_excluding_parse_failures": matrix,
        "score_excluding_parse_failures": _cells_mean(list(hard_normal_easy(matrix).values())),
    }


def _block(records: Sequence[dict], matrices: Callable) -> dict:
    matrix, ties = matrices(records)
    return {
        "n": len(records),
        "matrix": matrix,
        **hard_normal_easy(matrix),
        "levels": diagonal_levels(matrix),
        "tie_rate": _mean(v for row in ties for v in row),  # over the comparisons made
        "n_truncated": sum(bool(r.get("truncated")) for r in records),
    }


def compute_metrics(records: Sequence[dict], score_name: str = "p_yes", matrices: Callable | None = None) -> dict:
    """Metrics from prediction records ({domain, <score>_chosen [3], <score>_rejected [3][, truncated]}).

    All values are fractions in [0, 1]:
    - domains: per scored domain (chat, code, math, safety = safety-refuse + safety-response pooled):
      n, sources (prompts per data domain), matrix, hard, normal, easy, score = mean(hard, normal, easy),
      levels (the diagonal), tie_rate (share of its 9 comparisons per prompt that tie), n_ties (tied
      comparisons; with scores only, not ``matrices``), n_truncated; and, when the records carry parse_failed_chosen / _rejected (the 5-point
      judge), n_judgements, n_parse_failures, parse_failure_rate, prompts_with_parse_failure,
      matrix_excluding_parse_failures and score_excluding_parse_failures (its hard/normal/easy mean; None
      if a cell has no parsed comparison);
    - hard / normal / easy / average: the official overall values, means over ``domains_present`` only.
      They are the official RM-Bench numbers only when ``complete`` (all four domains scored);
    - levels_by_source: upstream's level_1..3 per data domain (as upstream reported per Hub dataset);
    - official_format: the official script's keys (chat, code, math, safety, hard_acc, normal_acc,
      easy_acc, total_avg_acc), for the domains present;
    - with parse-failure flags, the overall n_judgements, n_parse_failures, parse_failure_rate,
      prompts_with_parse_failure and average_excluding_parse_failures (None unless every domain has one).
    ``matrices`` (records -> accuracy and tie matrices) replaces the comparison of scores, e.g.
    pairwise_matrices for a judge that compares two responses; values built on cells it did not measure
    are None (a domain's score too).
    """
    if not records:
        raise IpoError("no predictions to compute metrics from")
    score_based = matrices is None  # every prompt then makes all 9 comparisons
    matrices = matrices or score_matrices(score_name)
    by_domain: dict[str, list[dict]] = defaultdict(list)
    by_source: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_domain[scored_domain(record["domain"])].append(record)
        by_source[record["domain"]].append(record)
    domains = {}
    for name in SCORED_DOMAINS:
        if name in by_domain:
            block = _block(by_domain[name], matrices)
            block["score"] = _cells_mean([block["hard"], block["normal"], block["easy"]])
            if score_based:
                block["n_ties"] = round(block["tie_rate"] * N_STYLES**2 * block["n"])
            sources = defaultdict(int)
            for record in by_domain[name]:
                sources[record["domain"]] += 1
            block["sources"] = {d: sources[d] for d in DOMAINS if d in sources}
            if score_based and _has_parse_flags(records):
                block.update(_parse_failure_block(by_domain[name], score_name))
            domains[name] = block
    present = list(domains)
    overall = {key: _mean(d[key] for d in domains.values()) for key in ("hard", "normal", "easy")}
    levels_by_source = {}
    for name in DOMAINS:
        if name in by_source:
            block = _block(by_source[name], matrices)
            levels_by_source[name] = {"n": block["n"], **block["levels"]}
    average = _mean(d["score"] for d in domains.values())
    parse_failures = {}
    if score_based and _has_parse_flags(records):
        counts = parse_failure_counts(records)
        clean_scores = [d["score_excluding_parse_failures"] for d in domains.values()]
        parse_failures = {
            "n_judgements": counts["n_judgements"],
            "n_parse_failures": counts["n_parse_failures"],
            "parse_failure_rate": counts["parse_failure_rate"],
            "prompts_with_parse_failure": counts["records_with_parse_failure"],
            "average_excluding_parse_failures": None if None in clean_scores else _mean(clean_scores),
        }
    return {
        "n_prompts": len(records),
        "domains_present": present,
        "domains_missing": [d for d in SCORED_DOMAINS if d not in domains],
        "complete": len(present) == len(SCORED_DOMAINS),
        **overall,
        "average": average,
        "tie_rate": _mean_weighted((d["tie_rate"], d["n"]) for d in domains.values()),
        **({"n_ties": sum(d["n_ties"] for d in domains.values())} if score_based else {}),
        **parse_failures,
        "n_truncated": sum(d["n_truncated"] for d in domains.values()),
        "domains": domains,
        "levels_by_source": levels_by_source,
        "official_format": {
            **{name: d["score"] for name, d in domains.items()},
            "hard_acc": overall["hard"], "normal_acc": overall["normal"], "easy_acc": overall["easy"],
            "total_avg_acc": average,
        },  # fmt: skip
    }


def upstream_accuracy(metrics: dict, percent: bool = True, key: str = "level_{k}") -> dict[str, dict[str, float]]:
    """Upstream's accuracy JSON: {"RM-Bench-<domain>": {"level_1": .., "level_2": .., "level_3": ..}}.

    Per data domain, in upstream's dataset order (chat, code, math, safety-response, safety-refuse).
    Upstream keyed by the full Hub id (Ayush-Singh/RM-Bench-<domain>); the data here may come from a
    file, so the key is the part its judge-question lookup used. ``percent``/``key`` cover the
    baselines' variants (reward_model.py wrote fractions under level_<k>_accuracy).
    """
    scale = 100.0 if percent else 1.0
    out = {}
    for hub_id in UPSTREAM_HUB_IDS:
        name = hub_id.split("/")[-1]
        levels = metrics["levels_by_source"].get(name[len("RM-Bench-"):])
        if levels is not None:
            out[name] = {key.format(k=k): scale * levels[f"level_{k}"] for k in range(1, N_STYLES + 1)}
    return out


# ---------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------
def results_markdown(metrics: dict, title: str, notes: str = "") -> str:
    """results.md: overall and per-domain hard/normal/easy, parse failures (5-point judge), each domain's
    matrix, upstream's levels. ``notes`` (markdown) goes under the headline."""
    from ipo.report import markdown_table, pct

    out = [f"# {title}\n"]
    present = ", ".join(metrics["domains_present"])
    if metrics["complete"]:
        out.append(f"{metrics['n_prompts']} prompts, all four domains ({present}). "
                   f"Official RM-Bench average: **{pct(metrics['average'])}%**.\n")  # fmt: skip
    else:
        out.append(f"{metrics['n_prompts']} prompts. **Incomplete: only {present} scored; missing "
                   f"{', '.join(metrics['domains_missing'])}.** The overall values below average the domains "
                   f"present and are not the official RM-Bench overall.\n")  # fmt: skip
    if notes:
        out.append(notes.rstrip("\n") + "\n")
    out.append("hard = chosen response in a plainer style than the rejected one (upper triangle), normal = "
               "same style (diagonal), easy = chosen fancier (lower triangle); a tie counts as wrong.\n")  # fmt: skip
    rows = [
        [name, d["n"], pct(d["hard"]), pct(d["normal"]), pct(d["easy"]), pct(d["score"]), pct(d["tie_rate"]),
         d["n_truncated"]]
        for name, d in metrics["domains"].items()
    ]  # fmt: skip
    label = "**Overall**" if metrics["complete"] else f"**Overall ({present} only)**"
    rows.append([label, metrics["n_prompts"], pct(metrics["hard"]), pct(metrics["normal"]), pct(metrics["easy"]),
                 pct(metrics["average"]), pct(metrics["tie_rate"]), metrics["n_truncated"]])  # fmt: skip
    out.append(markdown_table(["domain", "prompts", "hard %", "normal %", "easy %", "average %", "ties %",
                               "truncated"], rows))  # fmt: skip
    if "n_parse_failures" in metrics:
        out.append("## Parse failures (5-point judge)\n")
        rows = [[name, d["n_judgements"], d["n_parse_failures"], pct(d["parse_failure_rate"]),
                 d["prompts_with_parse_failure"], pct(d["score_excluding_parse_failures"])]
                for name, d in metrics["domains"].items()]  # fmt: skip
        rows.append([label, metrics["n_judgements"], metrics["n_parse_failures"], pct(metrics["parse_failure_rate"]),
                     metrics["prompts_with_parse_failure"], pct(metrics["average_excluding_parse_failures"])])  # fmt: skip
        out.append(markdown_table(["domain", "judgements", "parse failures", "failures %", "prompts with a failure",
                                   "average % without failed judgements"], rows))  # fmt: skip
    out.append("## Style matrices (% of prompts where chosen row-style beats rejected column-style)\n")
    for name, d in metrics["domains"].items():
        sources = ", ".join(f"{s} {n}" for s, n in d["sources"].items())
        out.append(f"### {name} ({sources})\n")
        out.append(markdown_table(["chosen \\ rejected", *STYLES],
                                  [[STYLES[i], *map(pct, row)] for i, row in enumerate(d["matrix"])]))  # fmt: skip
    out.append("## Upstream's levels (the diagonal, per data file; the IPO paper's RM-Bench numbers)\n")
    rows = [[name, s["n"], *(pct(s[f"level_{k}"]) for k in range(1, N_STYLES + 1))]
            for name, s in metrics["levels_by_source"].items()]  # fmt: skip
    out.append(markdown_table(["source", "prompts", "level_1 %", "level_2 %", "level_3 %"], rows))
    return "\n".join(out)


def write_outputs(run, records: list[dict], title: str, upstream_file: str, score_name: str = "p_yes",
                  upstream_percent: bool = True, upstream_key: str = "level_{k}", matrices: Callable | None = None,
                  extra_metrics: dict | None = None, notes: str = "", extra_markdown: str = "") -> tuple[dict, str]:  # fmt: skip
    """metrics.json, results.md, style_matrix_<domain>.png and upstream's level file, in ``run`` (a RunDir).

    Everything is recomputed from ``records`` (the predictions), so a resumed run ends with exactly the
    metrics of an uninterrupted one. ``matrices`` as in compute_metrics; ``extra_metrics`` are added to
    metrics.json; ``notes`` (markdown) go under results.md's headline and ``extra_markdown`` at its end.
    Returns (metrics, results markdown).
    """
    from ipo.report import heatmap, pct
    from ipo.runs import atomic_write_json, atomic_write_text

    metrics = compute_metrics(records, score_name, matrices)
    metrics.update(extra_metrics or {})
    if not metrics["complete"]:
        logger.warning("domains missing: %s; the overall values average %s only",
                       ", ".join(metrics["domains_missing"]), ", ".join(metrics["domains_present"]))  # fmt: skip
    markdown = results_markdown(metrics, title, notes)
    if extra_markdown:
        markdown += "\n" + extra_markdown
    atomic_write_json(run.file("metrics.json"), metrics)
    atomic_write_text(run.file("results.md"), markdown)
    atomic_write_json(run.file(upstream_file), upstream_accuracy(metrics, upstream_percent, upstream_key))
    for name, d in metrics["domains"].items():
        title = f"{name}: hard {pct(d['hard'], 1)}, normal {pct(d['normal'], 1)}, easy {pct(d['easy'], 1)}"
        heatmap(d["matrix"], run.file(f"style_matrix_{name}.png"), title, row_labels=STYLES,
                col_labels=[s.replace(" ", "\n") for s in STYLES], xlabel="rejected style", ylabel="chosen style")
    return metrics, markdown
