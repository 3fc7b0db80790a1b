"""RM-Bench through the API judges: the six responses' answers as record fields, and the style pairs that
the pairwise judge compares.

A pointwise API judge (yes/no or 5-point) sends six requests per prompt, [chosen x3, rejected x3] in style
order; ``style_answer_fields`` turns their answers into predictions.jsonl fields. The pairwise judge
compares one chosen and one rejected response per request: ``STYLE_PAIRS`` names which (chosen style,
rejected style) cells it asks, ``style_pair_requests`` builds the requests and ``style_pair_fields`` the
3x3 verdict lists that ipo.benchmarks.rmbench_metrics.pairwise_matrices reads.
"""

from __future__ import annotations

from collections.abc import Sequence

from ipo.benchmarks.rmbench import FLAT_COLUMNS as STYLE_SLOTS
from ipo.benchmarks.rmbench_metrics import N_STYLES
from ipo.data import Example
from ipo.judges.api import PAIRWISE_ORDERS, pairwise_fields, pairwise_requests


def style_answer_fields(extra: dict, keys: Sequence[str]) -> dict:
    """Record fields of ApiScorer's ``extra`` for the six responses of an RM-Bench prompt: failure, failed
    (slot names chosen_1 .. rejected_3) and, per Answer.info key, ``<key>_chosen`` / ``<key>_rejected``
    lists of 3 (None for a failed request)."""
    fields = {"failure": extra["failure"], "failed": [STYLE_SLOTS[slot] for slot in extra["failed"]]}
    for key in keys:
        values = [info.get(key) for info in extra["info"]]
        fields[f"{key}_chosen"], fields[f"{key}_rejected"] = values[:N_STYLES], values[N_STYLES:]
    return fields


# Which (chosen style, rejected style) pairs the pairwise judge compares: upstream's RM_Bench/binary_gpt.py
# asked chosen_k vs rejected_k (the diagonal, 3 per prompt); all 9 give the official hard/normal/easy.
STYLE_PAIRS = {
    "diagonal": tuple((k, k) for k in range(N_STYLES)),
    "all": tuple((i, j) for i in range(N_STYLES) for j in range(N_STYLES)),
}


def style_pair_requests(
    scoring: str, template: str, example: Example, cells: Sequence[tuple[int, int]], orders=PAIRWISE_ORDERS
) -> list[dict]:
    """The pairwise requests of one RM-Bench prompt: for each (i, j) in ``cells``, chosen style i against
    rejected style j, in each order (slot = cell index * len(orders) + order index)."""
    chosen, rejected = example.responses[:N_STYLES], example.responses[N_STYLES:]
    bodies = []
    for i, j in cells:
        bodies += pairwise_requests(scoring, template, example.prompt, chosen[i], rejected[j], orders)
    return bodies


def style_pair_fields(
    verdicts: Sequence[int | None], extra: dict, cells: Sequence[tuple[int, int]], orders=PAIRWISE_ORDERS
) -> dict:
    """Record fields of one RM-Bench prompt judged pairwise (style_pair_requests' slots).

    ``correct`` / ``tie`` and ``verdict_<order>`` / ``judge_text_<order>``: (3, 3) nested lists, [i][j] for
    chosen style i vs rejected style j, None where not compared (rmbench_metrics.pairwise_matrices reads them).
    Each cell as pairwise_fields: correct when every order picks the chosen response, a tie when the orders
    disagree, a failed comparison wrong and not a tie. failed: "chosen_<i>-rejected_<j>/<order>" names.
    """
    names = [name for name, _ in orders]
    matrix = lambda: [[None] * N_STYLES for _ in range(N_STYLES)]  # noqa: E731
    fields = {
        "correct": matrix(),
        "tie": matrix(),
        **{f"{key}_{name}": matrix() for key in ("verdict", "judge_text") for name in names},
    }
    failed = []
    for c, (i, j) in enumerate(cells):
        slots = range(c * len(orders), (c + 1) * len(orders))
        kinds = [extra["kinds"][s] for s in slots]
        cell_extra = {
            "failure": next((k for k in kinds if k), None),
            "failed": [n for n, k in enumerate(kinds) if k],
            "info": [extra["info"][s] for s in slots],
        }
        cell = pairwise_fields([verdicts[s] for s in slots], cell_extra, orders)
        fields["correct"][i][j], fields["tie"][i][j] = cell["correct"], cell["tie"]
        for key in ("verdict", "judge_text"):
            for name in names:
                fields[f"{key}_{name}"][i][j] = cell[f"{key}_{name}"]
        failed += [f"chosen_{i + 1}-rejected_{j + 1}/{name}" for name in cell["failed"]]
    return {**fields, "failure": extra["failure"], "failed": failed}


def style_pair_order_records(
    records: Sequence[dict], cells: Sequence[tuple[int, int]], orders=PAIRWISE_ORDERS
) -> list[dict]:
    """One {verdict_<order>: ...} per comparison of RM-Bench pairwise records, for order_metrics."""
    return [{f"verdict_{name}": r[f"verdict_{name}"][i][j] for name, _ in orders} for r in records for i, j in cells]
