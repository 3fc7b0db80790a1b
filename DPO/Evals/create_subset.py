"""Draw a seeded random subset of a dataset split (upstream's DPO/Evals/create_subset.py, with arguments).

Upstream hard-coded its dataset, size (500) and token, drew the rows with an unseeded np.random.choice and
always uploaded. Here everything is an argument, the draw is seeded, the subset is written locally, and it
is uploaded only with --push_to_hub:

    python DPO/Evals/create_subset.py --dataset_name cais/mmlu --config_name all --split test --num_samples 500

    python DPO/Evals/create_subset.py --dataset_name my_mmlu.jsonl --num_samples 50 --output mmlu_50.jsonl

Each row gets upstream's extra column ``source_config``. The rows keep the order in which they were drawn.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ipo import cli, hub
from ipo.benchmarks.mmlu import seeded_subset_indices
from ipo.data import read_records
from ipo.runs import atomic_write_jsonl

logger = cli.logger


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_name", required=True, help="Hub dataset id or local json/jsonl/parquet file")
    parser.add_argument(
        "--config_name",
        default="default",
        help="Hub dataset configuration (upstream: 'default'); ignored for local files",
    )
    parser.add_argument("--split", default="test", help="split to sample from (upstream: test)")
    parser.add_argument("--num_samples", type=int, default=500, help="rows in the subset (upstream: 500)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the draw (upstream: unseeded)")
    parser.add_argument(
        "--output", default=None, help="local JSONL file (default: outputs/<name>_sampled_<num_samples>.jsonl)"
    )
    parser.add_argument("--push_to_hub", action="store_true", help="also upload the subset as a Hub dataset")
    parser.add_argument(
        "--new_dataset_name", default=None, help="Hub dataset name (default: <name>_sampled_<num_samples>, as upstream)"
    )
    parser.add_argument("--organization", default=None, help="Hub namespace (default: your account)")
    parser.add_argument("--public", action="store_true", help="make the uploaded dataset public (default private)")
    parser.add_argument("--log_level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    cli.check_positive(parser, args, "num_samples")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.log_level)
    rows = read_records(args.dataset_name, args.split, config=args.config_name)
    indices = seeded_subset_indices(len(rows), args.num_samples, args.seed)
    subset = [{**rows[i], "source_config": args.config_name} for i in indices]
    base_name = Path(args.dataset_name).stem if Path(args.dataset_name).suffix else args.dataset_name.split("/")[-1]
    name = f"{base_name}_sampled_{args.num_samples}"
    output = Path(args.output or Path("outputs") / f"{name}.jsonl")
    atomic_write_jsonl(output, subset)
    logger.info("%d of %d rows (seed %d) -> %s", len(subset), len(rows), args.seed, output)
    if args.push_to_hub:
        hub.push_records(subset, hub.repo_id(args.organization, args.new_dataset_name or name), private=not args.public)
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
