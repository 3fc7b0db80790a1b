"""The benchmarks layer: the paper's preference-comparison benchmarks and downstream checks, from data to results.

Each benchmark loads its data into ipo.data.Example records, turns a judge's scores into predictions.jsonl
lines, computes its metrics from those lines alone (so a resumed run ends with the numbers of an
uninterrupted one), and writes all of its outputs with ONE writer, failures of an API judge included.

May import: plumbing (ipo, ipo.runs, ipo.data, ipo.prompts, ipo.report, ...) and ipo.judges. Never
ipo.training (a sibling), ipo.selfimprove or ipo.cli; never argparse (the scripts and ipo.cli parse flags).

Modules:
    rewardbench      RewardBench: loading, judge questions per subset, metrics, write_outputs
    rmbench          RM-Bench: loading both formats, prediction records, results.md, write_outputs
    rmbench_metrics  RM-Bench's official metric (3x3 style matrix, hard/normal/easy), pure; split out of
                     rmbench to keep each module small and the metric readable on its own
    rmbench_api      RM-Bench through the API judges: answer fields of six responses, the pairwise style pairs
    api_failures     what an API judge adds to any benchmark run: failed requests kept, retried, counted, reported
    prompt_search    choosing the RewardBench judge question on a selection split, reported on held-out pairs
    mmlu             seeded evaluation subsets and grading of generated MMLU answers (DPO/Evals)
    collect          run folders of every benchmark into the paper's tables, published values beside
"""
