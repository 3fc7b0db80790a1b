"""RM-Bench (Liu et al., ICLR 2025): loading both data formats, prediction records, and the outputs.

Every RM-Bench prompt has 3 chosen and 3 rejected responses in three styles; a judge scores all six and
the official metric compares every chosen style with every rejected style (the 3x3 style matrix: hard /
normal / easy per domain, safety pooled; ipo.benchmarks.rmbench_metrics).

The IPO authors' RM_Bench/ours.py reported only ``level_k`` = accuracy of chosen_k vs rejected_k, i.e.
the diagonal, per Hub dataset (so safety-refuse and safety-response separately). That is kept as
``levels_by_source`` and in upstream's ``accuracy-rm-bench-<model>-yesno.json``.

Used by Preference_Comparison/RM_Bench/*.py with any scorer whose ``.score(examples)`` yields
``(example, six scores, extra)`` batches (ipo.judges.yes_no.YesNoScorer, ipo.judges.reward_model.RewardModelScorer,
ipo.judges.self_reward.SelfRewardScorer, ipo.judges.api.ApiScorer): ``load_examples`` -> Examples with
responses [c1, c2, c3, r1, r2, r3]; ``record_maker`` / ``prediction_record`` -> predictions.jsonl lines;
``write_outputs`` -> metrics, tables, heat maps, upstream's level file, and for an API judge its failures
and usage. Records of the 5-point judge carry parse-failure flags per response; the metrics then count
them per domain.
"""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from collections.abc import Callable, Sequence

from ipo import IpoError
from ipo.benchmarks.api_failures import ApiUsage, answered_records, api_markdown, failure_metrics, usage_markdown
from ipo.benchmarks.rmbench_metrics import DOMAINS, N_STYLES, STYLES, compute_metrics
from ipo.data import Coverage, Example, limit_per_group, read_records, require_columns, require_text
from ipo.prompts import RMBENCH_PROMPTS
from ipo.report import heatmap, heatmap_grid, markdown_table, pct
from ipo.run_info import describe_run
from ipo.runs import RunDir, atomic_write_json, atomic_write_text

logger = logging.getLogger("ipo")

OFFICIAL_HUB_ID = "THU-KEG/RM-Bench"  # the benchmark's own copy: official rows with a `domain` field
# What upstream's RM_Bench/ours.py read, in its order: flattened per-domain re-uploads (chosen_1..3, ...).
UPSTREAM_HUB_IDS = tuple(
    f"Ayush-Singh/RM-Bench-{d}" for d in ("chat", "code", "math", "safety-response", "safety-refuse")
)
HUB_SPLIT = "train"  # the only split of both (upstream: load_dataset(name)["train"])
# Prompts per data domain in the official filtered release (THU-KEG/RM-Bench data/<domain>_filtered.json).
OFFICIAL_SIZES = {"chat": 129, "code": 228, "math": 529, "safety-refuse": 284, "safety-response": 157}

# Upstream RM_Bench/self_reward.py's --set_name groups of data domains (the authors ran the 5-point judge
# in two halves). RM_Bench/self_reward_gpt.py split differently
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
            raise IpoError(
                f"{source}: {_where(index, row)}: {side!r} has {got}; RM-Bench rows need exactly "
                f"{N_STYLES} ({', '.join(STYLES)})"
            )
        responses += [require_text(v, source, row.get("id", index), f"{side}[{k}]") for k, v in enumerate(value)]
    return responses


def _row_domain(row: dict, index: int, source: str, domain_flag: str | None, name_domain: str | None) -> str:
    if row.get("domain") is not None:
        domain = row["domain"]
        if domain not in DOMAINS:
            raise IpoError(
                f"{source}: {_where(index, row)}: unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}"
            )
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
            logger.warning(
                "%s: rows carry their own domain (%s), which wins over --domain %s", source, row_domain, domain
            )
            overridden = True
        row_id = row.get("id", index)
        examples.append(
            Example(
                id=f"{row_domain}/{row_id}",
                prompt=require_text(row["prompt"], source, row_id, "prompt"),
                responses=_styled_responses(row, index, source, flattened),
                subset=str(row.get("subset") or ""),
                domain=row_domain,
                meta={"id": row_id},
            )
        )
    return examples


def load_rmbench(sources: Sequence[str] = UPSTREAM_HUB_IDS, domain: str | None = None) -> list[Example]:
    """Examples of several sources (files or Hub ids, either format); (domain, id) must be unique overall."""
    examples: list[Example] = []
    origin: dict[str, str] = {}
    for source in sources:
        for example in load_rmbench_source(source, domain):
            if example.id in origin:
                other = origin[example.id]
                raise IpoError(
                    f"{source}: id {example.meta['id']!r} of domain {example.domain} "
                    f"{'occurs twice' if other == source else f'is also in {other}'}; "
                    "ids must be unique per domain to resume safely"
                )
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
        raise IpoError(
            f"no prompts of the domains of --set_name {set_name} ({', '.join(domains)}) in --dataset "
            f"(its domains: {found})"
        )
    return kept


def load_examples(
    sources: Sequence[str], domain: str | None = None, limit: int | None = None, set_name: str | None = None
) -> tuple[list[Example], dict[str, int], Coverage]:
    """What an RM-Bench script scores, from its --dataset, --domain, --limit and --set_name: the examples
    (at most ``limit`` per data domain, in file order), the number per data domain (logged), and the
    Coverage of the data they are.

    ``set_name`` (a key of SELF_REWARD_SETS) keeps that group's domains; with the default --dataset only
    the group's Hub datasets are fetched.
    """
    domains = SELF_REWARD_SETS[set_name] if set_name else None
    if domains and list(sources) == default_sources():
        sources = default_sources(domains)
    loaded = load_rmbench(sources, domain)
    examples = limit_per_group(select_domains(loaded, domains, set_name), limit, key=lambda e: e.domain)
    counts = domain_counts(examples)
    logger.info(
        "%d prompts (%s) from %d source(s)",
        len(examples),
        ", ".join(f"{d} {n}" for d, n in counts.items()),
        len(sources),
    )
    selection = f"--set_name {set_name}" if set_name else ""
    return examples, counts, Coverage(len(loaded), limit, per="domain", unit="prompts", selection=selection)


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


def prediction_record(
    example: Example, scores: Sequence[float | None], extra: dict | None = None, score_name: str = "p_yes"
) -> dict:
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
# Outputs
# ---------------------------------------------------------------------------------------------------
def results_markdown(metrics: dict, title: str, notes: str = "") -> str:
    """results.md: overall and per-domain hard/normal/easy, parse failures (5-point judge), each domain's
    matrix, upstream's levels. ``notes`` (markdown) goes under the headline."""
    out = [f"# {title}\n"]
    present = ", ".join(metrics["domains_present"])
    if metrics["complete"]:
        out.append(
            f"{metrics['n_prompts']} prompts, all four domains ({present}). "
            f"Official RM-Bench average: **{pct(metrics['average'])}%**.\n"
        )
    else:
        out.append(
            f"{metrics['n_prompts']} prompts. **Incomplete: only {present} scored; missing "
            f"{', '.join(metrics['domains_missing'])}.** The overall values below average the domains "
            f"present and are not the official RM-Bench overall.\n"
        )
    if notes:
        out.append(notes.rstrip("\n") + "\n")
    out.append(
        "hard = chosen response in a plainer style than the rejected one (upper triangle), normal = "
        "same style (diagonal), easy = chosen fancier (lower triangle); a tie counts as wrong.\n"
    )
    rows = [
        [
            name,
            d["n"],
            pct(d["hard"]),
            pct(d["normal"]),
            pct(d["easy"]),
            pct(d["score"]),
            pct(d["tie_rate"]),
            d["n_truncated"],
        ]
        for name, d in metrics["domains"].items()
    ]
    label = "**Overall**" if metrics["complete"] else f"**Overall ({present} only)**"
    rows.append(
        [
            label,
            metrics["n_prompts"],
            pct(metrics["hard"]),
            pct(metrics["normal"]),
            pct(metrics["easy"]),
            pct(metrics["average"]),
            pct(metrics["tie_rate"]),
            metrics["n_truncated"],
        ]
    )
    out.append(
        markdown_table(["domain", "prompts", "hard %", "normal %", "easy %", "average %", "ties %", "truncated"], rows)
    )
    if "n_parse_failures" in metrics:
        out.append("## Parse failures (5-point judge)\n")
        rows = [
            [
                name,
                d["n_judgements"],
                d["n_parse_failures"],
                pct(d["parse_failure_rate"]),
                d["prompts_with_parse_failure"],
                pct(d["score_excluding_parse_failures"]),
            ]
            for name, d in metrics["domains"].items()
        ]
        rows.append(
            [
                label,
                metrics["n_judgements"],
                metrics["n_parse_failures"],
                pct(metrics["parse_failure_rate"]),
                metrics["prompts_with_parse_failure"],
                pct(metrics["average_excluding_parse_failures"]),
            ]
        )
        out.append(
            markdown_table(
                [
                    "domain",
                    "judgements",
                    "parse failures",
                    "failures %",
                    "prompts with a failure",
                    "average % without failed judgements",
                ],
                rows,
            )
        )
    out.append("## Style matrices (% of prompts where chosen row-style beats rejected column-style)\n")
    for name, d in metrics["domains"].items():
        sources = ", ".join(f"{s} {n}" for s, n in d["sources"].items())
        out.append(f"### {name} ({sources})\n")
        out.append(
            markdown_table(
                ["chosen \\ rejected", *STYLES], [[STYLES[i], *map(pct, row)] for i, row in enumerate(d["matrix"])]
            )
        )
    out.append("## Upstream's levels (the diagonal, per data file; the IPO paper's RM-Bench numbers)\n")
    rows = [
        [name, s["n"], *(pct(s[f"level_{k}"]) for k in range(1, N_STYLES + 1))]
        for name, s in metrics["levels_by_source"].items()
    ]
    out.append(markdown_table(["source", "prompts", "level_1 %", "level_2 %", "level_3 %"], rows))
    return "\n".join(out)


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
        levels = metrics["levels_by_source"].get(name[len("RM-Bench-") :])
        if levels is not None:
            out[name] = {key.format(k=k): scale * levels[f"level_{k}"] for k in range(1, N_STYLES + 1)}
    return out


def run_label(metrics: dict) -> str:
    """The run named as "<model_short> <method> <scoring>", from metrics["run"] (empty when it is missing)."""
    run = metrics.get("run") or {}
    return " ".join(str(v) for v in (run.get("model_short"), run.get("method"), run.get("scoring")) if v)


def style_matrices_figure(metrics: dict, path) -> None:
    """The 3x3 style matrices of every scored domain of a run in one figure, titled with the model, method
    and the overall hard / normal / easy / average (from metrics["run"] when the writer added it)."""
    who = run_label(metrics)
    title = (
        f"RM-Bench{': ' + who if who else ''} - hard {pct(metrics['hard'], 1)}, normal {pct(metrics['normal'], 1)}, "
        f"easy {pct(metrics['easy'], 1)}, average {pct(metrics['average'], 1)}"
        + ("" if metrics["complete"] else f" (domains missing: {', '.join(metrics['domains_missing'])})")
    )
    panels = {
        f"{name} (n={d['n']}): hard {pct(d['hard'], 1)}\nnormal {pct(d['normal'], 1)}, easy {pct(d['easy'], 1)}": d[
            "matrix"
        ]
        for name, d in metrics["domains"].items()
    }
    heatmap_grid(
        panels,
        path,
        title,
        row_labels=STYLES,
        col_labels=[s.replace(" ", "\n") for s in STYLES],
        xlabel="rejected style",
        ylabel="chosen style",
    )


def write_outputs(
    run: RunDir,
    records: list[dict],
    title: str,
    upstream_file: str,
    method: str,
    score_name: str = "p_yes",
    upstream_percent: bool = True,
    upstream_key: str = "level_{k}",
    matrices: Callable | None = None,
    extra_metrics: dict | None = None,
    notes: str = "",
    extra_markdown: str = "",
    api: ApiUsage | None = None,
    coverage: Coverage | None = None,
) -> tuple[dict, str]:
    """metrics.json, results.md, style_matrices.png (every domain's matrix in one figure, the model named),
    style_matrix_<domain>.png and upstream's level file, in ``run``.

    Everything is recomputed from ``records`` (the predictions), so a resumed run ends with exactly the
    metrics of an uninterrupted one. ``matrices`` as in ipo.benchmarks.rmbench_metrics.compute_metrics;
    ``extra_metrics`` are added to metrics.json; ``notes`` (markdown) go under results.md's headline and
    ``extra_markdown`` at its end. Returns (metrics, results markdown).

    ``method``: the run's method id (ipo.run_info.METHODS: "ipo", "self_rewarding", "reward_model",
    "api_ipo", "api_self_rewarding", "api_binary"); metrics.json's "run" object names it with the model,
    prompt format, backend and data read from the run's config.json (ipo.run_info.describe_run).

    ``api`` (a judge behind an HTTP API): the main metrics still count every prompt (a failed response,
    None score, loses every comparison it is in; a failed pairwise comparison is wrong; upstream's level
    file likewise). metrics.json then adds n_answered, n_failed, failures_by_kind (per prompt),
    ``answered_only`` (the same metrics over the prompts whose requests all succeeded) and
    ``api_usage_this_invocation``; results.md ends with the API section (ipo.benchmarks.api_failures).

    ``coverage``: which prompts of the data the run covers, stated as metrics.json's "coverage" and as the
    first line under results.md's headline.
    """
    if api is not None:
        summary, answered = answered_records(records)
        answered_metrics = compute_metrics(answered, score_name, matrices)
    metrics = compute_metrics(records, score_name, matrices)
    if api is not None:
        # The headline: the official average where all of hard/normal/easy were measured, else normal (the
        # diagonal, upstream's levels averaged).
        headline = "average" if metrics["average"] is not None else "normal"
        extra_metrics = {
            **failure_metrics(summary),
            **(extra_metrics or {}),
            "answered_only": answered_metrics,
            "api_usage_this_invocation": api.usage,
        }
        extra_markdown = api_markdown(
            extra_markdown,
            usage_markdown(api, summary, metrics[headline], answered_metrics[headline], label=f"RM-Bench {headline}"),
        )
    metrics.update(extra_metrics or {})
    if coverage is not None:
        metrics["coverage"] = coverage.metrics(len(records))
        notes = coverage.markdown(len(records)) + ("\n" + notes if notes else "")
    metrics["run"] = describe_run(run.path, "rmbench", method, n=len(records), coverage=metrics.get("coverage"))
    if not metrics["complete"]:
        logger.warning(
            "domains missing: %s; the overall values average %s only",
            ", ".join(metrics["domains_missing"]),
            ", ".join(metrics["domains_present"]),
        )
    markdown = results_markdown(metrics, title, notes)
    if extra_markdown:
        markdown += "\n" + extra_markdown
    atomic_write_json(run.file("metrics.json"), metrics)
    atomic_write_text(run.file("results.md"), markdown)
    atomic_write_json(run.file(upstream_file), upstream_accuracy(metrics, upstream_percent, upstream_key))
    style_matrices_figure(metrics, run.file("style_matrices.png"))
    who = run_label(metrics)
    for name, d in metrics["domains"].items():
        title = f"{name} (n={d['n']}): hard {pct(d['hard'], 1)}, normal {pct(d['normal'], 1)}, easy {pct(d['easy'], 1)}"
        title = f"RM-Bench: {who}\n{title}" if who else title
        heatmap(
            d["matrix"],
            run.file(f"style_matrix_{name}.png"),
            title,
            row_labels=STYLES,
            col_labels=[s.replace(" ", "\n") for s in STYLES],
            xlabel="rejected style",
            ylabel="chosen style",
        )
    return metrics, markdown
