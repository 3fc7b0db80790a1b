"""Run a recipe's grid (e.g. losses x betas) with DPO/train_preferences.py: locally one after another, or on SLURM.

A recipe (recipes/*.yaml) holds the shared settings and a `sweep:` grid; every point of the grid is one run
of train_preferences.py with its own folder <output_dir>/<sweep_name>/<point>/. Flags after the sweep's
own (e.g. --model_name_or_path, --max_steps) go to every point and override the recipe.

    # the HF study's scan: 3 losses x 10 betas, one run after another (finished points are skipped on re-run)
    python DPO/sweep.py --config recipes/pref_align_scan/zephyr.yaml

    # the same as a SLURM array job: one task per unfinished point, in this environment (its interpreter and
    # conda/venv activation), requeued before its time limit and resuming its checkpoints
    python DPO/sweep.py --config recipes/pref_align_scan/zephyr.yaml --slurm --submit \\
        --accelerate_config recipes/accelerate_configs/zero3.yaml --gpus_per_task 8 --mem 512G --time 2-00:00:00
    python DPO/sweep.py --config recipes/pref_align_scan/zephyr.yaml --summary_only   # once the jobs are done

    # offline smoke test: a 2 x 2 grid on the embedded SmolLM2 (--dry_run prints the commands); my_grid.yaml
    # holds e.g. `dataset: outputs/demo-pairs/round_1/pairs.jsonl` (DPO/train_preferences.py's docstring
    # makes it), `per_device_train_batch_size: 2`, `warmup_ratio: 0` and
    # `sweep: {loss_type: [sigmoid, ipo], beta: [0.1, 0.5]}`
    python DPO/sweep.py --config my_grid.yaml --model_name_or_path "$(python -m ipo.assets smollm2)" --max_steps 1

sweep_summary.md and sweep_summary.json in <output_dir>/<sweep_name>/ list every point with its final loss,
reward margin, accuracy and status; sweep_summary.png plots final loss and reward margin vs beta, one line per loss.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

from ipo import IpoError, cli, slurm
from ipo.cli.slurm import add_slurm_args, slurm_options
from ipo.cli.training import parse_preference_args
from ipo.report import markdown_table
from ipo.runs import atomic_write_json, atomic_write_text, validate_name
from ipo.training.figures import sweep_figure
from ipo.training.recipes import expand_grid, load_recipe

logger = cli.logger

HERE = Path(__file__).resolve().parent
TRAIN_SCRIPT = HERE / "train_preferences.py"
SUMMARY_FILE = "train_summary.json"  # written by train_preferences.py in each point's folder


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    parser = cli.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="Any other flag is passed to every point's train_preferences.py."
    )
    parser.add_argument("--config", required=True, help="the recipe with a `sweep:` grid (recipes/*.yaml)")
    parser.add_argument(
        "--output_dir",
        default=None,
        help="parent folder of the sweep (default: the recipe's output_dir, else outputs/sweeps)",
    )
    parser.add_argument("--sweep_name", default=None, help="the sweep's folder name (default: the recipe's file name)")
    parser.add_argument("--dry_run", action="store_true", help="print the commands (or the SLURM script); run nothing")
    parser.add_argument(
        "--summary_only",
        action="store_true",
        help="only (re)build the summary table from the points' folders (after a SLURM sweep)",
    )
    add_slurm_args(parser, "<sweep folder>/sweep.sbatch", launcher="accelerate")
    parser.add_argument("--log_level", default="info", choices=["debug", "info", "warning", "error"])
    args, passthrough = parser.parse_known_args(argv)
    if args.submit and not args.slurm:
        parser.error("--submit goes with --slurm")
    for flag in ("--output_dir", "--run_name", "--config"):
        if any(item == flag or item.startswith(flag + "=") for item in passthrough):
            parser.error(f"{flag} is set per point by the sweep")
    return args, passthrough


def point_flags(point: dict, grid: dict) -> list[str]:
    """The grid values of one point as command-line flags (the recipe supplies everything else)."""
    flags = []
    for key in grid:
        value = point[key]
        if isinstance(value, bool):
            flags += [f"--{key}"] if value else []  # a grid over a switch: present or absent
        else:
            flags += [f"--{key}", str(value)]
    return flags


def plan(args, passthrough: list[str]) -> tuple[Path, list[dict]]:
    """The sweep folder and, per point, its name, settings, folder and train_preferences.py arguments."""
    settings, grid = load_recipe(args.config)
    if not grid:
        raise IpoError(f"{args.config} has no `sweep:` grid; train a single run with DPO/train_preferences.py")
    name = validate_name(args.sweep_name, "--sweep_name") if args.sweep_name is not None else Path(args.config).stem
    root = Path(args.output_dir or settings.get("output_dir") or "outputs/sweeps") / name
    points = []
    for name, point in expand_grid(settings, grid):
        argv = [
            "--config",
            str(args.config),
            *point_flags(point, grid),
            *passthrough,
            "--output_dir",
            str(root),
            "--run_name",
            name,
        ]
        argv0, sys.argv[0] = sys.argv[0], str(TRAIN_SCRIPT)  # its parser's errors start with its own name
        try:
            parsed = parse_preference_args(argv)  # train_preferences.py's parser: a bad flag stops the sweep here
        except SystemExit as exit:
            raise IpoError(f"point {name}: train_preferences.py rejects its arguments (exit {exit.code}; see above)")
        finally:
            sys.argv[0] = argv0
        points.append(
            {
                "name": name,
                "settings": point,
                "grid": {k: point[k] for k in grid},
                "folder": root / name,
                "argv": argv,
                "model": parsed.model_name,
            }
        )
    return root, points


def run_locally(points: list[dict]) -> dict[str, str]:
    """Each unfinished point as a subprocess, one after another. Returns point -> status."""
    status = {}
    for number, point in enumerate(points, start=1):
        if (point["folder"] / SUMMARY_FILE).is_file():
            logger.info("[%d/%d] %s: already done", number, len(points), point["name"])
            status[point["name"]] = "done"
            continue
        logger.info("[%d/%d] %s", number, len(points), point["name"])
        completed = subprocess.run([sys.executable, str(TRAIN_SCRIPT), *point["argv"]])
        status[point["name"]] = "done" if completed.returncode == 0 else f"failed (exit {completed.returncode})"
        if completed.returncode != 0:
            logger.error("%s failed with exit %d; the sweep goes on", point["name"], completed.returncode)
    return status


def slurm_script(args, root: Path, points: list[dict]) -> str:
    """The sbatch array script (ipo.slurm): task i trains point i through accelerate launch in the environment
    this command runs in, on a port of its own, and is requeued before its time limit to resume its checkpoints."""
    options = slurm_options(args, job_name=root.name, log_dir=str(root / "logs"))
    tasks = [slurm.Task(point["name"], str(TRAIN_SCRIPT), tuple(point["argv"])) for point in points]
    header = (
        f"{len(points)} points of {args.config}, written by DPO/sweep.py; submit with: sbatch {root / 'sweep.sbatch'}"
    )
    return slurm.array_script(options, slurm.submit_environment(), tasks, args.launcher, args.accelerate_config, header)


def summarize(root: Path, points: list[dict], status: dict[str, str]) -> list[dict]:
    """One row per point from its train_summary.json; writes sweep_summary.json and sweep_summary.md."""
    rows = []
    for point in points:
        summary_file = point["folder"] / SUMMARY_FILE
        summary = json.loads(summary_file.read_text(encoding="utf-8")) if summary_file.is_file() else {}
        state = status.get(point["name"]) or ("done" if summary else "not run")
        rows.append(
            {
                "point": point["name"],
                **point["grid"],
                "loss_type": point["settings"].get("loss_type", "sigmoid"),
                "beta": point["settings"].get("beta", 0.1),
                "final_loss": summary.get("final_loss"),
                "reward_margin": summary.get("reward_margin"),
                "reward_accuracy": summary.get("reward_accuracy"),
                "steps": summary.get("steps"),
                "skipped_rpo_batches": summary.get("skipped_rpo_batches"),
                "status": state,
            }
        )
    atomic_write_json(root / "sweep_summary.json", rows)
    columns = [
        "point",
        "loss_type",
        "beta",
        *[k for k in points[0]["grid"] if k not in ("loss_type", "beta")],
        "final_loss",
        "reward_margin",
        "reward_accuracy",
        "steps",
        "status",
    ]
    table = [[_cell(row[c]) for c in columns] for row in rows]
    markdown = f"# Sweep {root.name}\n\n" + markdown_table(columns, table) + "\n"
    atomic_write_text(root / "sweep_summary.md", markdown)
    models = ", ".join(dict.fromkeys(cli.model_short_name(p["model"]) for p in points if p.get("model")))
    title = f"sweep {root.name}" + (f": {models}" if models else "")
    sweep_figure(rows, root / "sweep_summary.png", title)  # final loss and reward margin vs beta, per loss
    return rows


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def main(argv=None) -> int:
    args, passthrough = parse_args(argv)
    cli.setup_logging(args.log_level)
    root, points = plan(args, passthrough)
    logger.info("%d points in %s", len(points), root)
    if args.summary_only:
        rows = summarize(root, points, {})
        print((root / "sweep_summary.md").read_text(encoding="utf-8"))
        return 0 if all(row["status"] == "done" for row in rows) else 1
    if args.slurm:
        todo = [point for point in points if not (point["folder"] / SUMMARY_FILE).is_file()]
        if not todo:
            print(f"all {len(points)} points of {root} are done; nothing to submit")
            return 0
        script = slurm_script(args, root, todo)
        if args.dry_run:
            print(script)
            return 0
        atomic_write_text(root / "sweep.sbatch", script)
        (root / "logs").mkdir(parents=True, exist_ok=True)
        print(slurm.submit(root / "sweep.sbatch") if args.submit else f"sbatch {root / 'sweep.sbatch'}")
        print(f"once the tasks are done: python DPO/sweep.py --config {args.config} --summary_only")
        return 0
    if args.dry_run:
        for point in points:
            print(shlex.join([sys.executable, str(TRAIN_SCRIPT), *point["argv"]]))
        return 0
    status = run_locally(points)
    summarize(root, points, status)
    print((root / "sweep_summary.md").read_text(encoding="utf-8"))
    failed = [name for name, state in status.items() if state != "done"]
    if failed:
        raise IpoError(f"{len(failed)} of {len(points)} points failed: {', '.join(failed)}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
