"""How a round judges its own samples: the judge specs of the three self-improvement arms, the judging
stage's record log, and the summary of the scores that metrics.json keeps.

``yes_no_judge_spec`` is the paper's judge, P(Yes) under the category's question (DPO/ours.py);
``self_reward_judge_spec`` is the 5-point Self-Rewarding judge (DPO/self_reward.py). Both are the same
model as the policy; only the scorer, what scored.jsonl keeps and the tie-break rule differ.
``reward_model_judge_spec`` is the paper's external-RM arm (DPO/reward_model.py): a sequence-classification
reward model of its own (``JudgeSpec.load``), loaded once the policy is freed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ipo.data import Example
from ipo.judges.batching import DEFAULT_BATCH_SIZE
from ipo.judges.reward_model import RewardModelScorer
from ipo.judges.server import ServerYesNoJudge, make_self_reward_scorer, make_yes_no_judge
from ipo.judges.yes_no import YesNoScorer
from ipo.modeling import ModelSpec, load_model_and_tokenizer
from ipo.prompts import DPO_CATEGORY_PROMPTS, REWARDBENCH_LAYOUT
from ipo.report import mean
from ipo.runs import RecordLog, score_into_log
from ipo.selfimprove.pairs import is_score, strip_common_prefix
from ipo.selfimprove.prompts_pool import judge_key


@dataclass
class JudgeSpec:
    """How a round judges its samples. ``build(model, tokenizer)`` returns a scorer with ``.score(examples)``
    yielding lists of (example, scores, extra), like ipo.judges.yes_no.YesNoScorer."""

    name: str
    score_field: str  # the scored.jsonl field the pairs are built from (None: no score, never in a pair)
    tie_break: str  # see ipo.selfimprove.pairs.rank_responses
    build: Callable
    judge_text_field: str | None = None  # for tie_break="judge_text"
    failure_field: str | None = None  # per-response parse-failure flags, counted in metrics.json
    record_fields: Callable[[list, dict], dict] | None = None  # (scores, extra) -> scored.jsonl fields
    uses_category: bool = True  # the judge's question depends on the prompt's category (the column is required)
    resolved: dict = field(default_factory=dict)  # filled by build(): token ids etc., for config.json
    model: str | None = None  # the judge's own model (a reward model); None: the round's policy judges
    load: Callable | None = None  # load(device) -> (model, tokenizer) of ``model``, for build()

    def fields(self, scores: Sequence, extra: dict) -> dict:
        """What scored.jsonl keeps of one prompt's judgement (default: the scores as floats, and ``extra``)."""
        if self.record_fields is not None:
            return self.record_fields(scores, extra)
        return {self.score_field: [float(s) for s in scores], **extra}


def yes_no_judge_spec(
    prompt_format: str,
    scoring: str,
    max_length: int = 1024,
    batch_size: int = 8,
    max_batch_tokens: int | None = None,
    prefix_sharing: bool = True,
) -> JudgeSpec:
    """The paper's judge: P(Yes) with the category's question (ipo.prompts.DPO_CATEGORY_PROMPTS, the questions
    of upstream DPO/ours.py), in the layout of the RewardBench scripts.

    ``max_batch_tokens`` None: the judge's per-device default (ipo.judges.yes_no.default_max_batch_tokens).
    """
    spec = JudgeSpec("yes_no", "p_yes", "generation_order" if prompt_format == "upstream" else "random", build=None)

    def build(model, tokenizer):  # a loaded model, or a served one (--backend server: ipo.judges.server)
        judge = make_yes_no_judge(
            model,
            tokenizer,
            scoring=scoring,
            max_length=max_length,
            batch_size=batch_size,
            max_batch_tokens=max_batch_tokens,
            prefix_sharing=prefix_sharing,
        )
        spec.resolved.update(scoring=scoring, yes_no_tokens=judge.tokens.as_dict())
        if isinstance(judge, ServerYesNoJudge):
            spec.resolved.update(judge.describe())
        return YesNoScorer(
            judge, REWARDBENCH_LAYOUT, lambda e: DPO_CATEGORY_PROMPTS[judge_key(e.domain, prompt_format)]
        )

    spec.build = build
    return spec


def self_reward_fields(scores: Sequence, extra: dict) -> dict:
    """scored.jsonl fields of the 5-point judge: score (upstream: 0..5, 0 = nothing parsed; chat: 1..5 or
    None), parse_failed, judge_text (the judge's own generation), truncated, and in upstream mode
    upstream_sort_text: the decoded judge prompt + generation that upstream sorted tied scores by, from
    where this prompt's texts first differ (the shared rubric and instruction are cut; the order is kept)."""
    fields = {
        "score": list(scores),
        "parse_failed": list(extra["parse_failed"]),
        "judge_text": list(extra["generated"]),
        "truncated": extra["truncated"],
    }
    if "decoded" in extra:
        fields["upstream_sort_text"] = strip_common_prefix(extra["decoded"])
    return fields


def self_reward_judge_spec(
    scoring: str,
    max_length: int = 2048,
    max_new_tokens: int = 128,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batch_tokens: int | None = None,
) -> JudgeSpec:
    """The Self-Rewarding judge (Yuan et al. 2024; ipo/judges/self_reward.py): a greedy justification and a 1-5
    score under the additive 5-point prompt (ipo.prompts.SELF_REWARD_PROMPT) for every response, whatever its
    category.

    upstream: raw-text prompt, upstream's DPO regexes over prompt + generation, 0 when nothing matches (a
    score like any other); ties are broken as upstream's sort of (score, decoded text) tuples did. chat: the
    chat template, the last "Score: N" of the generation; a failure is None (no candidate); ties at random.
    """
    upstream = scoring == "upstream"  # upstream passed the category to its judge and ignored it
    spec = JudgeSpec(
        "self_reward_5_point",
        "score",
        "judge_text" if upstream else "random",
        build=None,
        judge_text_field="upstream_sort_text" if upstream else None,
        failure_field="parse_failed",
        record_fields=self_reward_fields,
        uses_category=False,
    )

    def build(model, tokenizer):
        scorer = make_self_reward_scorer(  # a loaded or a served model (--backend server)
            model,
            tokenizer,
            scoring=scoring,
            max_length=max_length,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            max_batch_tokens=max_batch_tokens,
            regex_set="rewardbench",
        )
        spec.resolved.update(
            scoring=scoring,
            decoding="greedy",
            max_length=max_length,
            max_new_tokens=max_new_tokens,
            regex_set="rewardbench" if upstream else "last 'Score: N' of the generation",
            eos_token_ids=sorted(scorer.eos_ids),
        )
        return scorer

    spec.build = build
    return spec


def reward_model_judge_spec(
    reward_model: str,
    prompt_format: str,
    input_format: str = "chat",
    max_length: int = 1024,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batch_tokens: int | None = None,
    dtype: str = "auto",
    quantized: bool = False,
    trust_remote_code: bool = False,
) -> JudgeSpec:
    """An external reward model judges (the paper's "Reward (Skywork RM)" arm): each response's reward is the
    raw logit of its one-label head (ipo/judges/reward_model.py, the RewardBench baseline's scorer), on
    ``input_format`` (chat: the reward model's chat template, a user and an assistant turn; upstream: the
    RewardBench scripts' raw text). The same reward model judges every round and the samples after DPO.

    Ties follow ``prompt_format`` as the Yes/No judge's do (upstream: sample order; chat: at random).
    """
    spec = JudgeSpec(
        "reward_model",
        "reward",
        "generation_order" if prompt_format == "upstream" else "random",
        build=None,
        uses_category=False,
        model=reward_model,
    )

    def load(device: str):
        model, tokenizer, _, torch_dtype = load_model_and_tokenizer(
            ModelSpec(
                reward_model, dtype=dtype, device=device, quantized=quantized, trust_remote_code=trust_remote_code
            ),
            kind="sequence_classification",
        )
        spec.resolved.update(dtype=str(torch_dtype).replace("torch.", ""), quantized=quantized)
        return model, tokenizer

    def build(model, tokenizer):
        scorer = RewardModelScorer(
            model,
            tokenizer,
            input_format=input_format,
            max_length=max_length,
            batch_size=batch_size,
            max_batch_tokens=max_batch_tokens,
        )
        spec.resolved.update(
            reward_model=reward_model,
            input_format=input_format,
            max_length=max_length,
            pad_token_id=scorer.pad_id,
            reward="raw logit of the one-label head, float32",
        )
        return scorer

    spec.load, spec.build = load, build
    return spec


def score_responses_into_log(
    scorer, responses: Sequence[dict], log: RecordLog, judge: JudgeSpec, desc: str = "judging"
) -> int:
    """Judge every response of the records ``log`` lacks; one scored record per prompt (``judge.fields``)."""
    by_id = {str(r["id"]): r for r in responses}
    examples = [
        Example(id=r["id"], prompt=r["prompt"], responses=r["responses"], domain=r["category"]) for r in responses
    ]

    def make_record(example, scores, extra):
        record = by_id[str(example.id)]
        return {
            "id": record["id"],
            "prompt": record["prompt"],
            "category": record["category"],
            "responses": record["responses"],
            **judge.fields(scores, extra),
        }

    return score_into_log(scorer, examples, log, make_record, unit="prompt", desc=desc)


def judge_summary(
    scored: Sequence[dict], score_field: str, test_ids: set[str], failure_field: str | None = None
) -> dict:
    """Mean judge score of all responses, of each prompt's best and worst, overall and per split.

    Responses without a score (None, or a NaN or infinite one) are left out of the means and counted; with
    ``failure_field`` the parse failures are counted too (upstream mode's 0 is such a failure, and still in
    the means).
    """

    def part(records):
        scored_lists = [[s for s in r[score_field] if is_score(s)] for r in records]
        summary = {
            "n_prompts": len(records),
            "n_responses": sum(len(r[score_field]) for r in records),
            "n_unscored": sum(len(r[score_field]) - len(s) for r, s in zip(records, scored_lists)),
            "mean": mean(s for scores in scored_lists for s in scores),
            "mean_best": mean(max(scores) for scores in scored_lists if scores),
            "mean_worst": mean(min(scores) for scores in scored_lists if scores),
        }
        if failure_field:
            summary["n_parse_failures"] = sum(sum(map(bool, r[failure_field])) for r in records)
        return summary

    return {
        "all": part(scored),
        "train": part([r for r in scored if str(r["id"]) not in test_ids]),
        "test": part([r for r in scored if str(r["id"]) in test_ids]),
    }


def held_out_change(before: dict, after: dict) -> dict | None:
    """metrics.json's "held_out": the judge's mean score on the held-out prompts (never trained on) before and
    after the round's DPO, from two judge_summary results; None without held-out prompts (--test_fraction 0).

    {"before", "after", "change" (after - before), "n_prompts", "n_responses"}: the same judge (the round's
    policy, or the reward model), the same prompts and the same sampling streams before and after, so the change is the training's.
    """
    before_part, after_part = (before or {}).get("test") or {}, (after or {}).get("test") or {}
    if not before_part.get("n_prompts") or not after_part.get("n_prompts"):
        return None
    old, new = before_part.get("mean"), after_part.get("mean")
    return {
        "before": old,
        "after": new,
        "change": None if old is None or new is None else new - old,
        "n_prompts": after_part["n_prompts"],
        "n_responses": after_part["n_responses"],
    }
