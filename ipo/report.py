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


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n`` (z = 1.96: 95%); (0, 1) when n is 0.

    Unlike the normal approximation it stays inside [0, 1] and is not empty at 0% or 100% (Wilson 1927;
    the interval recommended for small n by Brown, Cai and DasGupta 2001)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def bar_chart(
    labels: Sequence[str],
    fractions: Sequence[float | None],
    path: str | os.PathLike,
    title: str,
    colors: Sequence[str],
    legend: dict[str, str],
    reference: float = 50,
    counts: Sequence[int] | None = None,
    overall: tuple[float, str] | None = None,
) -> None:
    """Horizontal bars of fractions shown in percent, top to bottom in the order given, a dashed line at
    ``reference`` percent (chance for a pair), and a legend {label: color}.

    Each bar is labelled with its value, so a 0% bar reads "0.0" and is never just missing (a None one:
    "not measured"). ``counts`` (examples behind each bar) add "(n=...)" to the labels and a 95% Wilson
    interval to each bar; ``overall`` (fraction, label) draws a solid line at the overall value, in the legend.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(labels) + 1.8))
    values = [None if v is None else 100 * v for v in fractions]
    if counts is not None:
        labels = [f"{label} (n={n})" for label, n in zip(labels, counts)]
    positions = list(range(len(labels)))
    ax.barh(positions, [v or 0 for v in values], color=list(colors))
    if counts is not None:
        for y, v, n in zip(positions, values, counts):
            if v is not None and n:
                low, high = wilson_interval(v / 100 * n, n)
                ax.errorbar(
                    v, y, xerr=[[v - 100 * low], [100 * high - v]], fmt="none", ecolor="black", capsize=2, lw=0.8
                )
    for y, v, color in zip(positions, values, colors):  # a bar's end marked, so a 0% bar shows as a stub
        if v is not None:
            ax.plot([v], [y], marker="|", markersize=11, markeredgewidth=3, color=color, clip_on=False, gid="bar_end")
    for y, v in zip(positions, values):  # the values in a column right of the axes: a 0% bar reads "0.0"
        ax.text(101, y, "not measured" if v is None else f"{v:.1f}", va="center", fontsize=7, clip_on=False)
    ax.axvline(reference, color="black", linestyle="--", linewidth=0.8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in legend.values()]
    names = list(legend)
    if overall is not None and overall[0] is not None:
        handles.append(ax.axvline(100 * overall[0], color="crimson", linewidth=1.5))
        names.append(f"{overall[1]}: {100 * overall[0]:.1f}%")
    ax.set_yticks(positions, labels)
    ax.set_xlim(0, 100)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set_xlabel("accuracy (%)" + (", 95% Wilson interval" if counts is not None else ""))
    ax.set_title(title)
    ax.legend(handles, names, loc="upper left", bbox_to_anchor=(1.09, 1), fontsize=7)
    save_figure(fig, path)
    plt.close(fig)


def _draw_heatmap(ax, matrix, row_labels, col_labels, title, xlabel, ylabel):
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
    ax.set_title(title, fontsize=9)
    return image


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
    image = _draw_heatmap(ax, matrix, row_labels, col_labels, title, xlabel, ylabel)
    fig.colorbar(image, ax=ax, label="%")
    save_figure(fig, path)
    plt.close(fig)


def heatmap_grid(
    panels: dict[str, Sequence[Sequence[float]]],
    path: str | os.PathLike,
    title: str,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    xlabel: str = "",
    ylabel: str = "",
) -> None:
    """Several heat maps side by side in one figure, {panel title: matrix}, one colour scale, ``title`` above."""
    plt = _pyplot()
    width = 1.3 * len(col_labels) + 1.2
    fig, axes = plt.subplots(
        1, len(panels), figsize=(width * len(panels) + 1, 1.1 * len(row_labels) + 1.6), squeeze=False
    )
    image = None
    for k, (ax, (name, matrix)) in enumerate(zip(axes[0], panels.items())):
        image = _draw_heatmap(ax, matrix, row_labels, col_labels, name, xlabel, ylabel if k == 0 else "")
        if k:
            ax.set_yticklabels([])
    fig.suptitle(title)
    if image is not None:
        fig.colorbar(image, ax=list(axes[0]), label="%", shrink=0.8)
    save_figure(fig, path)
    plt.close(fig)


def comparison_plot(
    points: Sequence[tuple[str, float, float, bool]], path: str | os.PathLike, title: str, unit: str = "%"
) -> None:
    """Reproduced against published values: one labelled point per (label, published, reproduced, filled),
    both in ``unit`` as given, with the line y = x (a point above it: the reproduction scored higher); a point
    not ``filled`` is drawn hollow (e.g. a run that did not cover the published data). No points: an empty
    frame that says so."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 6))
    values = [v for _, published, reproduced, _ in points for v in (published, reproduced)]
    low, high = (min(values), max(values)) if values else (0, 100)
    margin = max(2.0, 0.05 * (high - low))
    ax.plot([low - margin, high + margin], [low - margin, high + margin], color="gray", linestyle="--", lw=0.8)
    for label, published, reproduced, filled in points:
        ax.scatter(published, reproduced, s=22, facecolors=None if filled else "none", edgecolors="tab:blue")
        ax.annotate(label, (published, reproduced), fontsize=6, xytext=(3, 3), textcoords="offset points")
    if not points:
        ax.text(0.5, 0.5, "no published value has a reproduced one yet", ha="center", transform=ax.transAxes)
    ax.set_xlim(low - margin, high + margin)
    ax.set_ylim(low - margin, high + margin)
    ax.set_xlabel(f"published ({unit})")
    ax.set_ylabel(f"reproduced ({unit})")
    ax.set_title(title, fontsize=9)
    ax.set_aspect("equal")
    save_figure(fig, path)
    plt.close(fig)
