"""The self-improvement loop (the paper's second claim): sample, judge yourself, build pairs, DPO, merge.

Each round is a folder of files that the stages hand over; every stage skips the work its file already
holds, so re-running a killed command redoes only what is missing:

    responses.jsonl   prompt, category, N sampled responses          (sample, appended per batch)
    scored.jsonl      the same plus one judge score per response      (score, appended per batch)
                      (the 5-point judge: also its text and parse-failure flags)
    pairs.jsonl       prompt, chosen, rejected, scores, split          (pairs, written at once)
    adapter/          the LoRA adapter and its tokenizer               (train, resumes from checkpoints/)
    merged/           the adapter merged into the base                 (merge, written at once)
    after_*.jsonl     the merged model's samples, judged like before   (after, optional)
    metrics.json      what the round did

Round k samples and judges with the merged model of round k-1 (round 1: the base model). The judge is
pluggable (``JudgeSpec``): the IPO Yes/No judge (DPO/ours.py) or the 5-point Self-Rewarding judge of
ipo/self_reward.py (DPO/self_reward.py); only the scorer, what scored.jsonl keeps and the tie-break rule
change. A response without a score (the 5-point judge's chat-mode parse failure) is never chosen or
rejected; a prompt with fewer than two scored responses gives no pair.

The command-line flags and the run both scripts share are at the end of this module (``add_loop_args``,
``run_from_args``); each stage frees its model before the next loads one (upstream's DPO/self_reward.py
kept the sampling model resident while loading the training model, and ran out of memory).

Modes follow ``prompt_format``:
  upstream  raw instructions for sampling; DPO records ``[INST] x [/INST]`` + response + ``<|eot_id|>``;
            case-sensitive category keys with upstream's fallback to the *code* prompt; every pair kept.
  chat      the chat template for sampling and for the DPO records (conversational rows, the tokenizer's
            EOS); categories normalised and checked; pairs with tied scores or identical texts dropped.
"""

from __future__ import annotations

import logging
import os
import random
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ipo import IpoError
from ipo.data import Example, read_records, require_columns, require_text, row_ids
from ipo.judges.yes_no import DEFAULT_BATCH_SIZE
from ipo.prompts import DPO_CATEGORY_PROMPTS, DPO_FALLBACK_CATEGORY, UPSTREAM_END_MARKER, UPSTREAM_INST_PROMPT
from ipo.runs import RecordLog, atomic_write_json, atomic_write_jsonl, read_jsonl, score_into_log
from ipo.training.dpo import ADAPTER_DIR

logger = logging.getLogger("ipo")

DEFAULT_PROMPTS = "Ayush-Singh/UltraFeedback-1k-Each"  # the paper's prompt pool (4 categories)
DEFAULT_SPLIT = "split_1"
STAGES = ("sample", "score", "pairs", "train", "merge")  # --stop_after choices; "after" always runs last

# chat mode: the prompt pool's four categories, compared lower-case, mapped to upstream's judge keys.
CHAT_CATEGORY_KEYS = {"chat": "chat", "code": "General", "math": "Math", "safety": "Safety"}

TIE_BREAKS = ("generation_order", "judge_text", "random")


# ---------------------------------------------------------------------------------------------------
# Prompts and categories
# ---------------------------------------------------------------------------------------------------
@dataclass
class Prompt:
    id: str | int
    instruction: str
    category: str


def judge_key(category: str, prompt_format: str) -> str:
    """The key of ipo.prompts.DPO_CATEGORY_PROMPTS that judges a response in this category.

    upstream: the category as is (case-sensitive: "chat", "Safety", "Math"); anything else gets the
    "General" key, which upstream filled with the coding prompt. chat: lower-cased and stripped, one of
    chat / code / math / safety, else an error.
    """
    if prompt_format == "upstream":
        return category if category in DPO_CATEGORY_PROMPTS else DPO_FALLBACK_CATEGORY
    key = CHAT_CATEGORY_KEYS.get(str(category).strip().lower())
    if key is None:
        raise IpoError(f"unknown category {category!r}; chat mode knows {', '.join(CHAT_CATEGORY_KEYS)} "
                       "(any case); --prompt_format upstream judges unknown categories with the code prompt")  # fmt: skip
    return key


def load_prompts(source: str, split: str | None, prompt_format: str, max_prompts: int | None = None,
                 require_category: bool = True) -> list[Prompt]:  # fmt: skip
    """Instructions and categories from a Hub dataset split or a local json/jsonl/parquet file.

    ``require_category=False`` (sampling only, no judge) allows a file without a category column.
    """
    rows = read_records(source, split)
    if not rows:
        raise IpoError(f"{source}: no prompts (the file or split is empty)")
    require_columns(rows, ["instruction", "category"] if require_category else ["instruction"], source)
    ids = row_ids(rows, source)
    prompts = []
    for row_id, row in zip(ids, rows):
        instruction = require_text(row["instruction"], source, row_id, "instruction")
        if not instruction.strip():
            raise IpoError(f"{source}: row id {row_id}: empty instruction")
        category = row.get("category", "")
        if prompt_format == "chat" and require_category:
            try:
                judge_key(category, prompt_format)
            except IpoError as err:
                raise IpoError(f"{source}: row id {row_id}: {err}")
        prompts.append(Prompt(row_id, instruction, str(category)))
    if max_prompts is not None:
        prompts = prompts[:max_prompts]
    if prompt_format == "upstream" and require_category:
        fallback = Counter(p.category for p in prompts if p.category not in DPO_CATEGORY_PROMPTS)
        if fallback:
            logger.warning("categories judged with upstream's fallback (the code prompt): %s",
                           ", ".join(f"{c!r} x{n}" for c, n in fallback.most_common()))  # fmt: skip
    return prompts


def held_out_ids(prompt_ids: Sequence, fraction: float, seed: int) -> set[str]:
    """A seeded ``fraction`` of the prompts (at least one, never all) kept out of training.

    Chosen once from the whole prompt list, so the same prompts stay held out in every round.
    """
    if fraction <= 0 or len(prompt_ids) < 2:
        return set()
    count = min(len(prompt_ids) - 1, max(1, round(fraction * len(prompt_ids))))
    return {str(i) for i in random.Random(f"held-out/{seed}").sample([str(i) for i in prompt_ids], count)}


# ---------------------------------------------------------------------------------------------------
# Pair selection (pure)
# ---------------------------------------------------------------------------------------------------
def rank_responses(scores: Sequence[float], tie_break: str = "generation_order",
                   judge_texts: Sequence[str] | None = None, rng: random.Random | None = None) -> list[int]:  # fmt: skip
    """Response indices from best to worst score.

    tie_break:
      generation_order  upstream DPO/ours.py: Python's stable sort(reverse=True), so among equal scores
                        the earlier sample ranks higher (chosen = first max, rejected = last min)
      judge_text        upstream DPO/self_reward.py: it sorted (score, judge output text) tuples in
                        reverse, so equal scores are ordered by the judge's text, reverse-lexicographically
      random            equal scores in an order drawn from ``rng`` (seeded per prompt)
    """
    order = list(range(len(scores)))
    if tie_break == "generation_order":
        return sorted(order, key=lambda i: scores[i], reverse=True)
    if tie_break == "judge_text":
        if judge_texts is None or len(judge_texts) != len(scores):
            raise ValueError("tie_break='judge_text' needs one judge text per score")
        return sorted(order, key=lambda i: (scores[i], judge_texts[i]), reverse=True)
    if tie_break == "random":
        if rng is None:
            raise ValueError("tie_break='random' needs an rng")
        rng.shuffle(order)
        return sorted(order, key=lambda i: scores[i], reverse=True)
    raise ValueError(f"unknown tie_break {tie_break!r}")


def degenerate_reason(responses: Sequence[str], scores: Sequence[float], chosen: int, rejected: int) -> str | None:
    """Why a (chosen, rejected) pair teaches nothing, or None: 'score_tie' or 'same_text'."""
    if scores[chosen] == scores[rejected]:
        return "score_tie"
    if responses[chosen].strip() == responses[rejected].strip():
        return "same_text"
    return None


def build_pairs(scored: Iterable[dict], score_field: str, tie_break: str, drop_degenerate: bool, seed: int,
                test_ids: set[str] = frozenset(), judge_text_field: str | None = None) -> tuple[list[dict], Counter]:  # fmt: skip
    """One pair per scored prompt: chosen = best score, rejected = worst. Returns (pairs, dropped counts).

    A None score (no score could be read) takes no part: the pair is drawn from the other responses, and a
    prompt with fewer than two scored responses gives no pair (dropped as 'too_few_scored').
    """
    pairs, dropped = [], Counter()
    for record in scored:
        scores, responses = record[score_field], record["responses"]
        texts = record.get(judge_text_field) if judge_text_field else None
        candidates = [i for i, score in enumerate(scores) if score is not None]
        if len(candidates) < 2:
            dropped["too_few_scored"] += 1
            continue
        rng = random.Random(f"ties/{seed}/{record['id']}")
        order = rank_responses([scores[i] for i in candidates], tie_break, rng=rng,
                               judge_texts=[texts[i] for i in candidates] if texts is not None else None)  # fmt: skip
        chosen, rejected = candidates[order[0]], candidates[order[-1]]
        reason = degenerate_reason(responses, scores, chosen, rejected)
        if reason and drop_degenerate:
            dropped[reason] += 1
            continue
        pairs.append({
            "id": record["id"], "prompt": record["prompt"], "category": record.get("category"),
            "chosen": responses[chosen], "rejected": responses[rejected],
            "score_chosen": scores[chosen], "score_rejected": scores[rejected],
            "chosen_index": chosen, "rejected_index": rejected, "scores": scores,
            "degenerate": reason, "split": "test" if str(record["id"]) in test_ids else "train",
        })  # fmt: skip
    return pairs, dropped


def dpo_record(pair: dict, prompt_format: str) -> dict:
    """The TRL preference row of a pair.

    upstream: {"prompt": "[INST] x [/INST]", "chosen": response + "<|eot_id|>", ...} for every model, as
    upstream's train_path JSON (built directly, not through its "Assistant:/Response:" string round trip;
    TRL then appends the tokenizer's EOS as well). chat: conversational rows; TRL renders them with the
    chat template and the template closes each turn with the model's own end token.
    """
    if prompt_format == "upstream":
        def with_marker(text):
            return f"{text.strip().split(UPSTREAM_END_MARKER)[0]}{UPSTREAM_END_MARKER}"

        return {"prompt": UPSTREAM_INST_PROMPT.format(instruction=pair["prompt"].strip()),
                "chosen": with_marker(pair["chosen"]), "rejected": with_marker(pair["rejected"])}  # fmt: skip
    return {
        "prompt": [{"role": "user", "content": pair["prompt"]}],
        "chosen": [{"role": "assistant", "content": pair["chosen"]}],
        "rejected": [{"role": "assistant", "content": pair["rejected"]}],
    }


def mapped_record(pair: dict) -> dict:
    """Upstream's intermediate mapped_path row (kept as an artefact only; note its missing space)."""
    return {"chosen": f"Assistant: {pair['prompt']}\n Response:{pair['chosen']}",
            "rejected": f"Assistant:{pair['prompt']}\n Response:{pair['rejected']}"}  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Judges
# ---------------------------------------------------------------------------------------------------
@dataclass
class JudgeSpec:
    """How a round judges its samples. ``build(model, tokenizer)`` returns a scorer with ``.score(examples)``
    yielding lists of (example, scores, extra), like ipo.judges.yes_no.YesNoScorer."""

    name: str
    score_field: str  # the scored.jsonl field the pairs are built from (None: no score, never in a pair)
    tie_break: str  # see rank_responses
    build: Callable
    judge_text_field: str | None = None  # for tie_break="judge_text"
    failure_field: str | None = None  # per-response parse-failure flags, counted in metrics.json
    record_fields: Callable[[list, dict], dict] | None = None  # (scores, extra) -> scored.jsonl fields
    uses_category: bool = True  # the judge's question depends on the prompt's category (the column is required)
    resolved: dict = field(default_factory=dict)  # filled by build(): token ids etc., for config.json

    def fields(self, scores: Sequence, extra: dict) -> dict:
        """What scored.jsonl keeps of one prompt's judgement (default: the scores as floats, and ``extra``)."""
        if self.record_fields is not None:
            return self.record_fields(scores, extra)
        return {self.score_field: [float(s) for s in scores], **extra}


def yes_no_judge_spec(prompt_format: str, scoring: str, max_length: int = 1024, batch_size: int = 8,
                      max_batch_tokens: int | None = None, prefix_sharing: bool = True) -> JudgeSpec:  # fmt: skip
    """The paper's judge: P(Yes) with the category's question (appendix A.1), shared with RewardBench.

    ``max_batch_tokens`` None: the judge's per-device default (ipo.judges.yes_no.default_max_batch_tokens).
    """
    from ipo.judges.yes_no import YesNoJudge, YesNoScorer
    from ipo.prompts import REWARDBENCH_LAYOUT

    spec = JudgeSpec("yes_no", "p_yes", "generation_order" if prompt_format == "upstream" else "random", build=None)

    def build(model, tokenizer):
        judge = YesNoJudge(model, tokenizer, scoring=scoring, max_length=max_length, batch_size=batch_size,
                           max_batch_tokens=max_batch_tokens, prefix_sharing=prefix_sharing)  # fmt: skip
        spec.resolved.update(scoring=scoring, yes_no_tokens=judge.tokens.as_dict())
        return YesNoScorer(judge, REWARDBENCH_LAYOUT,
                           lambda e: DPO_CATEGORY_PROMPTS[judge_key(e.domain, prompt_format)])  # fmt: skip

    spec.build = build
    return spec


def strip_common_prefix(texts: Sequence[str]) -> list[str]:
    """The texts without the start they all share: string order (and equality) is unchanged, and what is
    kept is only the part that can decide it."""
    prefix = os.path.commonprefix(list(texts))
    return [text[len(prefix):] for text in texts]


def self_reward_fields(scores: Sequence, extra: dict) -> dict:
    """scored.jsonl fields of the 5-point judge: score (upstream: 0..5, 0 = nothing parsed; chat: 1..5 or
    None), parse_failed, judge_text (the judge's own generation), truncated, and in upstream mode
    upstream_sort_text: the decoded judge prompt + generation that upstream sorted tied scores by, from
    where this prompt's texts first differ (the shared rubric and instruction are cut; the order is kept)."""
    fields = {"score": list(scores), "parse_failed": list(extra["parse_failed"]),
              "judge_text": list(extra["generated"]), "truncated": extra["truncated"]}  # fmt: skip
    if "decoded" in extra:
        fields["upstream_sort_text"] = strip_common_prefix(extra["decoded"])
    return fields


def self_reward_judge_spec(scoring: str, max_length: int = 2048, max_new_tokens: int = 128,
                           batch_size: int = DEFAULT_BATCH_SIZE, max_batch_tokens: int | None = None) -> JudgeSpec:  # fmt: skip
    """The Self-Rewarding judge (Yuan et al. 2024; ipo/self_reward.py): a greedy justification and a 1-5 score
    under the additive 5-point prompt (appendix A.4) for every response, whatever its category.

    upstream: raw-text prompt, upstream's DPO regexes over prompt + generation, 0 when nothing matches (a
    score like any other); ties are broken as upstream's sort of (score, decoded text) tuples did. chat: the
    chat template, the last "Score: N" of the generation; a failure is None (no candidate); ties at random.
    """
    from ipo.judges.self_reward import SelfRewardScorer

    upstream = scoring == "upstream"  # upstream passed the category to its judge and ignored it
    spec = JudgeSpec("self_reward_5_point", "score", "judge_text" if upstream else "random", build=None,
                     judge_text_field="upstream_sort_text" if upstream else None, failure_field="parse_failed",
                     record_fields=self_reward_fields, uses_category=False)  # fmt: skip

    def build(model, tokenizer):
        scorer = SelfRewardScorer(model, tokenizer, scoring=scoring, max_length=max_length,
                                  max_new_tokens=max_new_tokens, batch_size=batch_size,
                                  max_batch_tokens=max_batch_tokens, regex_set="rewardbench")  # fmt: skip
        spec.resolved.update(scoring=scoring, decoding="greedy", max_length=max_length, max_new_tokens=max_new_tokens,
                             regex_set="rewardbench" if upstream else "last 'Score: N' of the generation",
                             eos_token_ids=sorted(scorer.eos_ids))  # fmt: skip
        return scorer

    spec.build = build
    return spec


# ---------------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------------
class RoundDir:
    """The files of one round (see the module docstring)."""

    def __init__(self, path: Path, index: int):
        self.path, self.index = Path(path), index
        self.responses = self.path / "responses.jsonl"
        self.scored = self.path / "scored.jsonl"
        self.pairs = self.path / "pairs.jsonl"
        self.adapter = self.path / ADAPTER_DIR  # written by ipo.training.dpo.train_dpo
        self.merged = self.path / "merged"
        self.after_responses = self.path / "after_responses.jsonl"
        self.after_scored = self.path / "after_scored.jsonl"
        self.metrics = self.path / "metrics.json"

    @staticmethod
    def complete(log_path: Path, prompts: Sequence[Prompt]) -> bool:
        """Whether a record log holds every prompt."""
        return log_path.is_file() and all(p.id in RecordLog(log_path) for p in prompts)


def _progress(total: int, done: int, desc: str, unit: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc=desc, unit=unit, dynamic_ncols=True,
                mininterval=0.5 if sys.stderr.isatty() else 30)  # fmt: skip


def sample_into_log(sampler, tokenizer, prompts: Sequence[Prompt], log: RecordLog, prompt_format: str,
                    desc: str = "sampling", cut_at: str | None = None) -> int:  # fmt: skip
    """Sample responses for the prompts ``log`` lacks, appending one record per prompt as batches finish.

    ``cut_at``: a literal marker each response is cut at (then stripped), as upstream DPO/self_reward.py did
    with '<|eot_id|>'; this matters once a model trained on upstream's records writes the marker as text.
    """
    from ipo.selfimprove.sampling import encode_prompt

    todo = [p for p in prompts if p.id not in log]
    if not todo:
        logger.info("all %d prompts already sampled in %s", len(prompts), log.path)
        return 0
    by_id = {str(p.id): p for p in todo}
    encoded = [(p.id, encode_prompt(tokenizer, p.instruction, prompt_format)) for p in todo]
    with _progress(len(prompts), len(prompts) - len(todo), desc, "prompt") as bar:
        for batch in sampler.sample(encoded):
            records = []
            for sample in batch:
                prompt = by_id[str(sample.prompt_id)]
                responses = sample.responses
                if cut_at:
                    responses = [r.split(cut_at)[0].strip() if cut_at in r else r for r in responses]
                records.append({"id": prompt.id, "prompt": prompt.instruction, "category": prompt.category,
                                "responses": responses, "n_tokens": sample.n_tokens,
                                "finished": sample.finished})  # fmt: skip
            log.append(records)
            bar.update(len(batch))
    return len(todo)


def score_responses_into_log(scorer, responses: Sequence[dict], log: RecordLog, judge: JudgeSpec,
                             desc: str = "judging") -> int:  # fmt: skip
    """Judge every response of the records ``log`` lacks; one scored record per prompt (``judge.fields``)."""
    by_id = {str(r["id"]): r for r in responses}
    examples = [Example(id=r["id"], prompt=r["prompt"], responses=r["responses"], domain=r["category"])
                for r in responses]  # fmt: skip

    def make_record(example, scores, extra):
        record = by_id[str(example.id)]
        return {"id": record["id"], "prompt": record["prompt"], "category": record["category"],
                "responses": record["responses"], **judge.fields(scores, extra)}  # fmt: skip

    return score_into_log(scorer, examples, log, make_record, unit="prompt", desc=desc)


def write_pairs(round_dir: RoundDir, scored: Sequence[dict], judge: JudgeSpec, prompt_format: str, seed: int,
                test_ids: set[str]) -> dict:  # fmt: skip
    """pairs.jsonl from scored.jsonl (pure selection, written at once). Returns the pair statistics."""
    pairs, dropped = build_pairs(scored, judge.score_field, judge.tie_break, drop_degenerate=prompt_format == "chat",
                                 seed=seed, test_ids=test_ids, judge_text_field=judge.judge_text_field)  # fmt: skip
    n_unscored = sum(score is None for record in scored for score in record[judge.score_field])
    stats = pair_stats(pairs, dropped, len(scored), n_unscored)
    if n_unscored:
        logger.warning("%d of %d responses have no score (the judge's text had none) and are never chosen or "
                       "rejected", n_unscored, sum(len(r["responses"]) for r in scored))  # fmt: skip
    if dropped:
        logger.info("dropped %d of %d pairs: %s", sum(dropped.values()), len(scored),
                    ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(dropped.items())))  # fmt: skip
    kept_degenerate = sum(1 for p in pairs if p["degenerate"])
    if kept_degenerate:
        logger.warning("%d pairs have tied scores or identical texts; kept, as upstream did (chat mode drops them)",
                       kept_degenerate)  # fmt: skip
    if not any(p["split"] == "train" for p in pairs):
        reasons = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(dropped.items())) or "none"
        hint = (f"; {n_unscored} responses had no readable score: the judge model does not follow the rubric "
                f"(see judge_text in {round_dir.scored})" if n_unscored else "")  # fmt: skip
        raise IpoError(f"no training pairs in round {round_dir.index}: {len(scored)} prompts, {len(pairs)} pairs "
                       f"({stats['n_test']} held out), dropped: {reasons}{hint}")  # fmt: skip
    atomic_write_jsonl(round_dir.pairs, pairs)
    return stats


def pair_stats(pairs: Sequence[dict], dropped: Counter, n_prompts: int, n_unscored: int = 0) -> dict:
    """dropped counts prompts without a pair, by reason; n_unscored_responses counts responses without a score."""
    return {"n_prompts": n_prompts, "n_pairs": len(pairs),
            "n_train": sum(p["split"] == "train" for p in pairs), "n_test": sum(p["split"] == "test" for p in pairs),
            "dropped": dict(sorted(dropped.items())), "kept_degenerate": sum(1 for p in pairs if p["degenerate"]),
            "n_unscored_responses": n_unscored}  # fmt: skip


def export_pairs(pairs: Sequence[dict], prompt_format: str, train_path: str | None, test_path: str | None,
                 mapped_path: str | None) -> None:  # fmt: skip
    """Upstream's files, for whoever reads them: the DPO-format train/test JSON lists and the mapped JSON."""
    if train_path:
        atomic_write_json(train_path, [dpo_record(p, prompt_format) for p in pairs if p["split"] == "train"])
    if test_path:
        atomic_write_json(test_path, [dpo_record(p, prompt_format) for p in pairs if p["split"] == "test"])
    if mapped_path:
        atomic_write_json(mapped_path, [mapped_record(p) for p in pairs])


def mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def judge_summary(scored: Sequence[dict], score_field: str, test_ids: set[str], failure_field: str | None = None) -> dict:
    """Mean judge score of all responses, of each prompt's best and worst, overall and per split.

    Responses without a score (None) are left out of the means and counted; with ``failure_field`` the
    parse failures are counted too (upstream mode's 0 is such a failure, and still in the means).
    """
    def part(records):
        scored_lists = [[s for s in r[score_field] if s is not None] for r in records]
        summary = {"n_prompts": len(records), "n_responses": sum(len(r[score_field]) for r in records),
                   "n_unscored": sum(len(r[score_field]) - len(s) for r, s in zip(records, scored_lists)),
                   "mean": mean(s for scores in scored_lists for s in scores),
                   "mean_best": mean(max(scores) for scores in scored_lists if scores),
                   "mean_worst": mean(min(scores) for scores in scored_lists if scores)}  # fmt: skip
        if failure_field:
            summary["n_parse_failures"] = sum(sum(map(bool, r[failure_field])) for r in records)
        return summary

    return {"all": part(scored), "train": part([r for r in scored if str(r["id"]) not in test_ids]),
            "test": part([r for r in scored if str(r["id"]) in test_ids])}  # fmt: skip


def read_pairs(round_dir: RoundDir) -> list[dict]:
    return read_jsonl(round_dir.pairs)


# ---------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------
@dataclass
class LoopSettings:
    model: str  # round 1's policy, judge and reference
    prompt_format: str
    sampling: "object"  # ipo.selfimprove.sampling.SamplingSettings
    training: "object"  # ipo.training.dpo.TrainingOptions
    rounds: int = 1
    stop_after: str | None = None  # one of STAGES
    test_fraction: float = 0.1
    seed: int = 42
    merge_final: bool = False  # merge the last round too (earlier rounds are always merged: the next round needs it)
    judge_after: bool = False
    dtype: str = "auto"
    device: str = "auto"
    quantized: bool = False  # 4-bit for sampling and judging
    trust_remote_code: bool = False
    sample_batch_size: int = 16
    cut_responses_at: str | None = None  # see sample_into_log
    run_name: str = "run"
    train_path: str | None = None
    test_path: str | None = None
    mapped_path: str | None = None


@dataclass
class LoopResult:
    rounds: list[dict]
    stopped_after: str | None
    final_model: str | None  # the last round's merged folder, or its adapter when not merged


def _load(path: str, s: LoopSettings):
    from ipo.modeling import load_model, load_tokenizer

    tokenizer = load_tokenizer(path, trust_remote_code=s.trust_remote_code)
    model, _, _ = load_model(path, dtype=s.dtype, device=s.device, quantized=s.quantized,
                             trust_remote_code=s.trust_remote_code)  # fmt: skip
    return model, tokenizer


def _export_path(path: str | None, round_index: int) -> str | None:
    """Round 1 writes upstream's paths as given; later rounds insert .round<k> before the extension."""
    if not path or round_index == 1:
        return path
    p = Path(path)
    return str(p.with_name(f"{p.stem}.round{round_index}{p.suffix}"))


def run_loop(run_path: Path, prompts: Sequence[Prompt], s: LoopSettings, judge: JudgeSpec,
             on_resolved: Callable[[dict], None] | None = None) -> LoopResult:  # fmt: skip
    """Run (or resume) every round; see the module docstring. ``on_resolved`` receives settings found on
    the way (sampler and judge details) for the run's config.json."""
    from ipo.selfimprove.sampling import Sampler
    from ipo.training.dpo import free_memory, load_peft_model, merge_adapter, train_dpo

    test_ids = held_out_ids([p.id for p in prompts], s.test_fraction, s.seed)
    order = [p.id for p in prompts]
    model_path, results, final = s.model, [], None
    for k in range(1, s.rounds + 1):
        rd = RoundDir(Path(run_path) / f"round_{k}", k)
        rd.path.mkdir(parents=True, exist_ok=True)
        metrics = _read_json(rd.metrics) or {"round": k}
        metrics.update(round=k, policy=model_path, n_prompts=len(prompts), n_held_out=len(test_ids))
        salt = f"round{k}"

        def save():
            atomic_write_json(rd.metrics, metrics)

        def stop(stage):
            save()
            results.append(metrics)
            logger.info("stopped after the %s stage of round %d (--stop_after / --just_sample)", stage, k)
            return LoopResult(results, stage, None)

        ###############
        # Sample and judge with this round's policy (one model load for both)
        ###############
        if not rd.complete(rd.scored, prompts):
            model, tokenizer = _load(model_path, s)
            sampler = Sampler(model, tokenizer, s.sampling, batch_size=s.sample_batch_size, salt=salt)
            sample_into_log(sampler, tokenizer, prompts, RecordLog(rd.responses), s.prompt_format,
                            desc=f"round {k}: sampling", cut_at=s.cut_responses_at)  # fmt: skip
            metrics["sampling"] = sampler.resolved()
            if s.stop_after == "sample":
                return stop("sample")
            responses = RecordLog(rd.responses).ordered(order)
            scorer = judge.build(model, tokenizer)
            score_responses_into_log(scorer, responses, RecordLog(rd.scored), judge, desc=f"round {k}: judging")
            metrics["judge_settings"] = {"name": judge.name, **judge.resolved}
            del model, scorer, sampler
            free_memory()
            save()
        if on_resolved and k == 1 and "judge_settings" in metrics:  # also when resuming a finished stage
            on_resolved({"sampling": metrics["sampling"], "judge": metrics["judge_settings"]})
        if s.stop_after in ("sample", "score"):
            return stop(s.stop_after)
        scored = RecordLog(rd.scored).ordered(order)
        metrics["judge"] = judge_summary(scored, judge.score_field, test_ids, judge.failure_field)
        save()

        ###############
        # Pairs
        ###############
        if not rd.pairs.is_file() or "pairs" not in metrics:  # (re)written whole: selection is pure and seeded
            metrics["pairs"] = write_pairs(rd, scored, judge, s.prompt_format, s.seed, test_ids)
            save()
        pairs = read_pairs(rd)
        export_pairs(pairs, s.prompt_format, _export_path(s.train_path, k), _export_path(s.test_path, k),
                     _export_path(s.mapped_path, k))  # fmt: skip
        if s.stop_after == "pairs":
            return stop("pairs")

        ###############
        # DPO with a LoRA adapter on this round's policy
        ###############
        train = [dpo_record(p, s.prompt_format) for p in pairs if p["split"] == "train"]
        test = [dpo_record(p, s.prompt_format) for p in pairs if p["split"] == "test"]
        options = replace(s.training, run_name=f"{s.run_name}-round{k}")
        result = train_dpo(model_path, train, options, rd.path, eval_records=test or None, device=s.device,
                           extra_config={"round": k, "prompt_format": s.prompt_format})  # fmt: skip
        if not result.skipped:
            metrics["training"] = {key: v for key, v in result.metrics.items() if isinstance(v, (int, float))}
            metrics["training"].update(n_train=result.n_train, n_eval=result.n_eval, resumed_from=result.resumed_from)
        metrics["adapter"] = final = str(rd.adapter)
        save()
        if s.stop_after == "train":
            return stop("train")

        ###############
        # Merge (always before another round; on request after the last)
        ###############
        if k < s.rounds or s.merge_final:
            if not (rd.merged / "config.json").is_file():
                merge_adapter(rd.adapter, rd.merged, dtype=s.dtype)  # returns the merged model: drop it now
                free_memory()
            metrics["merged"] = final = str(rd.merged)
            save()
        if s.stop_after == "merge":
            return stop("merge")

        ###############
        # After: the trained model samples the same prompts (same random streams); this round's judge scores them
        ###############
        if s.judge_after:
            if not rd.complete(rd.after_responses, prompts):
                if (rd.merged / "config.json").is_file():
                    model, tokenizer = _load(str(rd.merged), s)
                else:
                    from ipo.modeling import load_tokenizer

                    model, _ = load_peft_model(rd.adapter, dtype=s.dtype, device=s.device)
                    tokenizer = load_tokenizer(str(rd.adapter))
                sampler = Sampler(model, tokenizer, s.sampling, batch_size=s.sample_batch_size, salt=salt)
                sample_into_log(sampler, tokenizer, prompts, RecordLog(rd.after_responses), s.prompt_format,
                                desc=f"round {k}: sampling after DPO", cut_at=s.cut_responses_at)  # fmt: skip
                del model, sampler
                free_memory()
            if not rd.complete(rd.after_scored, prompts):
                model, tokenizer = _load(model_path, s)
                score_responses_into_log(judge.build(model, tokenizer), RecordLog(rd.after_responses).ordered(order),
                                         RecordLog(rd.after_scored), judge, desc=f"round {k}: judging after DPO")  # fmt: skip
                del model
                free_memory()
            after = judge_summary(RecordLog(rd.after_scored).ordered(order), judge.score_field, test_ids,
                                  judge.failure_field)  # fmt: skip
            metrics["after"] = {"judge": "this round's policy", "before": metrics["judge"], "after": after}
        save()
        results.append(metrics)
        if k < s.rounds:
            model_path = str(rd.merged)
    return LoopResult(results, None, final)


def _read_json(path: Path) -> dict | None:
    import json

    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def loop_markdown(rounds: Sequence[dict], title: str) -> str:
    """results.md: one row per round (pairs, judge scores, training, before/after)."""
    from ipo.report import markdown_table

    def num(value, digits=3):
        return "-" if value is None else f"{value:.{digits}f}"

    failures = any("n_parse_failures" in m.get("judge", {}).get("all", {}) for m in rounds)
    rows = []
    for m in rounds:
        pairs, judge, training = m.get("pairs", {}), m.get("judge", {}).get("all", {}), m.get("training", {})
        after = m.get("after", {})
        dropped = sum(pairs.get("dropped", {}).values()) if pairs else None
        rows.append([
            m["round"], m.get("n_prompts", "-"),
            f"{pairs['n_train']}/{pairs['n_test']}" if pairs else "-", "-" if dropped is None else dropped,
            *([f"{judge['n_parse_failures']}/{judge['n_responses']}" if "n_parse_failures" in judge else "-"]
              if failures else []),
            num(judge.get("mean")), num(judge.get("mean_best")), num(judge.get("mean_worst")),
            num(training.get("train_loss")), num(training.get("eval_rewards/accuracies"), 2),
            num(after.get("before", {}).get("all", {}).get("mean")), num(after.get("after", {}).get("all", {}).get("mean")),
        ])  # fmt: skip
    headers = ["round", "prompts", "pairs train/test", "dropped", *(["parse failures"] if failures else []),
               "judge mean", "best", "worst", "train loss", "eval reward acc", "judge before", "judge after"]  # fmt: skip
    notes = ("Judge scores are the mean P(Yes) (or the scorer's score) over all sampled responses, and over each "
             "prompt's best and worst. 'judge before/after': the round's judge on the responses of the model "
             "before and after this round's DPO, same prompts and random streams.\n")  # fmt: skip
    if failures:
        notes += ("'parse failures': judgements without a readable score, of all responses. Upstream mode scores "
                  "them 0 (as upstream did, a 0 counts in the means and can be a pair's rejected side); chat mode "
                  "leaves them out of the means and of the pairs.\n")  # fmt: skip
    return f"# {title}\n\n" + markdown_table(headers, rows) + "\n" + notes


# ---------------------------------------------------------------------------------------------------
# Command line: what DPO/ours.py and DPO/self_reward.py share (everything but the judge)
# ---------------------------------------------------------------------------------------------------
def add_loop_args(parser, default_model: str, judge_args: Callable | None = None,
                  training_defaults: dict | None = None) -> None:  # fmt: skip
    """The flags of a self-improvement script: model, prompts and pair files, sampling, ``judge_args(parser)``
    (the script's judge group), training (``training_defaults`` override TrainingOptions' values), the
    loop, outputs and the Hub. Upstream's flags are all accepted."""
    import argparse

    from ipo import cli
    from ipo.selfimprove.sampling import add_sampling_args
    from ipo.training.dpo import add_training_args

    cli.add_model_args(parser, default_model=default_model)
    parser.add_argument("--model_id", dest="model_name", default=argparse.SUPPRESS,
                        help="upstream's name for --model_name: policy, judge and DPO reference of round 1")  # fmt: skip
    data = parser.add_argument_group("prompts and pair files")
    data.add_argument("--dataset_name", default=DEFAULT_PROMPTS,
                      help="prompt pool: a Hub dataset or a local json/jsonl/parquet file with a column "
                           "'instruction' and, where the judge's question depends on it, 'category' (chat, code, "
                           "math, safety)")  # fmt: skip
    data.add_argument("--split_name", default=DEFAULT_SPLIT, help="split of a Hub --dataset_name")
    data.add_argument("--max_prompts", type=int, default=None, help="use only the first N prompts (smoke runs)")
    data.add_argument("--test_fraction", type=float, default=0.1,
                      help="seeded fraction of prompts held out of training; their pairs are the eval set "
                           "(upstream evaluated on the training pairs); 0 = no eval set")  # fmt: skip
    data.add_argument("--train_path", default=None,
                      help="also write round 1's training pairs here, as upstream's DPO-format JSON list")
    data.add_argument("--test_path", default=None,
                      help="also write round 1's held-out pairs here (never the training pairs)")
    data.add_argument("--mapped_path", default=None,
                      help="also write upstream's intermediate 'Assistant:/Response:' JSON here")
    data.add_argument("--dataset_id", default=None,
                      help="accepted for upstream's command and unused: upstream read it only in a fallback that "
                           "trained on human UltraFeedback labels; train on a preference dataset with "
                           "DPO/train_preferences.py")  # fmt: skip
    add_sampling_args(parser)
    if judge_args is not None:
        judge_args(parser)
    add_training_args(parser, training_defaults)
    loop = parser.add_argument_group("the loop")
    loop.add_argument("--rounds", type=int, default=1,
                      help="self-improvement rounds; round k samples and judges with round k-1's merged model "
                           "(the paper ran 1)")  # fmt: skip
    loop.add_argument("--stop_after", choices=list(STAGES), default=None,
                      help="run the stages up to this one (those already done are skipped), then stop")
    loop.add_argument("--just_sample", action="store_true",
                      help="upstream's flag: stop once the pairs are written (= --stop_after pairs)")
    loop.add_argument("--judge_after", action="store_true",
                      help="after training, sample the same prompts from the trained model and judge them with "
                           "the round's judge: before/after scores in metrics.json")  # fmt: skip
    cli.add_output_args(parser)
    hub_group = parser.add_argument_group("Hugging Face Hub (nothing is uploaded without --push_to_hub)")
    hub_group.add_argument("--push_to_hub", action="store_true",
                           help="upload the last round's merged model (or its adapter) with its tokenizer")
    hub_group.add_argument("--hub_repo_id", default=None,
                           help="target repo, 'user/name' or 'name' (upstream: dpo-ultrafeedback-<model>)")


def check_loop_args(parser, args) -> None:
    """One-line usage errors for the flags of ``add_loop_args``."""
    from ipo import cli

    cli.check_positive(parser, args, "rounds", "max_prompts", "num_return_sequences", "max_new_tokens",
                       "sample_batch_size")  # fmt: skip
    if args.num_return_sequences < 2:
        parser.error("--num_return_sequences must be at least 2 to form a pair")
    if not 0 <= args.test_fraction < 1:
        parser.error(f"--test_fraction must be in [0, 1), got {args.test_fraction}")
    if args.test_path and args.train_path and same_path(args.test_path, args.train_path):
        parser.error("--test_path equals --train_path: the evaluation would run on the training pairs; "
                     "give another file, or omit --test_path")  # fmt: skip
    if args.test_path and args.test_fraction == 0:
        parser.error("--test_path needs held-out pairs: set --test_fraction > 0")
    if args.just_sample and args.stop_after not in (None, "pairs"):
        parser.error(f"--just_sample means --stop_after pairs, not {args.stop_after}")


def same_path(a: str, b: str) -> bool:
    return os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))


def run_from_args(args, judge: JudgeSpec, method: str, run_prefix: str, cut_responses_at: str | None = None) -> int:
    """A self-improvement script's run, from its parsed flags: prompts, run folder, the loop, outputs, upload.

    ``method`` titles results.md; the default run folder is <run_prefix>-<model>-<prompt_format>.
    """
    from ipo import cli, hub
    from ipo.runs import RunDir, atomic_write_text, seed_everything
    from ipo.selfimprove.sampling import check_can_generate, sampling_settings_from_args
    from ipo.training.dpo import options_from_args

    cli.setup_logging(args.log_level)
    seed_everything(args.seed)
    model_short = cli.model_short_name(args.model_name)
    if args.dataset_id:
        logger.warning("--dataset_id %s is not used: the pairs are self-generated from --dataset_name "
                       "(upstream used it only in a fallback on human labels)", args.dataset_id)  # fmt: skip

    ###############
    # Prompts, model check, run folder
    ###############
    prompts = load_prompts(args.dataset_name, args.split_name, args.prompt_format, args.max_prompts,
                           require_category=judge.uses_category)  # fmt: skip
    logger.info("%d prompts from %s", len(prompts), args.dataset_name)
    stop_ids = check_can_generate(args.model_name, args.trust_remote_code)
    run = RunDir(args.output_dir, args.run_name or f"{run_prefix}-{model_short}-{args.prompt_format}",
                 overwrite=args.overwrite)  # fmt: skip
    run.check(cli.public_args(args))
    settings = LoopSettings(
        model=args.model_name, prompt_format=args.prompt_format, sampling=sampling_settings_from_args(args),
        training=options_from_args(args), rounds=args.rounds,
        stop_after=args.stop_after or ("pairs" if args.just_sample else None), test_fraction=args.test_fraction,
        seed=args.seed, merge_final=args.merge_adapters, judge_after=args.judge_after, dtype=args.dtype,
        device=args.device, quantized=args.quantized, trust_remote_code=args.trust_remote_code,
        sample_batch_size=args.sample_batch_size, cut_responses_at=cut_responses_at, run_name=run.path.name,
        train_path=args.train_path, test_path=args.test_path, mapped_path=args.mapped_path,
    )  # fmt: skip
    run.start(cli.public_args(args), resolved={"n_prompts": len(prompts), "stop_token_ids": stop_ids,
                                                "judge": judge.name, "tie_break": judge.tie_break,
                                                "cut_responses_at": cut_responses_at})  # fmt: skip

    ###############
    # The loop: sample -> judge -> pairs -> DPO -> merge (-> judge after), per round
    ###############
    result = run_loop(run.path, prompts, settings, judge, on_resolved=lambda found: run.update_resolved(**found))

    ###############
    # Outputs
    ###############
    summary = {"rounds": result.rounds, "stopped_after": result.stopped_after, "final_model": result.final_model}
    atomic_write_json(run.file("metrics.json"), summary)
    markdown = loop_markdown(result.rounds, f"{method} ({args.prompt_format}): {model_short}")
    atomic_write_text(run.file("results.md"), markdown)
    print(markdown)
    logger.info("outputs in %s", run.path)
    if args.push_to_hub:
        if result.stopped_after or not result.final_model:
            raise IpoError("--push_to_hub: nothing trained yet to upload (the run stopped before training)")
        repo = args.hub_repo_id or f"dpo-ultrafeedback-{args.model_name.replace('/', '-')}"
        hub.push_folder(result.final_model, repo if "/" in repo else hub.repo_id(None, repo),
                        what="merged model" if result.final_model.endswith("merged") else "LoRA adapter")  # fmt: skip
    return 0
