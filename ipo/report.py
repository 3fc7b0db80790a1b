"""Readable results, with no benchmark knowledge: means and percentages, markdown tables, and PNG plots
(matplotlib, headless, imported only when a plot is drawn) written atomically. Each benchmark module
(ipo.benchmarks.rewardbench, ipo.benchmarks.rmbench) arranges its own tables and figures from these."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from ipo.runs import atomic_write_file


def mean(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are not None (a value not measured); None if there are none."""
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def save_figure(fig, path: str | os.PathLike) -> None:
    """Save a matplotlib figure as PNG atomically, with the user's umask (runs.atomic_write_file)."""
    atomic_write_file(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_chart(
    labels: Sequence[str],
    fractions: Sequence[float],
    path: str | os.PathLike,
    title: str,
    colors: Sequence[str],
    legend: dict[str, str],
    reference: float = 50,
) -> None:
    """Horizontal bars of fractions shown in percent, top to bottom in the order given, a dashed line at
    ``reference`` percent (chance for a pair), and a legend {label: color}."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(labels) + 1.5))
    ax.barh(labels, [100 * v for v in fractions], color=list(colors))
    ax.axvline(reference, color="black", linestyle="--", linewidth=0.8)
    ax.set_xlim(0, 100)
    ax.invert_yaxis()
    ax.set_xlabel("accuracy (%)")
    ax.set_title(title)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in legend.values()]
    ax.legend(handles, list(legend), loc="lower right", fontsize=8)
    save_figure(fig, path)
    plt.close(fig)


def heatmap(
    matrix: Sequence[Sequence[float]],
    path: str | os.PathLike,
    title: str,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    xlabel: str = "",
    ylabel: str = "",
) -> None:
    """An annotated heat map of a small matrix of fractions, shown in percent; None cells (not measured)
    are left blank and marked "-"."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.3 * len(col_labels) + 1.5, 1.1 * len(row_labels) + 1))
    image = ax.imshow(
        [[float("nan") if v is None else 100 * v for v in row] for row in matrix], vmin=0, vmax=100, cmap="viridis"
    )
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(
                j,
                i,
                pct(value, 1),
                ha="center",
                va="center",
                color="white" if value is not None and value < 0.6 else "black",
            )
    ax.set_xticks(range(len(col_labels)), col_labels)
    ax.set_yticks(range(len(row_labels)), row_labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="%")
    save_figure(fig, path)
    plt.close(fig)
