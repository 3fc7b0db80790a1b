"""Prompt search: the candidate file, the seeded split, selection on one part and report on the other."""

import json

import pytest
from helpers import REPO, rewardbench_rows, run_script, run_subprocess, write_jsonl

from ipo import IpoError
from ipo.benchmarks.prompt_search import (
    PAPER,
    candidates_for,
    load_candidate_prompts,
    paper_candidate,
    selection_split,
    summarize,
)
from ipo.prompts import ALPACAEVAL_PROMPT, REFUSAL_PROMPT

SCRIPT = "Preference_Comparison/Reward_Bench/prompt_search.py"
SHIPPED = REPO / "Preference_Comparison/Reward_Bench/candidate_prompts.json"


# ---------------------------------------------------------------------------------------------------
# Pure parts
# ---------------------------------------------------------------------------------------------------
def test_the_shipped_candidates_in_upstreams_format():
    prompts = load_candidate_prompts(SHIPPED)
    assert len(prompts) == 23 and isinstance(prompts["default"], str)
    assert (
        sum(len(v) for k, v in prompts.items() if k != "default") + 1 == 221
    )  # upstream candidate_prompts.json: 220 candidates and the default
    assert candidates_for("llmbar-adver-manual", prompts) == [prompts["default"]]  # no entry upstream
    assert len(candidates_for("hep-python", prompts)) == 10
    # Only 3 of the paper's questions are among upstream's candidates; those share their predictions.
    assert paper_candidate("xstest-should-refuse", candidates_for("xstest-should-refuse", prompts)) == prompts[
        "xstest-should-refuse"
    ].index(REFUSAL_PROMPT)
    assert paper_candidate("alpacaeval-easy", candidates_for("alpacaeval-easy", prompts)) == PAPER


def test_selection_split_is_seeded_disjoint_and_covers_the_subset():
    ids = list(range(20))
    selection, heldout = selection_split(ids, "hep-go", 0.5, seed=42)
    assert len(selection) == len(heldout) == 10 and selection | heldout == {str(i) for i in ids}
    assert selection_split(list(reversed(ids)), "hep-go", 0.5, 42) == (selection, heldout)  # order-free
    assert selection_split(ids, "hep-go", 0.5, 43) != (selection, heldout)
    assert selection_split(ids, "hep-js", 0.5, 42) != (selection, heldout)  # drawn per subset
    assert [len(part) for part in selection_split(ids, "x", 0.3, 0)] == [6, 14]
    assert [len(part) for part in selection_split([1, 2], "x", 0.9, 0)] == [1, 1]  # both parts kept
    assert [len(part) for part in selection_split([1], "x", 0.5, 0)] == [1, 0]


def fabricated_records(subset, pair_ids, correct_on):
    """Records where candidate k is right exactly on the pairs in correct_on[k]."""
    return [
        {"pair_id": i, "subset": subset, "candidate": k, "correct": str(i) in set(map(str, pairs)), "tie": False}
        for k, pairs in correct_on.items()
        for i in pair_ids
    ]


def test_summarize_selects_on_the_selection_part_and_reports_on_the_held_out_part():
    pair_ids = list(range(10))
    selection, heldout = selection_split(pair_ids, "alpacaeval-easy", 0.5, seed=7)
    half_of_heldout = sorted(heldout)[:2]
    correct_on = {0: [], 1: selection, 2: heldout, PAPER: half_of_heldout}
    plan = {"alpacaeval-easy": {"candidates": ["A", "B", "C"], "paper": PAPER, "paper_prompt": ALPACAEVAL_PROMPT}}
    metrics, upstream = summarize(fabricated_records("alpacaeval-easy", pair_ids, correct_on), plan, 0.5, seed=7)
    subset = metrics["subsets"]["alpacaeval-easy"]
    # B is perfect where it is chosen and useless where it is judged; C is the other way round.
    assert subset["best_candidate"] == 2 and subset["best_prompt"] == "B"
    assert subset["selection_accuracy"] == 1.0 and subset["heldout_accuracy"] == 0.0
    assert subset["paper_prompt_heldout_accuracy"] == 2 / 5
    assert subset["selection_accuracies"] == [0.0, 1.0, 0.0] and subset["whole_subset_accuracies"] == [0.0, 0.5, 0.5]
    assert metrics["heldout"]["selected"]["accuracy"] == 0.0 and metrics["heldout"]["paper"]["accuracy"] == 0.4
    assert metrics["heldout"]["selected"]["sections"]["Chat"] == 0.0
    assert upstream["subset_accuracies"]["alpacaeval-easy"] == {
        "average_accuracy": pytest.approx(100 / 3),
        "individual_accuracies": [0.0, 50.0, 50.0],
    }
    assert upstream["prompt_accuracies"]["alpacaeval-easy_prompt_3"] == {"accuracy": 50.0, "prompt_template": "C"}


def test_summarize_breaks_ties_by_file_order():
    plan = {"hep-go": {"candidates": ["A", "B"], "paper": 1, "paper_prompt": "B"}}
    records = fabricated_records("hep-go", range(6), {0: [0, 1, 2, 3, 4, 5], 1: [0, 1, 2, 3, 4, 5]})
    metrics, _ = summarize(records, plan, 0.5, seed=1)
    assert metrics["subsets"]["hep-go"]["best_candidate"] == 1
    assert metrics["subsets"]["hep-go"]["paper_prompt_candidate"] == 2  # the paper's question is candidate 2


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "not valid JSON"),
        ('["a", "b"]', "expected a JSON object"),
        ('{"hep-go": ["a"]}', 'needs a non-empty "default"'),
        ('{"default": "d", "hep-go": "a single string"}', "'hep-go' must be a non-empty list"),
        ('{"default": "d", "hep-go": ["a", 3]}', "'hep-go' candidate 2 is not a non-empty string"),
    ],
)
def test_bad_prompt_files(tmp_path, content, message):
    path = tmp_path / "prompts.json"
    path.write_text(content)
    with pytest.raises(IpoError, match=message) as err:
        load_candidate_prompts(path)
    assert str(path) in str(err.value)
    with pytest.raises(IpoError, match="no such prompts file"):
        load_candidate_prompts(tmp_path / "missing.json")


# ---------------------------------------------------------------------------------------------------
# The script, with a scripted judge: the answer is known
# ---------------------------------------------------------------------------------------------------
def test_script_selects_on_selection_pairs_and_resumes(tiny_model_dir, tmp_path, monkeypatch):
    from ipo.judges import yes_no as judge

    rows = rewardbench_rows(12, subsets=["alpacaeval-easy"])
    pair_ids = [r["id"] for r in rows]
    selection, heldout = selection_split(pair_ids, "alpacaeval-easy", 0.5, seed=42)  # the script's default seed
    right = {"A": set(), "B": selection, "C": heldout, ALPACAEVAL_PROMPT: set(map(str, pair_ids))}
    calls = []

    class FixedScorer:
        """p_yes 0.9 / 0.1 when the template is 'right' for the pair, else reversed."""

        def __init__(self, judge, layout, template_for):
            self.template_for = template_for

        def score(self, examples):
            calls.extend(e.id for e in examples)
            ok = [str(e.meta["pair_id"]) in right[self.template_for(e)] for e in examples]
            yield [(e, [0.9, 0.1] if good else [0.1, 0.9], {"truncated": False}) for e, good in zip(examples, ok)]

    monkeypatch.setattr(judge, "YesNoScorer", FixedScorer)
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"default": "D", "alpacaeval-easy": ["A", "B", "C"]}))
    data = write_jsonl(tmp_path / "rb.jsonl", rows)
    argv = [
        "--model_name",
        str(tiny_model_dir),
        "--dataset",
        str(data),
        "--prompts_file",
        str(prompts),
        "--output_dir",
        str(tmp_path),
        "--run_name",
        "r",
        "--hf_key",
        "hf_SECRET",
    ]
    assert run_script(SCRIPT, argv) == 0
    run_dir = tmp_path / "r"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    subset = metrics["subsets"]["alpacaeval-easy"]
    assert subset["best_prompt"] == "B" and subset["selection_accuracy"] == 1.0 and subset["heldout_accuracy"] == 0.0
    assert subset["paper_prompt_heldout_accuracy"] == 1.0 and subset["paper_prompt_candidate"] is None
    assert len(calls) == 12 * 4  # 3 candidates + the paper's question
    upstream = json.loads(
        (run_dir / f"accuracy_reward-bench_yesno_{tiny_model_dir.name}_multi_prompt.json").read_text()
    )
    assert upstream["subset_accuracies"]["alpacaeval-easy"]["individual_accuracies"] == [0.0, 50.0, 50.0]
    assert "| alpacaeval-easy | 6/6 | 2 of 3 |" in (run_dir / "results.md").read_text()
    # Resume: drop some (pair, candidate) records; only those are scored again.
    lines = (run_dir / "predictions.jsonl").read_text().splitlines(keepends=True)
    (run_dir / "predictions.jsonl").write_text("".join(lines[:40]) + lines[40][:20])
    calls.clear()
    assert run_script(SCRIPT, argv) == 0
    assert len(calls) == 8 and json.loads((run_dir / "metrics.json").read_text()) == metrics
    assert len((run_dir / "predictions.jsonl").read_text().splitlines()) == 48
    # An edited candidate file is a different run.
    prompts.write_text(json.dumps({"default": "D", "alpacaeval-easy": ["A", "B", "C", "E"]}))
    assert run_script(SCRIPT, argv) == 1


def test_script_end_to_end_on_the_tiny_model(tiny_model_dir, tmp_path):
    rows = rewardbench_rows(8, subsets=["xstest-should-refuse", "llmbar-adver-manual"])
    data = write_jsonl(tmp_path / "rb.jsonl", rows)
    argv = ["--model_name", str(tiny_model_dir), "--dataset", str(data), "--output_dir", str(tmp_path), "--limit", "3"]
    assert run_script(SCRIPT, argv) == 0
    run_dir = tmp_path / f"rewardbench-raw-{tiny_model_dir.name}-upstream-prompt-search"
    predictions = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    # xstest-should-refuse: 10 candidates (the paper's question is one of them); llmbar-adver-manual:
    # [default] and the paper's question.
    assert len(predictions) == 3 * 10 + 3 * 2
    assert {p["candidate"] for p in predictions if p["subset"] == "llmbar-adver-manual"} == {0, "paper"}
    assert all(
        0 < p["p_yes_chosen"] < 1 and p["correct"] == (p["p_yes_chosen"] > p["p_yes_rejected"]) for p in predictions
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (
        metrics["subsets"]["xstest-should-refuse"]["n_selection"]
        + metrics["subsets"]["xstest-should-refuse"]["n_heldout"]
        == 3
    )
    upstream = json.loads(
        (run_dir / f"accuracy_reward-bench_yesno_{tiny_model_dir.name}_multi_prompt.json").read_text()
    )
    assert set(upstream) == {"subset_accuracies", "prompt_accuracies"}
    assert len(upstream["subset_accuracies"]["xstest-should-refuse"]["individual_accuracies"]) == 10
    assert "llmbar-adver-manual_prompt_1" in upstream["prompt_accuracies"]


def test_help():
    result = run_subprocess(SCRIPT, ["--help"])
    assert result.returncode == 0 and "--prompts_file" in result.stdout and "--select_fraction" in result.stdout


@pytest.mark.parametrize(
    "case, message",
    [
        ("not_json", "not valid JSON"),
        ("no_default", '"default"'),
        ("missing", "no such prompts file"),
        ("fraction", "--select_fraction must be between 0 and 1"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(case, message, tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "rb.jsonl", rewardbench_rows(4))
    prompts = tmp_path / "prompts.json"
    extra = []
    if case == "not_json":
        prompts.write_text("{oops")
    elif case == "no_default":
        prompts.write_text('{"hep-go": ["a"]}')
    elif case == "fraction":
        prompts, extra = SHIPPED, ["--select_fraction", "1.5"]
    out_dir = tmp_path / "outputs"
    result = run_subprocess(
        SCRIPT,
        [
            "--model_name",
            str(tiny_model_dir),
            "--dataset",
            str(data),
            "--prompts_file",
            str(prompts),
            "--output_dir",
            str(out_dir),
            *extra,
        ],
    )
    assert result.returncode != 0 and result.stderr.strip().count("\n") == 0, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    if case != "fraction":
        assert str(prompts) in result.stderr  # the line names the file
    assert not out_dir.exists()


@pytest.mark.smollm2
def test_smollm2_prompt_search(smollm2_dir, tmp_path):
    rows = [json.loads(line) for line in (REPO / "data/demo_rewardbench.jsonl").read_text().splitlines()]
    data = write_jsonl(tmp_path / "math.jsonl", [r for r in rows if r["subset"] == "math-prm"])  # 3 pairs
    argv = [
        "--model_name",
        str(smollm2_dir),
        "--dataset",
        str(data),
        "--output_dir",
        str(tmp_path),
        "--run_name",
        "demo",
    ]
    assert run_script(SCRIPT, argv) == 0
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    math = metrics["subsets"]["math-prm"]
    assert (math["n_selection"], math["n_heldout"], math["n_candidates"]) == (2, 1, 10)
    assert metrics["heldout"]["selected"]["n_pairs"] == 1 and metrics["heldout"]["paper"]["accuracy"] is not None
