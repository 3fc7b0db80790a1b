"""Data readers, run folders, resumable logs, secrets."""

import argparse
import gzip
import json

import pytest

from ipo import IpoError, cli
from ipo.data import Example, limit_per_group, read_records
from ipo.runs import RecordLog, RunDir, scrubbed_command


# ---------------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------------
def test_read_every_local_format(tmp_path):
    rows = [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    (tmp_path / "list.json").write_text(json.dumps(rows))
    (tmp_path / "lines.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    (tmp_path / "lines.json").write_text("\n".join(map(json.dumps, rows)))  # datasets' to_json writes lines
    (tmp_path / "columns.json").write_text(json.dumps({"a": [1, 2], "b": ["x", "y"]}))
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": rows}))
    with gzip.open(tmp_path / "lines.jsonl.gz", "wt") as handle:
        handle.write("\n".join(map(json.dumps, rows)))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "table.parquet")
    for name in (
        "list.json",
        "lines.jsonl",
        "lines.json",
        "columns.json",
        "wrapped.json",
        "lines.jsonl.gz",
        "table.parquet",
    ):
        assert read_records(str(tmp_path / name)) == rows, name


def test_reader_errors(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(IpoError, match=r"bad.json: not valid JSON"):
        read_records(str(tmp_path / "bad.json"))
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{oops\n')
    with pytest.raises(IpoError, match=r"bad.jsonl: line 2 is not valid JSON"):
        read_records(str(tmp_path / "bad.jsonl"))
    with pytest.raises(IpoError, match="no such file"):
        read_records(str(tmp_path / "missing.json"))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(IpoError, match="bad.parquet: cannot be read"):
        read_records(str(tmp_path / "bad.parquet"))
    (tmp_path / "scalar.json").write_text("3")
    with pytest.raises(IpoError, match="expected a JSON list"):
        read_records(str(tmp_path / "scalar.json"))


def test_limit_per_group_keeps_dataset_order():
    examples = [Example(id=i, prompt="", responses=[], subset="ab"[i % 2]) for i in range(7)]
    kept = limit_per_group(examples, 2, key=lambda e: e.subset)
    assert [e.id for e in kept] == [0, 1, 2, 3]
    assert limit_per_group(examples, None, key=lambda e: e.subset) == examples


# ---------------------------------------------------------------------------------------------------
# Record logs and run folders
# ---------------------------------------------------------------------------------------------------
def test_record_log_repairs_a_cut_last_line_and_never_duplicates(tmp_path):
    path = tmp_path / "predictions.jsonl"
    log = RecordLog(path)
    log.append([{"id": 1, "x": 0.5}, {"id": "2", "x": 0.25}])
    with open(path, "a") as handle:
        handle.write('{"id": 3, "x": 0.')  # a kill in the middle of a write
    log = RecordLog(path)
    assert len(log) == 2 and 1 in log and 2 in log and 3 not in log
    assert path.read_text().endswith("}\n")
    log.append([{"id": 2, "x": 9.0}, {"id": 3, "x": 0.75}])  # id 2 is already there: not written again
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["id"] for line in lines] == [1, "2", 3] and lines[1]["x"] == 0.25
    assert [r["id"] for r in RecordLog(path).ordered([3, 1, 99])] == [3, 1]


def test_run_dir_refuses_to_resume_with_other_settings(tmp_path):
    run = RunDir(tmp_path, "run")
    assert run.start({"model_name": "a", "batch_size": 4}) is False
    # batch size does not change results: resuming is fine
    assert RunDir(tmp_path, "run").start({"model_name": "a", "batch_size": 16}) is True
    with pytest.raises(IpoError, match="different settings.*model_name: 'a' -> 'b'"):
        RunDir(tmp_path, "run").check({"model_name": "b", "batch_size": 4})
    assert RunDir(tmp_path, "run", overwrite=True).start({"model_name": "b"}) is False
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["args"] == {"model_name": "b"} and config["versions"]["torch"]
    with pytest.raises(IpoError, match="invalid --run_name"):
        RunDir(tmp_path, "a/b")


def test_secrets_never_reach_the_config(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    args = argparse.Namespace(hf_key="hf_SECRETSECRETSECRET", model_name="m", api_key="sk-x")
    cli.consume_secrets(args)
    import os

    assert os.environ["HF_TOKEN"] == "hf_SECRETSECRETSECRET"
    RunDir(tmp_path, "run").start(cli.public_args(args))
    assert "SECRET" not in (tmp_path / "run" / "config.json").read_text()
    assert scrubbed_command(["x.py", "--hf_key", "hf_abc", "--api_key=sk-1", "--model_name", "m"]) == [
        "x.py",
        "--hf_key",
        "***",
        "--api_key=***",
        "--model_name",
        "m",
    ]


def test_argument_errors_are_one_line(capsys):
    parser = cli.ArgumentParser(prog="ours.py")
    parser.add_argument("--split", choices=["raw", "filtered"])
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--split", "train"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'train'" in err


def test_help_shows_set_defaults_only():
    parser = cli.ArgumentParser(prog="grid.py")
    parser.add_argument("--output_dir", help="parent folder (default: the file's)")
    parser.add_argument("--slurm", action="store_true", help="write a script")
    parser.add_argument("--option", action="append", default=[], help="repeatable")
    parser.add_argument("--batch_size", type=int, default=8, help="rows per batch")
    parser.add_argument("--retries", type=int, default=0, help="retries")
    text = " ".join(parser.format_help().split())
    assert "(default: the file's) --slurm" in text and "write a script --option" in text
    assert "repeatable --batch_size" in text and "rows per batch (default: 8)" in text
    assert "retries (default: 0)" in text and "default: None" not in text and "default: False" not in text


def test_a_missing_local_model_folder_is_named_as_such(tmp_path):
    from ipo.modeling import HUB_ID, load_tokenizer

    for missing in (str(tmp_path / "nope"), "./outputs/nope", "outputs/run/round_1/merged", "~/nope"):
        with pytest.raises(IpoError) as info:
            load_tokenizer(missing)
        assert str(info.value) == f"could not load the tokenizer of {missing!r}: no such folder"  # not Hub rules
    assert HUB_ID.fullmatch("Qwen/Qwen2.5-7B-Instruct") and HUB_ID.fullmatch("gpt2")
    assert not any(HUB_ID.fullmatch(p) for p in ("/abs", "./rel", "a/b/c", "~/x", "../up"))


def test_install_files_pin_every_package_and_agree_on_torch():
    """requirements.txt pins everything (an unpinned torch pulls a multi-GB CUDA build); the conda spec is valid
    YAML whose pip section installs the same torch and then requirements.txt."""
    import re
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    requirements = [line.split("#")[0].strip() for line in (root / "requirements.txt").read_text().splitlines()]
    requirements = [line for line in requirements if line]
    assert requirements[0] == "torch==2.13.0"
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][A-Za-z0-9.+]*", line) for line in requirements), requirements

    spec = yaml.safe_load((root / "environment.yaml").read_text())
    assert spec["name"] == "ipo"
    pip_section = next(item["pip"] for item in spec["dependencies"] if isinstance(item, dict))
    assert pip_section[0] == requirements[0]
    assert "-r requirements.txt" in pip_section
