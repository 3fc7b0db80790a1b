"""The SLURM flags shared by Preference_Comparison/grid.py and DPO/sweep.py, into ipo.slurm.SlurmOptions."""

from __future__ import annotations

import argparse

from ipo.slurm import LAUNCHERS, SlurmOptions


def add_slurm_args(parser: argparse.ArgumentParser, what: str, launcher: str = "python", gpus: int = 1) -> None:
    """--slurm, --submit and the #SBATCH settings; ``what``: the file --slurm writes (for the group's title)."""
    defaults = SlurmOptions(job_name="x", log_dir=".")
    group = parser.add_argument_group(f"SLURM (--slurm writes {what} instead of running; one array task per point)")
    group.add_argument("--slurm", action="store_true", help="write an sbatch array script, one task per point")
    group.add_argument("--submit", action="store_true", help="with --slurm: also run `sbatch` on the script")
    group.add_argument(
        "--launcher",
        default=launcher,
        choices=list(LAUNCHERS),
        help="how a task runs its script: the recorded interpreter directly, or through `accelerate launch` "
        "(one process per GPU, a --main_process_port of its own)",
    )
    group.add_argument(
        "--accelerate_config",
        default=None,
        help="with --launcher accelerate: `accelerate launch --config_file <this>` (recipes/accelerate_configs/)",
    )
    group.add_argument(
        "--gpus_per_task", type=int, default=gpus, help="GPUs per task (#SBATCH --gpus-per-task); 0 for none"
    )
    group.add_argument("--gres", default=None, help="#SBATCH --gres instead of --gpus-per-task, e.g. gpu:a100:1")
    group.add_argument("--cpus_per_task", type=int, default=defaults.cpus_per_task, help="CPU cores per task")
    group.add_argument("--mem", default=defaults.mem, help="host memory per node (#SBATCH --mem), e.g. 64G")
    group.add_argument(
        "--time", default=defaults.time, help="wall-clock limit per task: HH:MM:SS, D-HH:MM:SS, minutes, ..."
    )
    group.add_argument("--partition", default=None, help="SLURM partition (default: the cluster's)")
    group.add_argument("--account", default=None, help="SLURM account to charge (default: yours)")
    group.add_argument(
        "--signal_seconds",
        type=int,
        default=defaults.signal_seconds,
        help="USR1 this many seconds before the time limit: the task stops, is requeued and resumes its run "
        "folder (#SBATCH --signal=B:USR1@N)",
    )
    group.add_argument("--max_parallel", type=int, default=None, help="at most N tasks at once (--array=0-M%%N)")
    group.add_argument(
        "--sbatch_option",
        action="append",
        default=[],
        help="extra '#SBATCH' line content, repeatable, e.g. --sbatch_option=--qos=high",
    )


def slurm_options(args: argparse.Namespace, job_name: str, log_dir: str) -> SlurmOptions:
    """The flags of add_slurm_args as checked SlurmOptions (IpoError, one line, on a bad value)."""
    return SlurmOptions(
        job_name=job_name,
        log_dir=log_dir,
        time=args.time,
        mem=args.mem,
        cpus_per_task=args.cpus_per_task,
        gpus_per_task=args.gpus_per_task,
        gres=args.gres,
        partition=args.partition,
        account=args.account,
        signal_seconds=args.signal_seconds,
        max_parallel=args.max_parallel,
        extra=tuple(args.sbatch_option),
    )
