"""Run a grid of judges: models x judges x benchmarks from one YAML file, locally or as a SLURM array.

Each point is one run of a Preference_Comparison script (IPO Yes/No in either scoring, the 5-point
Self-Rewarding judge, a reward model, the API judges) on RewardBench or RM-Bench, in its own resumable run
folder <output_dir>/<grid name>/<point>/. Every point's arguments are checked by its script's parser before
anything runs; a point whose folder already holds its finished metrics is skipped. Flags after the grid's own
(e.g. --limit 10, --batch_size 8, --dtype bfloat16) go to every point.

    # offline, on the embedded SmolLM2-135M-Instruct and the project's sample pairs (both scorings)
    python Preference_Comparison/grid.py --config recipes/paper/demo.yaml

    # the paper's RewardBench table: one run after another, or one SLURM task per point
    python Preference_Comparison/grid.py --config recipes/paper/rewardbench.yaml
    python Preference_Comparison/grid.py --config recipes/paper/rewardbench.yaml --slurm --partition gpu --submit

    # the table beside the published numbers, once the points are done
    python Preference_Comparison/collect.py outputs/grids/paper-rewardbench --output_dir outputs/tables

grid.json in the grid's folder lists every point with its command and status; --slurm writes grid.sbatch
there (logs in logs/), recording this interpreter and its conda/virtualenv activation for the tasks.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from ipo import IpoError, cli, grid, slurm
from ipo.cli.slurm import add_slurm_args, slurm_options
from ipo.runs import atomic_write_text, check_output_dir

logger = cli.logger
COLLECT = os.path.relpath(Path(__file__).resolve().parent / "collect.py")  # printed for the user to run next


def parse_args(argv=None):
    parser = cli.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="Any other flag is passed to every point's script."
    )
    parser.add_argument("--config", required=True, help="the grid's YAML file (recipes/paper/*.yaml)")
    parser.add_argument(
        "--output_dir",
        default=None,
        help=f"parent folder of the grid (default: the file's, else {grid.DEFAULT_OUTPUT_DIR})",
    )
    parser.add_argument(
        "--name", default=None, help="the grid's folder name (default: the file's `name:`, else its stem)"
    )
    parser.add_argument("--dry_run", action="store_true", help="print the commands (or the SLURM script); run nothing")
    add_slurm_args(parser, "<grid folder>/grid.sbatch")
    parser.add_argument("--log_level", default="info", choices=["debug", "info", "warning", "error"])
    args, passthrough = parser.parse_known_args(argv)
    if args.submit and not args.slurm:
        parser.error("--submit goes with --slurm")
    return args, passthrough


def main(argv=None) -> int:
    args, passthrough = parse_args(argv)
    cli.setup_logging(args.log_level)
    root, points = grid.expand(grid.load_grid(args.config), args.config, args.output_dir, args.name, passthrough)
    if not args.dry_run:
        check_output_dir(root, "the grid folder")  # one line, before any point runs
    options = slurm_options(args, job_name=root.name, log_dir=str(root / "logs")) if args.slurm else None
    limits = grid.check_points(points)  # every point's own parser, before anything runs
    done = {p.name: grid.point_done(p, limits[p.name]) for p in points}
    todo = [p for p in points if not done[p.name]]
    logger.info("%d points in %s, %d already done", len(points), root, len(points) - len(todo))

    if args.slurm:
        tasks = [slurm.Task(p.name, str(p.script), p.argv) for p in todo]
        if not tasks:
            print(f"all {len(points)} points of {root} are done; nothing to submit")
            return 0
        header = f"{len(tasks)} points of {args.config}, written by Preference_Comparison/grid.py"
        script = slurm.array_script(
            options, slurm.submit_environment(), tasks, args.launcher, args.accelerate_config, header
        )
        if args.dry_run:
            print(script)
            return 0
        (root / "logs").mkdir(parents=True, exist_ok=True)
        grid.plan_file(root, points, {p.name: "done" if done[p.name] else "submitted" for p in points})
        path = root / "grid.sbatch"
        atomic_write_text(path, script)
        if args.submit:
            print(slurm.submit(path))
        else:
            print(f"sbatch {path}")
        print(f"once the tasks are done: python {COLLECT} {root} --output_dir {root / 'tables'}")
        return 0

    if args.dry_run:
        for point in todo:
            print(shlex.join(point.command()))
        return 0
    root.mkdir(parents=True, exist_ok=True)
    status = grid.run_locally(points, done)
    grid.plan_file(root, points, status)
    for point in points:
        print(f"{status[point.name]:>24}  {point.folder}")
    print(f"collect: python {COLLECT} {root} --output_dir {root / 'tables'}")
    failed = [name for name, state in status.items() if state.startswith("failed")]
    if failed:
        raise IpoError(f"{len(failed)} of {len(points)} points failed: {', '.join(failed)}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
