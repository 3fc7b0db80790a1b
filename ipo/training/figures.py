"""Figures of preference training: training curves, the judge before/after self-improvement, and a sweep.

    training_curves(train_log_path, out_png)     loss, reward margin, reward accuracy and learning rate vs step,
                                                 from a run's train_log.jsonl (ipo.training.dpo.train_dpo writes
                                                 the trainer's log history there; evaluations drawn as points)
    before_after_figure(groups, out_png, ...)    the judge's mean score before and after training, per group of
                                                 prompts (held-out prompts first), with the number of prompts
    sweep_figure(rows, path)                     final loss and reward margin vs beta, one line per loss_type, from
                                                 DPO/sweep.py's sweep_summary.json rows (as the HF DPO/IPO/KTO
                                                 study plots them: huggingface.co/blog/pref-tuning)

matplotlib is imported only when a figure is drawn (headless), and every PNG is written atomically
(ipo.report.save_figure).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from ipo.report import save_figure
from ipo.runs import read_jsonl

# train_log.jsonl keys of the four panels (TRL's DPOTrainer logs them; eval entries carry the eval_ prefix)
CURVES = (
    ("loss", "loss"),
    ("rewards/margins", "reward margin (chosen - rejected)"),
    ("rewards/accuracies", "reward accuracy"),
    ("learning_rate", "learning rate"),
)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _integer_locator():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def training_curves(train_log_path: str | os.PathLike, out_png: str | os.PathLike, title: str | None = None) -> bool:
    """Four panels vs optimizer step: loss, reward margin, reward accuracy (training lines, evaluation points)
    and learning rate. Returns False (and draws nothing) when the log has no training entry to draw."""
    log = read_jsonl(train_log_path)
    train = [e for e in log if "step" in e and not any(k.startswith("eval_") for k in e) and "train_loss" not in e]
    evals = [e for e in log if "step" in e and "eval_loss" in e]
    if not any(_finite(e.get(key)) for e in train for key, _ in CURVES):
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(9, 6), sharex=True)
    for ax, (key, label) in zip(axes.flat, CURVES):
        points = [(e["step"], e[key]) for e in train if _finite(e.get(key))]
        if points:
            ax.plot(*zip(*points), marker="o" if len(points) < 20 else None, markersize=3, label="train")
        eval_points = [(e["step"], e[f"eval_{key}"]) for e in evals if _finite(e.get(f"eval_{key}"))]
        if eval_points:
            ax.plot(*zip(*eval_points), "s--", markersize=4, color="crimson", label="eval (held out)")
        if not points and not eval_points:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        if points and eval_points:
            ax.legend(fontsize=7)
    for ax in axes[1]:
        ax.set_xlabel("optimizer step")
        ax.xaxis.set_major_locator(_integer_locator())  # steps are whole numbers: no 1.2, 1.4 ... ticks
    fig.suptitle(title or f"training curves: {os.path.basename(os.path.dirname(os.path.abspath(train_log_path)))}")
    fig.tight_layout()
    save_figure(fig, out_png)
    plt.close(fig)
    return True


def before_after_figure(
    groups: Sequence[dict], out_png: str | os.PathLike, title: str, ylabel: str = "judge's mean score"
) -> bool:
    """Bars of the judge's mean score before and after training, one pair of bars per group.

    ``groups``: [{"label": "round 1, held-out prompts", "before": 0.61, "after": 0.66, "n": 20}, ...]; each
    bar is labelled with its value (a missing one: "not measured") and each group with its prompt count.
    Returns False when no group has both values."""
    groups = [g for g in groups if _finite(g.get("before")) or _finite(g.get("after"))]
    if not any(_finite(g.get("before")) and _finite(g.get("after")) for g in groups):
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(groups) + 2), 4))
    width = 0.38
    for offset, key, color in ((-width / 2, "before", "#9ab"), (width / 2, "after", "#27a")):
        values = [g.get(key) if _finite(g.get(key)) else None for g in groups]
        positions = [i + offset for i in range(len(groups))]
        ax.bar(positions, [v or 0 for v in values], width, color=color, label=f"{key} DPO")
        for x, v in zip(positions, values):
            ax.text(x, v or 0, "not measured" if v is None else f"{v:.3f}", ha="center", va="bottom", fontsize=7)
    labels = []
    for g in groups:
        change = g["after"] - g["before"] if _finite(g.get("before")) and _finite(g.get("after")) else None
        labels.append(
            f"{g['label']}\n(n={g.get('n', '?')}" + (f", change {change:+.3f})" if change is not None else ")")
        )
    ax.set_xticks(range(len(groups)), labels, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.margins(y=0.15)
    fig.tight_layout()
    save_figure(fig, out_png)
    plt.close(fig)
    return True


def sweep_figure(rows: Sequence[dict], path: str | os.PathLike, title: str | None = None) -> bool:
    """Final training loss and reward margin vs beta (log scale), one line per loss_type, from DPO/sweep.py's
    sweep_summary.json rows ({"loss_type", "beta", "final_loss", "reward_margin", ...}); points that did not
    finish are left out. ``title`` (e.g. the sweep and its model) is followed by the number of points drawn.
    Returns False (no file) when no point has a value to draw."""
    done = [
        r for r in rows if _finite(r.get("beta")) and (_finite(r.get("final_loss")) or _finite(r.get("reward_margin")))
    ]
    if not done:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    losses = list(dict.fromkeys(str(r.get("loss_type", "sigmoid")) for r in done))
    for ax, (key, label) in zip(axes, (("final_loss", "final training loss"), ("reward_margin", "reward margin"))):
        for loss in losses:
            points = sorted(
                (r["beta"], r[key]) for r in done if str(r.get("loss_type", "sigmoid")) == loss and _finite(r.get(key))
            )
            if points:
                ax.plot(*zip(*points), marker="o", label=loss)
        ax.set_xscale("log")
        betas = sorted({r["beta"] for r in done})  # ticked where the points are, in plain numbers
        ax.set_xticks(betas, [f"{b:g}" for b in betas], minor=False)
        ax.set_xticks([], minor=True)
        ax.set_xlabel("beta")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(title="loss_type", fontsize=8)
    fig.suptitle(f"{title or 'sweep'}: {len(done)} of {len(rows)} points")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return True
