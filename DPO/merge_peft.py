"""Merge a LoRA adapter into its base model, in a separate folder, with the tokenizer (upstream's merge_peft.py).

Upstream merged into the fp16 base and saved the merged weights into the adapter's own folder (so the
folder became both), never saved the tokenizer, and pushed on --push. Here the merged model goes to its
own folder with the tokenizer, and nothing is uploaded without --push. Upstream's command still works:

    python DPO/merge_peft.py --model_dir outputs/dpo-run/round_1/adapter --mode merge --save

    # and to upload the merged model (token from HF_TOKEN or `hf auth login`):
    python DPO/merge_peft.py --model_dir outputs/dpo-run/round_1/adapter --mode merge --save --push --hf_model_id U/name

--mode peft uploads the adapter itself (with --push) and merges nothing. The merge runs in float32 and the
model is saved in --dtype (auto: the base checkpoint's dtype, read from its config.json, also for a Hub id). An
--output_dir that contains the adapter folder (e.g. the adapter's run folder) or lies inside it is refused, so
--overwrite can never delete the adapter; the leftovers of a killed merge are removed when it is run again.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ipo import IpoError, cli, hub
from ipo.runs import check_output_dir, lock_folder
from ipo.training.merge import check_merge_output, merge_adapter, read_adapter_config

logger = cli.logger


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True, help="the adapter folder (adapter_config.json inside)")
    parser.add_argument(
        "--mode",
        choices=["merge", "peft"],
        default="merge",
        help="merge: write base + adapter as one model; peft: work on the adapter as is "
        "(upstream's default was peft, which only uploaded)",
    )
    parser.add_argument(
        "--save",
        action="store_true",
        help="upstream's flag to keep the merged weights; merge mode always saves them, to --output_dir",
    )
    parser.add_argument(
        "--output_dir",
        default=None,
        help="where the merged model goes (default: <model_dir>-merged next to the adapter); never the adapter folder",
    )
    parser.add_argument(
        "--base_model", default=None, help="base model folder or Hub id (default: the one named in adapter_config.json)"
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="dtype of the merged weights; auto = the base checkpoint's (upstream: float16)",
    )
    parser.add_argument("--push", action="store_true", help="upload to the Hub (opt-in)")
    parser.add_argument("--hf_model_id", default=None, help="Hub repo for --push, 'user/name' or 'name'")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing merged folder")
    parser.add_argument("--log_level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    if args.push and not args.hf_model_id:
        parser.error("--push needs --hf_model_id")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.log_level)
    adapter_dir = Path(args.model_dir)
    adapter_config = read_adapter_config(adapter_dir)  # one-line error when the folder is not an adapter
    repo = hub.model_repo(args.hf_model_id) if args.push else None  # resolved before any work: fails early
    if args.mode == "peft":
        logger.info("adapter on %s: %s", adapter_config.get("base_model_name_or_path"), adapter_dir)
        if repo:
            hub.push_model(adapter_dir, repo, what="LoRA adapter")
        else:
            logger.info("--mode peft without --push: nothing to do")
        return 0
    ###############
    # Every check before the base model loads: the output folder apart from the adapter (and its run), writable,
    # not in use by another merge or run (the lock on the folder it is written into), not there unless --overwrite
    ###############
    output_dir = Path(args.output_dir) if args.output_dir else adapter_dir.with_name(adapter_dir.name + "-merged")
    check_merge_output(adapter_dir, output_dir)
    check_output_dir(output_dir)
    if output_dir.exists() and not args.overwrite:
        raise IpoError(f"{output_dir} exists; pass --overwrite to replace it, or another --output_dir")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_folder(output_dir.parent)  # the adapter's run folder by default: no run or other merge writes there now
    merge_adapter(adapter_dir, output_dir, base_model=args.base_model, dtype=args.dtype)
    print(output_dir)
    if repo:
        hub.push_model(output_dir, repo, what="merged model")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
