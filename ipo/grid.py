"""A grid of judge runs: models x judges x benchmarks from one YAML file, each point a normal run folder.

The file (recipes/paper/*.yaml are examples; recipes/README.md has the schema):

    name: paper-rewardbench            # the grid's folder under output_dir (default: the file's name)
    output_dir: outputs/grids          # default outputs/grids
    models:                            # Hub ids, local folders, `smollm2` (the embedded SmolLM2-135M-Instruct)
      - Qwen/Qwen2.5-7B-Instruct
      - model: Skywork/Skywork-Reward-Llama-3.1-8B-v0.2
        judges: [reward_model:chat]    # this model's own judges instead of the grid's
    judges: [ipo, self_rewarding]      # METHOD or METHOD:SCORING (JUDGE_SCRIPTS' methods)
    scoring: [upstream]                # the scorings of judges that name none: upstream, chat
    benchmarks: [rewardbench]          # rewardbench (= rewardbench-raw), rewardbench-filtered, rmbench
    data: {rewardbench: data/demo_rewardbench.jsonl}   # --dataset per benchmark (default: the Hub data)
    settings: {limit: 10}              # flags given to every point
    judge_settings: {self_rewarding: {max_new_tokens: 200}}   # flags given to one method's points

Each point is one script of Preference_Comparison/ with its arguments and its run folder
``<output_dir>/<name>/<benchmark>__<model>__<method>-<scoring>/`` (--output_dir / --run_name), so a point
resumes like any run and a finished one is skipped (``point_done``). ``check_points`` parses every point's
arguments with its script's own parser before anything runs.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from ipo import IpoError
from ipo.assets import smollm2_dir
from ipo.run_info import model_short_name
from ipo.runs import atomic_write_json, validate_name

logger = logging.getLogger("ipo")

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "Preference_Comparison"
# method id (as in metrics.json's run.method) -> (script file name, flag that names the model)
JUDGE_SCRIPTS = {
    "ipo": ("ours.py", "--model_name"),
    "self_rewarding": ("self_reward.py", "--model_name"),
    "reward_model": ("reward_model.py", "--model_name"),
    "api_ipo": ("ours_gpt.py", "--model"),
    "api_self_rewarding": ("self_reward_gpt.py", "--model"),
    "api_binary": ("binary_gpt.py", "--model"),
}
SCORINGS = ("upstream", "chat")
# benchmark name -> (scripts folder, the data key of the YAML, extra flags)
BENCHMARKS = {
    "rewardbench": ("Reward_Bench", "rewardbench", ("--split", "raw")),
    "rewardbench-raw": ("Reward_Bench", "rewardbench", ("--split", "raw")),
    "rewardbench-filtered": ("Reward_Bench", "rewardbench", ("--split", "filtered")),
    "rmbench": ("RM_Bench", "rmbench", ()),
}
GRID_KEYS = ("name", "output_dir", "models", "judges", "scoring", "benchmarks", "data", "settings", "judge_settings")
MODEL_KEYS = ("model", "name", "judges", "settings")
# Flags the grid sets itself: the run folder, the model, the scoring (METHOD:SCORING), the data (benchmarks, data:)
SET_PER_POINT = (
    "--output_dir",
    "--run_name",
    "--model_name",
    "--model_name_or_path",
    "--model",
    "--config",
    "--prompt_format",
    "--scoring",
    "--input_format",
    "--split",
    "--dataset",
)
DEFAULT_OUTPUT_DIR = "outputs/grids"  # beside outputs/sweeps of DPO/sweep.py


@dataclass(frozen=True)
class Point:
    """One run of the grid: ``script`` with ``argv`` writes the run folder ``folder``."""

    name: str
    benchmark: str
    method: str
    scoring: str
    model: str
    script: Path
    argv: tuple[str, ...]
    folder: Path

    def command(self, python: str | None = None) -> list[str]:
        return [python or sys.executable, str(self.script), *self.argv]


def _closest(word: str, known: Sequence[str]) -> str:
    near = difflib.get_close_matches(word, known, n=1)
    return f" (did you mean {near[0]!r}?)" if near else f" (one of {', '.join(known)})"


def _check_keys(mapping: dict, known: Sequence[str], where: str) -> None:
    if not isinstance(mapping, dict):
        raise IpoError(f"{where} must be a mapping, got {type(mapping).__name__}")
    for key in mapping:
        if key not in known:
            raise IpoError(f"{where}: unknown key {key!r}{_closest(str(key), known)}")


def as_flags(settings: dict, where: str) -> list[str]:
    """A mapping of settings as flags: ``limit: 10`` -> --limit 10; true -> --flag; false/null -> nothing;
    a list -> --flag v1 v2 (e.g. RM-Bench's several --dataset files)."""
    if not isinstance(settings, dict):
        raise IpoError(f"{where} must be a mapping of flag names (without --) to values")
    flags = []
    for key, value in settings.items():
        flag = f"--{key}"
        if flag in SET_PER_POINT:
            raise IpoError(f"{where}: {flag} is set per point by the grid")
        if value is True:
            flags.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, list):
            flags += [flag, *map(str, value)]
        else:
            flags += [flag, str(value)]
    return flags


def parse_judge(entry: str, scorings: Sequence[str], where: str) -> list[tuple[str, str]]:
    """'ipo' -> [(ipo, s) for s in scorings]; 'ipo:chat' -> [(ipo, chat)]."""
    method, _, scoring = str(entry).partition(":")
    if method not in JUDGE_SCRIPTS:
        raise IpoError(f"{where}: unknown judge {method!r}{_closest(method, list(JUDGE_SCRIPTS))}")
    chosen = [scoring] if scoring else list(scorings)
    for value in chosen:
        if value not in SCORINGS:
            raise IpoError(f"{where}: unknown scoring {value!r} of judge {method!r} (one of {', '.join(SCORINGS)})")
    return [(method, value) for value in chosen]


def resolve_model(model: str) -> str:
    """`smollm2` -> the embedded SmolLM2-135M-Instruct's folder (built once); anything else as given."""
    return str(smollm2_dir()) if model == "smollm2" else str(model)


def _as_list(value, where: str) -> list:
    if value is None:
        return []
    if isinstance(value, (str, dict)):
        return [value]
    if not isinstance(value, list):
        raise IpoError(f"{where} must be a list")
    return value


def load_grid(path: str | Path) -> dict:
    try:
        grid = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise IpoError(f"cannot read the grid {path}: {error.strerror or error}")
    except yaml.YAMLError as error:
        raise IpoError(f"{path} is not valid YAML: {str(error).splitlines()[0]}")
    _check_keys(grid, GRID_KEYS, str(path))
    for key in ("models", "judges", "benchmarks"):
        if not grid.get(key) and key != "judges":
            raise IpoError(f"{path}: `{key}:` is missing or empty")
    return grid


def expand(
    grid: dict,
    source: str = "grid",
    output_dir: str | None = None,
    name: str | None = None,
    extra: Sequence[str] = (),
) -> tuple[Path, list[Point]]:
    """The grid's folder and its points, in the order models x benchmarks x judges x scorings.

    ``output_dir`` / ``name`` override the file's; ``extra``: flags given to every point after the file's
    settings (the command line's), so they win where a script reads a flag twice."""
    for flag in extra:
        if flag.split("=", 1)[0] in SET_PER_POINT:
            raise IpoError(f"{flag.split('=', 1)[0]} is set per point by the grid")
    name = validate_name(name or grid.get("name") or Path(source).stem, "grid name")
    root = Path(output_dir or grid.get("output_dir") or DEFAULT_OUTPUT_DIR) / name
    scorings = _as_list(grid.get("scoring"), f"{source}: scoring") or ["upstream"]
    data = grid.get("data") or {}
    _check_keys(data, sorted({key for _, key, _ in BENCHMARKS.values()}), f"{source}: data")
    shared = as_flags(grid.get("settings") or {}, f"{source}: settings")
    per_judge = grid.get("judge_settings") or {}
    _check_keys(per_judge, list(JUDGE_SCRIPTS), f"{source}: judge_settings")
    points, seen = [], {}
    for entry in _as_list(grid["models"], f"{source}: models"):
        entry = entry if isinstance(entry, dict) else {"model": entry}
        _check_keys(entry, MODEL_KEYS, f"{source}: models entry {entry}")
        if not entry.get("model"):
            raise IpoError(f"{source}: models entry {entry} has no `model:`")
        model = resolve_model(entry["model"])
        label = validate_name(str(entry.get("name") or model_short_name(model)), "model name")
        judges_of_model = _as_list(entry.get("judges") or grid.get("judges"), f"{source}: judges")
        if not judges_of_model:
            raise IpoError(f"{source}: no judges for {entry['model']} (`judges:` of the grid or of the model)")
        judges = [pair for judge in judges_of_model for pair in parse_judge(judge, scorings, f"{source}: judges")]
        model_flags = as_flags(entry.get("settings") or {}, f"{source}: settings of {entry['model']}")
        for benchmark in _as_list(grid["benchmarks"], f"{source}: benchmarks"):
            if benchmark not in BENCHMARKS:
                raise IpoError(f"{source}: unknown benchmark {benchmark!r}{_closest(str(benchmark), list(BENCHMARKS))}")
            folder, data_key, benchmark_flags = BENCHMARKS[benchmark]
            dataset = _as_list(data.get(data_key), f"{source}: data.{data_key}")
            for method, scoring in judges:
                script, model_flag = JUDGE_SCRIPTS[method]
                point_name = validate_name(f"{benchmark}__{label}__{method}-{scoring}", "point name")
                if point_name in seen:
                    raise IpoError(f"{source}: two points named {point_name}; give one model a `name:`")
                seen[point_name] = True
                argv = [model_flag, model, "--prompt_format", scoring, *benchmark_flags]
                argv += ["--dataset", *map(str, dataset)] if dataset else []
                argv += shared + as_flags(per_judge.get(method) or {}, f"{source}: judge_settings.{method}")
                argv += model_flags + list(extra) + ["--output_dir", str(root), "--run_name", point_name]
                points.append(
                    Point(
                        point_name,
                        benchmark,
                        method,
                        scoring,
                        model,
                        SCRIPTS / folder / script,
                        tuple(argv),
                        root / point_name,
                    )
                )
    return root, points


def _load_script(path: Path):
    spec = importlib.util.spec_from_file_location("ipo_grid_" + "_".join(path.parts[-2:]).replace(".", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_points(points: Sequence[Point]) -> dict[str, int | None]:
    """Parse every point's arguments with its script's own ``parse_args`` (the parser prints its one-line
    error); IpoError naming the first point it rejects. Returns each point's --limit as parsed."""
    modules, limits = {}, {}
    for point in points:
        if point.script not in modules:
            modules[point.script] = _load_script(point.script)
        argv0, sys.argv[0] = sys.argv[0], str(point.script)  # its parser's errors start with its own name
        try:
            parsed = modules[point.script].parse_args(list(point.argv))
        except SystemExit as exit:
            raise IpoError(
                f"point {point.name}: {point.script.relative_to(REPO)} rejects its arguments (exit {exit.code}; see above)"
            )
        finally:
            sys.argv[0] = argv0
        limits[point.name] = getattr(parsed, "limit", None)
    return limits


def point_done(point: Point, limit: int | None) -> bool:
    """True when the point's run folder holds finished metrics for exactly this point: metrics.json with a
    coverage of this --limit (all of the data when there is none), no failed API request left, written by a
    run started with these arguments (config.json's command), so a changed setting runs again."""
    try:
        metrics = json.loads((point.folder / "metrics.json").read_text(encoding="utf-8"))
        config = json.loads((point.folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    coverage = metrics.get("coverage") if isinstance(metrics, dict) else None
    if not isinstance(coverage, dict) or coverage.get("limit") != limit:
        return False
    if limit is None and not coverage.get("complete"):
        return False
    if metrics.get("n_failed"):
        return False
    return list(config.get("command") or [])[1:] == list(point.argv)


def plan_file(root: Path, points: Sequence[Point], status: dict[str, str]) -> Path:
    """<root>/grid.json: every point's script, arguments, folder and status (for readers and collectors)."""
    rows = [
        {
            "point": p.name,
            "benchmark": p.benchmark,
            "method": p.method,
            "scoring": p.scoring,
            "model": p.model,
            "script": str(p.script.relative_to(REPO)),
            "argv": list(p.argv),
            "folder": str(p.folder),
            "status": status.get(p.name, "not run"),
        }
        for p in points
    ]
    atomic_write_json(root / "grid.json", rows)
    return root / "grid.json"


def run_locally(points: Sequence[Point], done: dict[str, bool]) -> dict[str, str]:
    """Each unfinished point as a subprocess of this interpreter, one after another; a failure is logged
    and the grid goes on. Returns point -> done / skipped (done before) / failed (exit N)."""
    status = {}
    for number, point in enumerate(points, start=1):
        if done.get(point.name):
            logger.info("[%d/%d] %s: already done, skipped", number, len(points), point.name)
            status[point.name] = "skipped (done before)"
            continue
        logger.info("[%d/%d] %s", number, len(points), point.name)
        completed = subprocess.run(point.command())
        status[point.name] = "done" if completed.returncode == 0 else f"failed (exit {completed.returncode})"
        if completed.returncode != 0:
            logger.error("%s failed with exit %d; the grid goes on", point.name, completed.returncode)
    return status
