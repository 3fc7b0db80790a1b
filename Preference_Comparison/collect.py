"""Collect run folders into the paper's tables, the published value beside each reproduced one.

Give run folders or any folders above them (searched recursively for metrics.json): RewardBench and
RM-Bench runs (local or API judges), self-improvement runs (DPO/ours.py, DPO/self_reward.py) and downstream
runs (DPO/Evals/downstream.py). Writes paper_tables.md, paper_tables.csv and paper_comparison.png:

    python Preference_Comparison/collect.py outputs --output_dir outputs/paper_tables

Every row of the paper's tables is shown (empty reproduced cells where no run matches it yet), plus rows
for the models and methods the paper lacks; a run that does not cover the paper's data (--limit, the demo
file, the filtered split) is marked by its coverage and not compared.
"""

from __future__ import annotations

import sys

from ipo import cli
from ipo.benchmarks.collect import collect, markdown
from ipo.runs import check_output_dir


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run folders, or folders holding them at any depth")
    parser.add_argument(
        "--output_dir",
        default="paper_tables",
        help="folder for paper_tables.md, paper_tables.csv and paper_comparison.png (created if missing)",
    )
    parser.add_argument("--log_level", default="info", choices=["debug", "info", "warning", "error"])
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.log_level)
    check_output_dir(args.output_dir)
    print(markdown(collect(args.paths, args.output_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
