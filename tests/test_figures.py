"""The benchmark figures (issue 12 item 7): per-subset accuracy with n, a 95% Wilson interval, a visible 0% bar
and the overall value; the RM-Bench 3x3 matrices of a run in one figure with the model named.

Figures are built by the real writers from synthetic prediction records; what each figure draws is read
from the matplotlib figure just before it is saved (ipo.report.save_figure), then the PNG is checked on disk.
"""

from __future__ import annotations

import pytest

from ipo import report
from ipo.benchmarks import rewardbench, rmbench
from ipo.data import Coverage
from ipo.runs import RunDir, atomic_write_jsonl
from ipo.training import figures as training_figures


@pytest.fixture
def saved(monkeypatch):
    """The figures saved, as (path, figure), still open for inspection."""
    figures = []
    original = report.save_figure

    def keep(fig, path):
        figures.append((path, fig))
        original(fig, path)

    monkeypatch.setattr(report, "save_figure", keep)
    return figures


def test_wilson_interval_by_hand():
    low, high = report.wilson_interval(0, 20)
    assert low == 0 and high == pytest.approx(0.16113, abs=1e-4)  # (z^2/n) / (1 + z^2/n)
    low, high = report.wilson_interval(10, 20)
    assert (low, high) == (pytest.approx(0.29929, abs=1e-4), pytest.approx(0.70071, abs=1e-4))
    assert report.wilson_interval(0, 0) == (0.0, 1.0)


def test_subset_accuracy_shows_n_intervals_a_zero_bar_and_the_overall(tmp_path, saved):
    run = RunDir(tmp_path, "rb")
    run.start({"model_name": "org/Tiny-1B", "scoring": "chat", "dataset": "d.jsonl", "split": "raw"})
    records = [{"id": f"g{i}", "subset": "hep-go", "correct": False, "tie": False} for i in range(20)]
    records += [{"id": f"a{i}", "subset": "alpacaeval-easy", "correct": i % 2 == 0, "tie": False} for i in range(10)]
    rewardbench.write_outputs(run, records, "t", "up.json", method="ipo", coverage=Coverage(30))

    path, fig = saved[-1]
    assert path.name == "subset_accuracy.png" and path.stat().st_size > 10_000
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["alpacaeval-easy (n=10)", "hep-go (n=20)"]
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["50.0", "0.0"]  # every value written, the 0% subset too
    # The 0% bar is marked at x=0 in its section colour, and its interval reaches the Wilson upper bound.
    stubs = [line for line in ax.lines if line.get_gid() == "bar_end"]
    assert [tuple(s.get_xdata()) for s in stubs] == [(50.0,), (0.0,)]
    caps = sorted(x for coll in ax.collections for seg in coll.get_segments() for x in (seg[0][0], seg[1][0]))
    assert caps[-1] == pytest.approx(100 * report.wilson_interval(5, 10)[1], abs=1e-3)
    assert pytest.approx(100 * report.wilson_interval(0, 20)[1], abs=1e-3) in caps
    # The overall accuracy (5 of 30 pairs) is a solid line, named in the legend.
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "all 30 pairs: 16.7%" in legend
    assert any(list(line.get_xdata()) == pytest.approx([100 / 6] * 2) for line in ax.lines)


def test_rmbench_matrices_in_one_figure_with_the_model_named(tmp_path, saved):
    run = RunDir(tmp_path, "rm")
    run.start({"model_name": "org/Tiny-1B", "scoring": "upstream", "dataset": ["x.json"]})
    records = [
        {"key": f"{d}/{i}", "id": i, "domain": d, "subset": d, "p_yes_chosen": [0.9] * 3, "p_yes_rejected": [0.1] * 3}
        for d in ("chat", "code")
        for i in range(3)
    ]
    rmbench.write_outputs(run, records, "t", "up.json", method="ipo")

    combined = [(p, f) for p, f in saved if p.name == "style_matrices.png"]
    assert len(combined) == 1
    path, fig = combined[0]
    assert path.stat().st_size > 10_000
    title = fig._suptitle.get_text()
    assert "Tiny-1B" in title and "ipo" in title and "domains missing: math, safety" in title
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title().split(" ")[0] for ax in panels] == ["chat", "code"]
    assert all("(n=3)" in ax.get_title() for ax in panels)
    # Every cell of both 3x3 matrices is written: chosen always scores higher, so 100.0 everywhere.
    assert [t.get_text() for ax in panels for t in ax.texts] == ["100.0"] * 18
    # The per-domain figures are still written beside it, each titled with the model and its n too.
    (chat_path, chat_fig) = next((p, f) for p, f in saved if p.name == "style_matrix_chat.png")
    assert chat_path.is_file()
    chat_title = chat_fig.axes[0].get_title()
    assert chat_title.startswith("RM-Bench: Tiny-1B ipo upstream\nchat (n=3): hard 100.0")


def test_comparison_plot_with_and_without_points(tmp_path):
    report.comparison_plot([("a", 50.0, 55.0, True), ("b", 70.0, 60.0, False)], tmp_path / "c.png", "t")
    report.comparison_plot([], tmp_path / "empty.png", "t")
    assert (tmp_path / "c.png").stat().st_size > 10_000 and (tmp_path / "empty.png").stat().st_size > 5_000


def test_training_curves_tick_whole_optimizer_steps(tmp_path, monkeypatch):
    """Two logged steps must not be ticked 1.0, 1.2, ..., 2.0: an optimizer step is a whole number."""
    saved = []
    monkeypatch.setattr(training_figures, "save_figure", lambda fig, path: saved.append(fig))
    log = [{"loss": 0.69, "rewards/margins": 0.01 * s, "learning_rate": 5e-5 / s, "step": s} for s in (1, 2)]
    atomic_write_jsonl(tmp_path / "train_log.jsonl", log)
    assert training_figures.training_curves(tmp_path / "train_log.jsonl", tmp_path / "curves.png", title="t")
    ax = saved[0].axes[-1]
    ax.figure.canvas.draw()
    low, high = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if low <= t <= high]
    assert ticks == [1.0, 2.0]


def test_sweep_figure_ticks_the_betas_and_keeps_the_title(tmp_path, monkeypatch):
    saved = []
    monkeypatch.setattr(training_figures, "save_figure", lambda fig, path: saved.append(fig))
    rows = [{"loss_type": "sigmoid", "beta": b, "final_loss": 0.69, "reward_margin": 0.0} for b in (0.1, 0.5)]
    rows.append({"loss_type": "sigmoid", "beta": 0.9, "final_loss": None, "reward_margin": None})
    assert training_figures.sweep_figure(rows, tmp_path / "s.png", "sweep my_grid: SmolLM2-135M-Instruct")
    fig = saved[0]
    assert fig._suptitle.get_text() == "sweep my_grid: SmolLM2-135M-Instruct: 2 of 3 points"
    for ax in fig.axes:
        fig.canvas.draw()
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0.1", "0.5"]  # no 2x10^-1, 3x10^-1 ... ticks
        assert list(ax.get_xticks(minor=True)) == []
