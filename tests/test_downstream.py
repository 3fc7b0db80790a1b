"""DPO/Evals/downstream.py: lm-eval on local task files with the tiny model, and the AlpacaEval-style win rate
through the test OpenAI server, with answers the tests control so every score is a known value.

The lm-eval tasks tiny_mc and tiny_gen are built so their scores do not depend on the random model: tiny_mc
offers the same text as every choice (lm-eval's argmax then picks choice 0, so a document is right exactly
when its label is 0), and the generate_until task reads the generation through a regex filter that never
matches, so lm-eval's fallback "[invalid]" is compared with the targets.
"""

from __future__ import annotations

import json
import logging
import re

import pytest
from helpers import run_script, write_jsonl

from ipo import IpoError
from ipo.benchmarks import alpaca_eval, downstream

SCRIPT = "DPO/Evals/downstream.py"
JUDGE = "tiny-judge"

MC_YAML = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
GEN_YAML = """task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: generate_until
test_split: test
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{target}}}}"
generation_kwargs:
  until: ["\\n"]
  do_sample: false
  max_gen_toks: 4
filter_list:
  - name: never
    filter:
      - function: regex
        regex_pattern: "(?!x)x"
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
GROUP_YAML = """group: tiny_group
task: [tiny_mc, tiny_mc2]
aggregate_metric_list:
  - metric: acc
    weight_by_size: true
"""
# Distinct choices: lm-eval's accuracy is the random model's, checked against log-likelihoods computed here.
REAL_ROWS = [
    {"question": f"What is {i} + 1?", "choices": [str(i + 1), str(i + 2), "seven", "a cat"], "label": i % 4}
    for i in range(8)
]
MC_LABELS = [0, 0, 0, 1]  # identical choices: right when the label is 0 -> 75%
GEN_TARGETS = ["[invalid]", "[invalid]", "something else", "[invalid]"]  # the filter's fallback -> 75%


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tasks")
    mc = write_jsonl(
        folder / "mc.jsonl",
        [
            {"question": f"What is {i} + 1?", "choices": ["two", "two", "two"], "label": y}
            for i, y in enumerate(MC_LABELS)
        ],
    )
    gen = write_jsonl(folder / "gen.jsonl", [{"prompt": f"Say {i}.", "target": t} for i, t in enumerate(GEN_TARGETS)])
    (folder / "tiny_mc.yaml").write_text(MC_YAML.format(data=mc), encoding="utf-8")
    (folder / "tiny_gen.yaml").write_text(GEN_YAML.format(data=gen), encoding="utf-8")
    real = write_jsonl(folder / "real.jsonl", REAL_ROWS)
    (folder / "tiny_real.yaml").write_text(MC_YAML.format(data=real).replace("task: tiny_mc", "task: tiny_real"))
    (folder / "tiny_mc2.yaml").write_text(MC_YAML.format(data=mc).replace("task: tiny_mc", "task: tiny_mc2"))
    (folder / "tiny_group.yaml").write_text(GROUP_YAML, encoding="utf-8")
    return folder


def read_json(path):
    return json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------------
# Pure parts
# ---------------------------------------------------------------------------------------------------
def test_task_flags():
    assert downstream.parse_task_list("bbh, arc_easy,bbh") == ["bbh", "arc_easy"]
    assert downstream.parse_task_list("none") == []
    assert downstream.parse_num_fewshot(["mmlu=5", "bbh=0"], ["bbh", "mmlu"]) == {"mmlu": 5, "bbh": 0}
    with pytest.raises(IpoError, match="TASK=N"):
        downstream.parse_num_fewshot(["mmlu5"], ["mmlu"])
    with pytest.raises(IpoError, match="not among --tasks"):
        downstream.parse_num_fewshot(["ifeval=1"], ["mmlu"])


def test_ifeval_data_is_fetched_before_the_model_loads(monkeypatch):
    import nltk

    def not_there(name):
        raise LookupError(name)

    fetched = []
    monkeypatch.setattr(nltk.data, "find", not_there)
    monkeypatch.setattr(nltk, "download", lambda name, quiet: fetched.append(name) or False)
    downstream.check_task_requirements(["bbh", "mmlu"])  # no IFEval: nothing to fetch
    assert fetched == []
    with pytest.raises(IpoError, match="punkt_tab data and it could not be downloaded"):
        downstream.check_task_requirements(["ifeval"])
    monkeypatch.setattr(nltk, "download", lambda name, quiet: fetched.append(name) or True)
    downstream.check_task_requirements(["bbh", "ifeval"])
    assert fetched == ["punkt_tab", "punkt_tab"]


def test_headline_metric_of_known_and_local_tasks():
    bbh = {"alias": "bbh", "exact_match,get-answer": 0.346, "exact_match_stderr,get-answer": 0.005}
    assert downstream.headline("bbh", bbh) == ("exact_match,get-answer", 0.346, 0.005)
    local = {"alias": "x", "f1,none": 0.5, "f1_stderr,none": 0.1, "acc,none": 0.2}
    assert downstream.headline("x", local) == ("f1,none", 0.5, 0.1)


def test_verdicts_and_win_rate_metrics():
    assert alpaca_eval.verdict("Output (a)") == "a"
    assert alpaca_eval.verdict("**Output (B)** is better") == "b"
    assert alpaca_eval.verdict("output b") == "b"
    assert alpaca_eval.verdict("Outputs differ") is None and alpaca_eval.verdict("neither") is None
    example = alpaca_eval.comparisons(
        [{"instruction": "i", "output": "ref", "generator": "g"}],
        [{"instruction": "i", "output": "mine", "generator": "m"}],
    )[0]
    extra = {"failure": None, "failed": [], "kinds": [None, None], "info": [{"judge_text": "x"}, {"judge_text": "y"}]}
    won = alpaca_eval.judgement_record(example, ["a", "b"], extra)  # the model's output picked in both orders
    lost = alpaca_eval.judgement_record(example, ["b", "a"], extra)
    tie = alpaca_eval.judgement_record(example, ["a", "a"], extra)  # the judge always picks (a)
    same = alpaca_eval.judgement_record(example, [], {})
    failed = alpaca_eval.judgement_record(
        example, ["a", None], {**extra, "failure": "unparsed", "failed": [1], "kinds": [None, "unparsed"]}
    )
    assert [r["score"] for r in (won, lost, tie, same, failed)] == [1.0, 0.0, 0.5, 0.5, None]
    assert tie["position_tie"] and not won["position_tie"] and same["identical"]
    m = alpaca_eval.win_rate_metrics([won, won, lost, tie, same, failed], n_in_data=6)
    assert m["win_rate"] == 60.0 and m["n_judged"] == 5 and m["n_failed"] == 1
    assert m["failures_by_kind"] == {"unparsed": 1} and m["n_position_ties"] == 1 and m["n_identical"] == 1
    # squared deviations from 0.6: .16 + .16 + .36 + .01 + .01 = .70; sample sd sqrt(.70 / 4), over sqrt(5)
    assert m["win_rate_stderr"] == 18.71
    assert m["orders"]["model_first"] == {"n_answered": 5, "win_rate": 80.0}  # a, a, b, a, a
    assert m["orders"]["model_second"] == {"n_answered": 4, "win_rate": 50.0}  # b, b, a, a


# ---------------------------------------------------------------------------------------------------
# lm-eval on local task files
# ---------------------------------------------------------------------------------------------------
def expected_accuracy(model, tokenizer, rows) -> float:
    """Accuracy by the summed log-probability of " <choice>" after "Question: ...\nAnswer:", computed
    directly: lm-eval's multiple_choice rule (context and continuation encoded as one text, no special tokens)."""
    import torch

    right = 0
    for row in rows:
        context = f"Question: {row['question']}\nAnswer:"
        n_context = len(tokenizer(context, add_special_tokens=False)["input_ids"])
        scores = []
        for choice in row["choices"]:
            ids = tokenizer(context + " " + choice, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
            scores.append(sum(logp[i - 1, ids[i]].item() for i in range(n_context, len(ids))))
        right += max(range(len(scores)), key=scores.__getitem__) == row["label"]
    return round(100 * right / len(rows), 2)


def test_lm_eval_local_tasks_resume_and_adapter(tiny_model_dir, tiny_model, task_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    argv = ["--model_name", str(tiny_model_dir), "--device", "cpu", "--tasks", "tiny_mc,tiny_gen,tiny_real"]
    argv += ["--include_path", str(task_dir), "--output_dir", str(out), "--run_name", "r", "--log_level", "error"]
    assert run_script(SCRIPT, argv) == 0
    run = out / "r"
    metrics = read_json(run / "metrics.json")
    real = expected_accuracy(*tiny_model, REAL_ROWS)
    assert metrics["scores"] == {"tiny_mc": 75.0, "tiny_gen": 75.0, "tiny_real": real}
    assert metrics["metric_names"] == {"tiny_mc": "acc,none", "tiny_gen": "exact_match,never", "tiny_real": "acc,none"}
    assert metrics["tasks"]["tiny_mc"]["num_fewshot"] == 0 and metrics["tasks"]["tiny_mc"]["n"] == 4
    assert metrics["run"]["benchmark"] == "downstream" and metrics["run"]["method"] == "downstream"
    assert metrics["run"]["model"] == str(tiny_model_dir) and metrics["run"]["data"]["n"] == 16
    assert metrics["coverage"]["complete"] and metrics["alpaca_eval"] is None
    samples = [json.loads(line) for line in (run / "lm_eval" / "tiny_gen.samples.jsonl").read_text().splitlines()]
    assert [s["filtered_resps"] for s in samples] == [["[invalid]"]] * 4 and all(s["resps"][0][0] for s in samples)
    assert "| tiny_mc | 75.0 |" in (run / "results.md").read_text()
    config = read_json(run / "config.json")
    assert config["resolved"]["tasks"] == ["tiny_mc", "tiny_gen", "tiny_real"] and config["resolved"]["adapter"] is None

    # A resume loads no model: both tasks are finished.
    import ipo.modeling

    def no_load(*_, **__):
        raise AssertionError("the model was loaded again")

    monkeypatch.setattr(ipo.modeling, "load_model_and_tokenizer", no_load)
    assert run_script(SCRIPT, argv) == 0
    assert read_json(run / "metrics.json")["scores"] == metrics["scores"]
    monkeypatch.undo()

    # A PEFT adapter folder: its base is loaded, the adapter applied (LoRA starts as the identity); a group of
    # two copies of tiny_mc, one shot each.
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    adapter = tmp_path / "dpo-run" / "adapter"
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    argv = ["--model_name", str(adapter), "--device", "cpu", "--tasks", "tiny_group", "--num_fewshot", "tiny_group=1"]
    argv += ["--include_path", str(task_dir), "--output_dir", str(out), "--log_level", "error"]
    assert run_script(SCRIPT, argv) == 0
    run = out / "downstream-dpo-run-adapter"
    metrics = read_json(run / "metrics.json")
    assert metrics["scores"] == {"tiny_group": 75.0} and metrics["metric_names"] == {"tiny_group": "acc,none"}
    group = metrics["tasks"]["tiny_group"]
    assert group["num_fewshot"] == 1 and group["n"] == 8 and group["n_subtasks"] == 2
    config = read_json(run / "config.json")
    assert config["resolved"]["adapter"] == str(adapter)
    assert config["resolved"]["base_model"] == str(tiny_model_dir)
    lm_eval_results = read_json(run / "lm_eval" / "tiny_group.json")["lm_eval"]
    assert lm_eval_results["n-shot"]["tiny_mc"] == lm_eval_results["n-shot"]["tiny_mc2"] == 1


def test_flags_are_checked_before_any_model_loads(task_dir, tmp_path, capsys):
    base = ["--model_name", str(tmp_path / "no-such-model"), "--output_dir", str(tmp_path / "out")]
    assert run_script(SCRIPT, [*base, "--tasks", "arc_easyy"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown lm-eval task(s): 'arc_easyy' (close: arc_easy" in err
    assert run_script(SCRIPT, [*base, "--tasks", "arc_easy", "--num_fewshot", "arc_easy=x"]) == 1
    assert "TASK=N" in capsys.readouterr().err
    assert run_script(SCRIPT, [*base, "--tasks", "tiny_mc", "--include_path", str(task_dir)]) == 1
    assert "no-such-model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        run_script(SCRIPT, [*base, "--tasks", "none"])
    assert stop.value.code == 2 and "nothing to do" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------
# The AlpacaEval-style win rate through the test server
# ---------------------------------------------------------------------------------------------------
SHOWN = re.compile(r"## Output \(a\):\n(.*)\n\n## Output \(b\):\n(.*)\n\n## Which", re.DOTALL)


def prefers_better(body: dict) -> dict:
    """The judge picks the output that says 'better'; (a) when neither does; no verdict for 'undecidable'."""
    a, b = SHOWN.search(body["messages"][-1]["content"]).groups()
    if "undecidable" in a + b:
        return {"content": "I cannot tell."}
    return {"content": "Output (b)" if "better" in b and "better" not in a else "Output (a)"}


def test_win_rate_both_orders_ties_failures_and_cache(openai_server, tmp_path, capsys):
    references = [
        {"instruction": "q0", "output": "plain", "generator": "ref"},  # model better: wins both orders
        {"instruction": "q1", "output": "plain", "generator": "ref"},  # model better: wins both orders
        {"instruction": "q2", "output": "better", "generator": "ref"},  # reference better: loses both
        {"instruction": "q3", "output": "plain", "generator": "ref"},  # neither: (a) twice, a position tie
        {"instruction": "q4", "output": "same", "generator": "ref"},  # identical: a tie, no request
        {"instruction": "q5", "output": "undecidable", "generator": "ref"},  # no verdict: a failure
    ]
    mine = ["better", "better", "plain", "plain too", "same", "mine"]
    ref_file = tmp_path / "reference.json"
    ref_file.write_text(json.dumps(references), encoding="utf-8")
    model_file = tmp_path / "model.json"
    rows = [{"instruction": r["instruction"], "output": o, "generator": "m"} for r, o in zip(references, mine)]
    model_file.write_text(json.dumps(rows[::-1]), encoding="utf-8")  # matched by instruction, not position
    openai_server.canned = prefers_better
    argv = ["--model_name", "unused-for-file-outputs", "--tasks", "none", "--reference_outputs", str(ref_file)]
    argv += ["--model_outputs", str(model_file), "--base_url", openai_server.base_url, "--model", JUDGE]
    argv += ["--output_dir", str(tmp_path / "out"), "--run_name", "w", "--log_level", "error"]
    assert run_script(SCRIPT, argv) == 0
    metrics = read_json(tmp_path / "out" / "w" / "metrics.json")
    win = metrics["alpaca_eval"]
    assert metrics["scores"] == {"alpaca_eval": 60.0}  # (1 + 1 + 0 + 0.5 + 0.5) / 5
    assert win["n_judged"] == 5 and win["n_wins"] == 2 and win["n_losses"] == 1
    assert win["n_position_ties"] == 1 and win["n_identical"] == 1
    assert win["n_failed"] == 1 and win["failures_by_kind"] == {"unparsed": 1}
    assert openai_server.requests == 10  # two orders for each of the 5 instructions that differ
    first = openai_server.bodies[0]["messages"]
    assert first[0]["content"] == alpaca_eval.ALPACA_EVAL_SYSTEM
    assert "## Output (a):\nbetter\n\n## Output (b):\nplain\n" in first[1]["content"]  # q0, the model first
    assert "win rate %" in capsys.readouterr().out

    # The failure is asked again by the next run, from the cache: nothing new is sent, the numbers stay.
    assert run_script(SCRIPT, argv) == 0
    assert openai_server.requests == 10
    assert read_json(tmp_path / "out" / "w" / "metrics.json")["scores"] == {"alpaca_eval": 60.0}


def test_win_rate_on_generated_answers(tiny_model_dir, openai_server, tmp_path):
    references = [{"instruction": f"Write {w}.", "output": f"{w}!", "generator": "ref"} for w in ("a", "b", "c")]
    ref_file = write_jsonl(tmp_path / "reference.jsonl", references)
    openai_server.canned = lambda body: {"content": "Output (b)"}  # always the second: every order disagrees
    argv = ["--model_name", str(tiny_model_dir), "--device", "cpu", "--tasks", "none"]
    argv += ["--reference_outputs", str(ref_file), "--max_new_tokens", "4", "--limit", "2"]
    argv += ["--base_url", openai_server.base_url]
    argv += ["--model", JUDGE, "--output_dir", str(tmp_path / "out"), "--run_name", "g", "--log_level", "error"]
    assert run_script(SCRIPT, argv) == 0
    run = tmp_path / "out" / "g"
    metrics = read_json(run / "metrics.json")
    win = metrics["alpaca_eval"]
    assert win["win_rate"] == 50.0 and win["n_position_ties"] == 2 and win["model_outputs"] == "generated"
    assert win["n_judged"] == 2 and win["n_in_data"] == 3 and win["limit"] == 2  # --limit 2 of 3
    assert metrics["coverage"]["n_scored"] == 2 and not metrics["coverage"]["complete"]
    outputs = read_json(run / "alpaca_eval" / "model_outputs.json")
    assert [o["instruction"] for o in outputs] == [r["instruction"] for r in references[:2]]
    assert all(o["generator"] == "model" for o in outputs)
    assert openai_server.requests == 4

    # A resume may widen --limit: the third instruction is answered and judged, the first two are kept.
    argv[argv.index("--limit") + 1] = "3"
    assert run_script(SCRIPT, argv) == 0
    win = read_json(run / "metrics.json")["alpaca_eval"]
    assert win["n_judged"] == 3 and win["n_position_ties"] == 3 and openai_server.requests == 6
    assert len(read_json(run / "alpaca_eval" / "model_outputs.json")) == 3
    assert read_json(run / "config.json")["resolved"]["sampling"]["temperature"] == 0.0


def test_default_names_of_a_self_improvement_runs_models(tmp_path):
    """Every DPO run holds round_<k>/merged and round_<k>/adapter: the default run name says whose they are, so
    two arms evaluated into one --output_dir do not share the folder downstream-merged."""
    from helpers import load_script

    label = load_script(SCRIPT).model_label
    merged = tmp_path / "ipo-m" / "round_1" / "merged"
    merged.mkdir(parents=True)
    assert label(str(merged), None) == "ipo-m-round_1-merged"
    assert label(str(tmp_path / "ipo-m" / "round_2" / "adapter"), str(tmp_path / "ipo-m" / "round_2" / "adapter")) == (
        "ipo-m-round_2-adapter"
    )
    assert label(str(tmp_path / "dpo-run" / "adapter"), str(tmp_path / "dpo-run" / "adapter")) == "dpo-run-adapter"
    assert label("mistralai/Mistral-7B-Instruct-v0.1", None) == "Mistral-7B-Instruct-v0.1"


def test_hflm_on_a_loaded_model_without_its_misleading_warnings(tiny_model, caplog):
    """HFLM warns "do not launch via accelerate" whenever it is given a loaded model, as this project always
    does; those two lines are dropped, the model is still wrapped."""
    model, tokenizer = tiny_model
    with caplog.at_level(logging.WARNING, logger="lm_eval.models.huggingface"):
        lm = downstream.lm_eval_model(model, tokenizer, batch_size=1)
    assert lm.model is model
    assert not [r for r in caplog.records if "pretrained" in r.getMessage()], caplog.text
    assert not logging.getLogger("lm_eval.models.huggingface").filters  # removed again
