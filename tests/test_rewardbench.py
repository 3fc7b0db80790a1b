"""RewardBench metrics on hand-computed numbers, the tie rule, and the loader's errors."""

import pytest
from helpers import rewardbench_rows, write_jsonl

from ipo import IpoError
from ipo.benchmarks.rewardbench import (
    EXAMPLE_COUNTS,
    PAPER_CATEGORIES,
    SUBSET_MAPPING,
    compute_metrics,
    judge_template,
    load_rewardbench,
    pair_record,
    section_scores,
    upstream_accuracy,
)
from ipo.data import Example


def record(subset, chosen, rejected):
    return pair_record(Example(id=0, prompt="", responses=[], subset=subset), chosen, rejected)


def test_strict_tie_rule():
    assert record("math-prm", 0.6, 0.5)["correct"] is True
    tie = record("math-prm", 0.5, 0.5)
    assert tie["correct"] is False and tie["tie"] is True
    assert record("math-prm", 0.4, 0.5)["correct"] is False


def test_official_tables():
    assert sum(EXAMPLE_COUNTS.values()) == 3522  # = 2,985 with math-prm at its real 447
    assert sorted(s for subsets in SUBSET_MAPPING.values() for s in subsets) == sorted(EXAMPLE_COUNTS)
    assert sum(EXAMPLE_COUNTS[s] for s in SUBSET_MAPPING["Reasoning"]) == 2 * 984
    assert sorted(s for subsets in PAPER_CATEGORIES.values() for s in subsets) == sorted(EXAMPLE_COUNTS)


def test_section_scores_are_example_count_weighted():
    sections = section_scores({"alpacaeval-easy": 1.0, "mt-bench-easy": 0.0, "math-prm": 0.5, "hep-go": 1.0})
    assert sections["Chat"] == pytest.approx(100 / 128)  # (1.0*100 + 0.0*28) / (100 + 28)
    assert sections["Reasoning"] == pytest.approx((0.5 * 984 + 1.0 * 164) / (984 + 164))
    assert sections["Safety"] is None and sections["Chat Hard"] is None


def test_compute_metrics_by_hand():
    records = [
        record("alpacaeval-easy", 0.9, 0.1),  # right
        record("alpacaeval-easy", 0.2, 0.8),  # wrong
        record("mt-bench-hard", 0.5, 0.5),  # tie: wrong
        record("refusals-dangerous", 0.7, 0.6),  # right
        record("math-prm", 0.6, 0.4),  # right
        record("hep-python", 0.1, 0.3),  # wrong
        record("my-own-subset", 0.9, 0.2),  # right, unknown subset
    ]
    metrics = compute_metrics(records)
    assert metrics["n_pairs"] == 7
    assert metrics["accuracy"] == pytest.approx(4 / 7)
    assert metrics["accuracy_ties_half"] == pytest.approx(4.5 / 7)
    assert metrics["tie_rate"] == pytest.approx(1 / 7)
    assert metrics["subsets"]["alpacaeval-easy"] == {"n": 2, "accuracy": 0.5, "ties": 0}
    assert metrics["subsets"]["mt-bench-hard"] == {"n": 1, "accuracy": 0.0, "ties": 1}
    assert metrics["sections"] == {
        "Chat": 0.5,
        "Chat Hard": 0.0,
        "Safety": 1.0,
        "Reasoning": pytest.approx(984 / (984 + 164)),
    }
    assert metrics["score"] == pytest.approx((0.5 + 0.0 + 1.0 + 984 / 1148) / 4)
    # the paper's categories pool pairs: chat = alpacaeval (1/2) + mt-bench-hard (0/1) = 1/3
    assert metrics["categories"] == {"chat": pytest.approx(1 / 3), "code": 0.0, "math": 1.0, "safety": 1.0}
    assert metrics["categories_average"] == pytest.approx((1 / 3 + 0 + 1 + 1) / 4)
    assert metrics["unknown_subsets"] == {"my-own-subset": 1}
    assert upstream_accuracy(metrics)["alpacaeval-easy"] == pytest.approx(50.0)


def test_judge_template_falls_back_to_alpacaeval_easy():
    template, known = judge_template("something-new")
    assert not known and template == judge_template("alpacaeval-easy")[0]
    assert judge_template("hep-go") == (judge_template("hep-python")[0], True)


def test_loader_reads_local_files(tmp_path):
    path = write_jsonl(tmp_path / "rb.jsonl", rewardbench_rows(5))
    examples = load_rewardbench(str(path), "filtered")
    assert [e.id for e in examples] == [1000, 1001, 1002, 1003, 1004]
    assert examples[0].responses == ["The answer is 0.", "The answer is 1. Hello."]


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"prompt": "p", "chosen": "c", "subset": "s"}], "has no column 'rejected'"),
        ([], "empty"),
        (
            [{"prompt": "p", "chosen": "c", "rejected": 3, "subset": "s", "id": 7}],
            "row id 7: column 'rejected' must be text",
        ),
        ([{"id": 1, "prompt": "p", "chosen": "c", "rejected": "r", "subset": "s"}] * 2, "duplicate id"),
    ],
)
def test_loader_errors_name_the_problem(tmp_path, rows, message):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(IpoError, match=message) as err:
        load_rewardbench(str(path), "raw")
    assert str(path) in str(err.value)


def test_unknown_split():
    with pytest.raises(IpoError, match="unknown --split 'train'"):
        load_rewardbench("allenai/reward-bench", "train")


def test_hub_dataset_offline_is_one_clear_error():
    with pytest.raises(IpoError, match="could not load Hub dataset 'allenai/reward-bench'"):
        load_rewardbench("allenai/reward-bench", "raw")
