"""The collector (Preference_Comparison/collect.py, ipo.benchmarks.collect) and the paper's numbers (ipo.paper).

Run folders are built with the real writers (rewardbench / rmbench write_outputs, run_info.run_description)
on synthetic prediction records, so no model loads; their values are chosen so the expected table cells
and differences are known by hand.
"""

from __future__ import annotations

import csv
import json

import pytest
from helpers import REPO, run_script

from ipo import IpoError
from ipo.benchmarks import rewardbench, rmbench
from ipo.benchmarks.collect import collect, find_runs
from ipo.data import Coverage
from ipo.paper import paper_model, published, read_paper_results
from ipo.run_info import describe_run, run_description
from ipo.runs import RunDir, atomic_write_json

# A full raw split (5,123 pairs) with pooled category accuracies fixed by construction:
# chat 75% (2,000 pairs), code 50% (1,200), math 100% (447), safety 25% (1,476).
CATEGORY_PLAN = {"chat": (2000, 0.75), "code": (1200, 0.50), "math": (447, 1.00), "safety": (1476, 0.25)}


def full_rewardbench_records() -> list[dict]:
    records = []
    for category, (total, rate) in CATEGORY_PLAN.items():
        subsets = rewardbench.PAPER_CATEGORIES[category]
        sizes = [total // len(subsets)] * len(subsets)
        sizes[-1] += total - sum(sizes)
        wrong_every = {0.75: 4, 0.5: 2, 0.25: None, 1.0: None}[rate]
        k = 0
        for subset, size in zip(subsets, sizes):
            for i in range(size):
                if rate == 0.25:
                    correct = k % 4 == 0
                else:
                    correct = rate == 1.0 or k % wrong_every != wrong_every - 1
                records.append({"id": f"{subset}-{i}", "subset": subset, "correct": correct, "tie": False})
                k += 1
    assert len(records) == rewardbench.SPLITS["raw"]
    return records


def rewardbench_run(
    parent, name, model, method, records, dataset="allenai/reward-bench", limit=None, n_in_data=None, set_name=None
):
    run = RunDir(parent, name)
    run.start({"model_name": model, "scoring": "upstream", "dataset": dataset, "split": "raw", "limit": limit})
    coverage = Coverage(n_in_data or len(records), limit, selection=f"--set_name {set_name}" if set_name else "")
    rewardbench.write_outputs(run, records, title=name, upstream_file="up.json", method=method, coverage=coverage)
    return run.path


def rmbench_run(parent):
    run = RunDir(parent, "rm")
    run.start({"model_name": "Qwen/Qwen2.5-7B-Instruct", "scoring": "chat", "dataset": ["x.json"]})
    records = []
    for domain in ("chat", "code", "math", "safety-refuse"):
        for i in range(4):  # chosen always higher: every comparison right, except math: all wrong
            good, bad = ([0.9] * 3, [0.1] * 3) if domain != "math" else ([0.1] * 3, [0.9] * 3)
            records.append(
                {
                    "key": f"{domain}/{i}",
                    "id": i,
                    "domain": domain,
                    "subset": domain,
                    "p_yes_chosen": good,
                    "p_yes_rejected": bad,
                }
            )
    rmbench.write_outputs(run, records, "rm", "up.json", method="ipo")
    return run.path


def selfimprove_run(parent):
    """A DPO loop run as its writer leaves it: metrics.json with "run" and "held_out", a merged model folder."""
    folder = parent / "dpo-ipo"
    (folder / "round_1" / "merged").mkdir(parents=True)
    atomic_write_json(
        folder / "config.json",
        {"args": {"model_id": "mistralai/Mistral-7B-Instruct-v0.1", "prompt_format": "upstream"}},
    )
    metrics = {
        "run": describe_run(folder, "selfimprove", "dpo_loop_ipo", n=40),
        "held_out": {"before": 0.61, "after": 0.68, "change": 0.07, "n_prompts": 8, "n_responses": 32, "round": 1},
        "rounds": [{"round": 1}],
    }
    atomic_write_json(folder / "metrics.json", metrics)
    atomic_write_json(folder / "round_1" / "metrics.json", {"round": 1})  # a round's own file: part of the run
    return folder


def downstream_run(parent, model, limit=None):
    folder = parent / f"downstream-{limit}"
    folder.mkdir(parents=True)
    tasks = {
        "bbh": {"score": 35.60, "n": 6511, "n_in_data": 6511, "limit": limit},
        "arc_easy": {"score": 80.20, "n": 2376, "n_in_data": 2376, "limit": limit},
        "mmlu": {"score": 40.60, "n": 14042, "n_in_data": 14042, "limit": limit},
        "ifeval": {"score": 39.19, "n": 541, "n_in_data": 541, "limit": limit},
    }
    win = {"win_rate": 70.20, "n_judged": 805, "n_in_data": 805}  # as DPO/Evals/downstream.py writes it
    metrics = {"run": run_description("downstream", "downstream", str(model)), "tasks": tasks, "alpaca_eval": win}
    atomic_write_json(folder / "metrics.json", metrics)
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The run folders, built once for the module (the tests only read them)."""
    root = tmp_path_factory.mktemp("collect") / "outputs"
    rewardbench_run(root, "qwen-full", "Qwen/Qwen2.5-7B-Instruct", "ipo", full_rewardbench_records())
    demo = [
        {"id": f"d{i}", "subset": "hep-go" if i % 2 else "alpacaeval-easy", "correct": True, "tie": False}
        for i in range(8)
    ]
    rewardbench_run(
        root, "mistral-demo", "mistralai/Mistral-7B-Instruct-v0.2", "self_rewarding", demo, "data/demo.jsonl"
    )
    rewardbench_run(root / "more", "smol", "HuggingFaceTB/SmolLM2-135M-Instruct", "ipo", demo, limit=4, n_in_data=5123)
    rmbench_run(root)
    loop = selfimprove_run(root)
    downstream_run(root, loop / "round_1" / "merged")
    search = {"run": run_description("rewardbench", "prompt_search", "m"), "subsets": {}}  # no table of the paper's
    atomic_write_json(root / "search" / "metrics.json", search)
    return root


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def find(rows, **match):
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


def test_the_papers_numbers_load_with_their_provenance():
    values = read_paper_results()
    assert published("rewardbench", "Qwen-2.5-7B-Instruct", "ipo")["Avg"].value == 77.71
    assert published("rewardbench", "Mistral-7B-Instruct", "self_rewarding")["Code"].value == 1.6
    ipo_row = published("downstream", "Mistral-7B-Instruct", "dpo_loop_ipo")
    # The order: BBH, ARC-Easy, AlpacaEval, MMLU, IFEval.
    assert [ipo_row[c].value for c in ("BBH", "ARC-Easy", "AlpacaEval", "MMLU", "IFEval")] == [
        34.6,
        82.2,
        78.2,
        37.6,
        39.19,
    ]
    assert all(v.source.startswith("arXiv 2502.16182") for v in values)
    assert all(v.secondary for v in values)  # none is checked against the paper's table yet: each says so
    assert len(values) == 4 * 5 + 3 * 6


def test_model_ids_map_to_the_papers_rows():
    assert paper_model("Qwen/Qwen2.5-7B-Instruct") == "Qwen-2.5-7B-Instruct"
    assert paper_model("/models/qwen2.5-7b-instruct/") == "Qwen-2.5-7B-Instruct"
    assert paper_model("mistralai/Mistral-7B-Instruct-v0.1") == "Mistral-7B-Instruct"
    assert paper_model("Qwen/Qwen2.5-3B-Instruct") is None
    assert paper_model(None) is None


def test_bad_paper_file_is_one_line(tmp_path):
    bad = tmp_path / "p.csv"
    bad.write_text(
        "table,model,method,method_label,column,value,source,transcription,note\nrewardbench,M,ipo,IPO,Chat,high,s,,\n"
    )
    with pytest.raises(IpoError, match="is not a number"):
        read_paper_results(bad)


def test_metrics_json_names_its_run(runs):
    metrics = json.loads((runs / "qwen-full" / "metrics.json").read_text())
    assert metrics["run"] == {
        "benchmark": "rewardbench",
        "method": "ipo",
        "model": "Qwen/Qwen2.5-7B-Instruct",
        "model_short": "Qwen2.5-7B-Instruct",
        "scoring": "upstream",
        "backend": "hf",
        "data": {"source": "allenai/reward-bench", "split": "raw", "n": 5123},
        "coverage": metrics["coverage"],
    }
    rm = json.loads((runs / "rm" / "metrics.json").read_text())["run"]
    assert (rm["benchmark"], rm["scoring"], rm["data"]["source"]) == ("rmbench", "chat", "x.json")
    with pytest.raises(ValueError):
        run_description("rewardbench", "Not An Id", "m")


def test_collect_fills_the_papers_tables(runs, tmp_path):
    out = tmp_path / "tables"
    collect([runs], out)
    rows = read_csv(out / "paper_tables.csv")

    # The full Qwen run: reproduced beside published, differences by hand.
    qwen = {r["column"]: r for r in find(rows, table="rewardbench", paper_model="Qwen-2.5-7B-Instruct", method="ipo")}
    expected = {
        "Chat": (75.0, 78.26, -3.26),
        "Code": (50.0, 83.13, -33.13),
        "Math": (100.0, 56.24, 43.76),
        "Safety": (25.0, 93.24, -68.24),
        "Avg": (62.5, 77.71, -15.21),
    }
    for column, (mine, theirs, diff) in expected.items():
        row = qwen[column]
        assert (float(row["reproduced"]), float(row["published"]), float(row["difference"])) == (mine, theirs, diff)
        assert row["comparable"] == "true"

    # The paper's Mistral IPO row has no run: published values, empty reproduced cells.
    mistral = find(rows, table="rewardbench", model="Mistral-7B-Instruct", method="ipo")
    assert {r["column"]: r["published"] for r in mistral}["Math"] == "96.2"
    assert all(r["reproduced"] == "" and r["run"] == "" for r in mistral)

    # The demo-data run fills the Mistral Self-Rewarding row but is not compared: no difference.
    demo = find(rows, table="rewardbench", model="Mistral-7B-Instruct", method="self_rewarding")
    assert {r["column"]: r["reproduced"] for r in demo}["Chat"] == "100.0"
    assert all(r["difference"] == "" and r["comparable"] == "false" for r in demo)
    assert "partial" in demo[0]["coverage"] and "8 pairs" in demo[0]["coverage"]

    # A model the paper lacks gets its own row, marked by its --limit.
    smol = find(rows, table="rewardbench", model="SmolLM2-135M-Instruct")
    assert smol and all(r["published"] == "" for r in smol) and "--limit 4" in smol[0]["coverage"]

    # Official sections, RM-Bench, self-improvement and downstream.
    assert find(rows, table="rewardbench_sections", model="Qwen-2.5-7B-Instruct", column="Reasoning")
    rm = {r["column"]: float(r["reproduced"]) for r in find(rows, table="rmbench")}
    assert rm["chat"] == 100.0 and rm["math"] == 0.0 and rm["average"] == 75.0
    held = {r["column"]: float(r["reproduced"]) for r in find(rows, table="selfimprove")}
    assert held == {"before": 0.61, "after": 0.68, "change": 0.07}
    trained = {r["column"]: r for r in find(rows, table="downstream", method="dpo_loop_ipo")}
    assert trained["BBH"]["model"] == "Mistral-7B-Instruct"  # the model came from the DPO run's folder
    assert float(trained["BBH"]["difference"]) == 1.0 and float(trained["MMLU"]["difference"]) == 3.0
    assert float(trained["Avg"]["reproduced"]) == 53.16  # (35.6 + 80.2 + 70.2 + 40.6 + 39.19) / 5
    assert find(rows, table="downstream", method="dpo_loop_self_rewarding")[0]["reproduced"] == ""
    assert not find(rows, method="prompt_search")

    md = (out / "paper_tables.md").read_text()
    assert "| 75.00 / 78.26* (-3.26) |" in md
    assert "- / 61.25*" in md and "no run yet" in md
    assert (out / "paper_comparison.png").stat().st_size > 10_000


def test_runs_are_found_once_and_rounds_belong_to_their_run(runs):
    found = find_runs([runs, runs / "rm"])
    names = sorted(r.path.name for r in found)
    assert names == sorted(["qwen-full", "mistral-demo", "smol", "rm", "dpo-ipo", "downstream-None", "search"])


def test_the_script_and_its_one_line_errors(runs, tmp_path, capsys):
    assert run_script("Preference_Comparison/collect.py", [str(runs / "rm"), "--output_dir", str(tmp_path / "o")]) == 0
    assert "RM-Bench" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_script("Preference_Comparison/collect.py", [str(empty), "--output_dir", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no run folder" in err and "\n" not in err
    assert run_script("Preference_Comparison/collect.py", [str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("x")
    assert (
        run_script(
            "Preference_Comparison/collect.py", [str(runs / "rm"), "--output_dir", str(tmp_path / "a_file" / "o")]
        )
        == 1
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --output_dir ") and "which is a file, not a folder" in err and "\n" not in err


def test_repo_ships_the_paper_file():
    assert (REPO / "ipo" / "paper_results.csv").is_file()


def test_describe_run_reads_each_scripts_argument_names(tmp_path):
    atomic_write_json(
        tmp_path / "config.json",
        {
            "args": {
                "model": "gpt-4o-mini",
                "input_format": "chat",
                "dataset": ["a.json", "b.json"],
                "backend": "server",
            }
        },
    )
    info = describe_run(tmp_path, "rmbench", "reward_model", n=3)
    assert (info["model"], info["scoring"], info["backend"], info["data"]) == (
        "gpt-4o-mini",
        "chat",
        "server",
        {"source": ["a.json", "b.json"], "split": None, "n": 3},
    )
    assert describe_run(tmp_path / "nowhere", "downstream", "downstream", model="org/M.gguf")["model_short"] == "M"


def test_upstreams_three_self_reward_sets_are_one_row(tmp_path):
    records = full_rewardbench_records()
    for set_name in ("set1", "set2", "set3"):
        subsets = rewardbench.SELF_REWARD_SETS[set_name]
        part = [r for r in records if r["subset"] in subsets]
        model = "mistralai/Mistral-7B-Instruct-v0.2"
        rewardbench_run(tmp_path / "runs", set_name, model, "self_rewarding", part, n_in_data=5123, set_name=set_name)
    # set1 alone again, over an overlapping group: not combined with the others
    part = [r for r in records if r["subset"] in rewardbench.SELF_REWARD_SETS["set1_phi"]]
    rewardbench_run(
        tmp_path / "runs", "phi", "org/Other-7B", "self_rewarding", part, n_in_data=5123, set_name="set1_phi"
    )
    collect([tmp_path / "runs"], tmp_path / "out")
    rows = read_csv(tmp_path / "out" / "paper_tables.csv")
    combined = {
        r["column"]: r for r in find(rows, table="rewardbench", model="Mistral-7B-Instruct", method="self_rewarding")
    }
    expected = {
        "Chat": 50.45,
        "Code": 48.4,
        "Math": 71.82,
        "Safety": 9.61,
        "Avg": 45.07,
    }  # vs 24.55 1.6 28.18 15.39 17.43
    assert {c: float(r["difference"]) for c, r in combined.items()} == expected
    assert "combined from 3 runs" in combined["Chat"]["coverage"] and combined["Chat"]["comparable"] == "true"
    assert len({r["run"] for r in find(rows, table="rewardbench_sections")}) == 2


def test_other_tasks_labels_and_backend_show_in_the_markdown(tmp_path):
    """A downstream task the paper did not run gets its own column (not dropped), rows the paper lacks name their
    method in words, and every run row says which backend judged it."""
    from ipo.benchmarks.collect import collect

    root = tmp_path / "outputs"
    folder = root / "own-task"
    folder.mkdir(parents=True)
    tasks = {"my_arith": {"score": 83.33, "n": 6, "n_in_data": 6, "limit": None}}
    atomic_write_json(
        folder / "metrics.json", {"run": run_description("downstream", "downstream", "some/model"), "tasks": tasks}
    )
    served = run_description("rewardbench", "api_binary", "gpt-x", backend="server")
    atomic_write_json(root / "api" / "metrics.json", {"run": served, "categories": {"chat": 0.5}, "subsets": {}})
    tables = collect([root], tmp_path / "o")
    row = next(r for r in tables["downstream"] if r.run is not None)
    assert row.reproduced == {"my_arith": 83.33}
    md = (tmp_path / "o" / "paper_tables.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| model | method") and "my_arith" in line)
    assert header.split(" | ")[3] == "backend"
    assert "| model | untrained |" in md  # the untrained model (short name), its method in words
    assert "| Pairwise (API) |" in md and "| server |" in md
    assert "83.33" in md and "my_arith 6/6" in md
    assert "my_arith" in {r["column"] for r in read_csv(tmp_path / "o" / "paper_tables.csv")}
