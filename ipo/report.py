"""Readable results: markdown tables and PNG plots (matplotlib, headless), written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

from ipo.benchmarks import rewardbench
from ipo.benchmarks.rewardbench import SUBSET_MAPPING
from ipo.runs import RunDir, atomic_write_json, atomic_write_text


def pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def rewardbench_markdown(metrics: dict, title: str) -> str:
    """results.md for a RewardBench run: headline, sections, the paper's categories, subsets (percent)."""
    section_of = {s: sec for sec, subsets in SUBSET_MAPPING.items() for s in subsets}
    out = [f"# {title}\n"]
    out.append(
        f"{metrics['n_pairs']} pairs; accuracy {pct(metrics['accuracy'])}% (ties count as wrong), "
        f"tie rate {pct(metrics['tie_rate'])}%, {metrics['n_truncated']} pairs truncated.\n"
    )
    out.append("## RewardBench sections (official weighting)\n")
    rows = [[name, pct(value)] for name, value in metrics["sections"].items()]
    rows.append(["**Score** (mean of sections)", pct(metrics["score"])])
    out.append(markdown_table(["section", "accuracy %"], rows))
    out.append("## The paper's categories (pooled over pairs)\n")
    rows = [[name, pct(value)] for name, value in metrics["categories"].items()]
    rows.append(["**Average**", pct(metrics["categories_average"])])
    out.append(markdown_table(["category", "accuracy %"], rows))
    out.append("## Subsets\n")
    rows = [
        [name, section_of.get(name, "unknown"), s["n"], pct(s["accuracy"]), s["ties"]]
        for name, s in metrics["subsets"].items()
    ]
    out.append(markdown_table(["subset", "section", "pairs", "accuracy %", "ties"], rows))
    if metrics.get("unknown_subsets"):
        out.append(f"\nSubsets outside the official tables (scored with the fallback prompt): "
                   f"{metrics['unknown_subsets']}\n")  # fmt: skip
    return "\n".join(out)


def _save_figure(fig, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def subset_bar_chart(metrics: dict, path: str | os.PathLike, title: str) -> None:
    """Horizontal bars of per-subset accuracy, coloured by RewardBench section, with the 50% line."""
    plt = _pyplot()
    section_of = {s: sec for sec, subsets in SUBSET_MAPPING.items() for s in subsets}
    colors = {"Chat": "tab:blue", "Chat Hard": "tab:orange", "Safety": "tab:green", "Reasoning": "tab:purple"}
    names = sorted(metrics["subsets"], key=lambda s: (list(colors).index(section_of[s]) if s in section_of else 9, s))
    values = [100 * metrics["subsets"][s]["accuracy"] for s in names]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(names) + 1.5))
    ax.barh(names, values, color=[colors.get(section_of.get(s), "tab:gray") for s in names])
    ax.axvline(50, color="black", linestyle="--", linewidth=0.8)
    ax.set_xlim(0, 100)
    ax.invert_yaxis()
    ax.set_xlabel("accuracy (%)")
    ax.set_title(title)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    ax.legend(handles, list(colors), loc="lower right", fontsize=8)
    _save_figure(fig, path)
    plt.close(fig)


def heatmap(matrix: Sequence[Sequence[float]], path: str | os.PathLike, title: str,
            row_labels: Sequence[str], col_labels: Sequence[str],
            xlabel: str = "", ylabel: str = "") -> None:  # fmt: skip
    """An annotated heat map of a small matrix of fractions, shown in percent; None cells (not measured)
    are left blank and marked "-"."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.3 * len(col_labels) + 1.5, 1.1 * len(row_labels) + 1))
    image = ax.imshow([[float("nan") if v is None else 100 * v for v in row] for row in matrix], vmin=0, vmax=100,
                      cmap="viridis")  # fmt: skip
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, pct(value, 1), ha="center", va="center",
                    color="white" if value is not None and value < 0.6 else "black")  # fmt: skip
    ax.set_xticks(range(len(col_labels)), col_labels)
    ax.set_yticks(range(len(row_labels)), row_labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="%")
    _save_figure(fig, path)
    plt.close(fig)



def write_rewardbench_outputs(run: RunDir, records: list[dict], title: str, upstream_file: str,
                              extra_metrics: dict | None = None, notes: str = "",
                              extra_markdown: str = "") -> tuple[dict, str]:  # fmt: skip
    """metrics.json, results.md, subset_accuracy.png and upstream's per-subset percent file.

    Everything is recomputed from ``records`` (the predictions), so a resumed run ends with exactly the
    metrics of an uninterrupted one. ``notes`` (markdown) goes under the headline of results.md and
    ``extra_markdown`` at its end. Returns (metrics, results markdown).
    """
    metrics = rewardbench.compute_metrics(records)
    metrics.update(extra_metrics or {})
    markdown = rewardbench_markdown(metrics, title)
    if notes:
        headline_end = markdown.index("\n## ")
        markdown = markdown[:headline_end] + "\n" + notes.rstrip("\n") + "\n" + markdown[headline_end:]
    if extra_markdown:
        markdown += "\n" + extra_markdown
    atomic_write_json(run.file("metrics.json"), metrics)
    atomic_write_text(run.file("results.md"), markdown)
    atomic_write_json(run.file(upstream_file), rewardbench.upstream_accuracy(metrics))
    subset_bar_chart(metrics, run.file("subset_accuracy.png"), title)
    return metrics, markdown
