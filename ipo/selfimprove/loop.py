"""The self-improvement loop (the paper's second claim): sample, judge yourself, pair, DPO, merge, per round.

Each round is a folder of files that the stages hand over; every stage skips the work its file already
holds, so re-running a killed command redoes only what is missing:

    responses.jsonl   prompt, category, N sampled responses          (sample, appended per batch)
    scored.jsonl      the same plus one judge score per response      (judge, appended per batch)
                      (the 5-point judge: also its text and parse-failure flags)
    pairs.jsonl       prompt, chosen, rejected, scores, split          (pair, written at once)
    adapter/          the LoRA adapter and its tokenizer               (train, resumes from checkpoints/)
    merged/           the adapter merged into the base                 (merge, written at once)
    after_*.jsonl     the merged model's samples, judged like before   (judge after, optional)
    metrics.json      what the round did

Round k samples and judges with the merged model of round k-1 (round 1: the base model). The judge is
pluggable (ipo.selfimprove.judging.JudgeSpec): the IPO Yes/No judge (DPO/ours.py), the 5-point
Self-Rewarding judge (DPO/self_reward.py) or an external reward model (DPO/reward_model.py, a model of its
own, loaded after the policy is freed); only the scorer, what scored.jsonl keeps and the tie-break rule
change. A response without a score (the 5-point judge's chat-mode parse failure) is never chosen or
rejected; a prompt with fewer than two scored responses gives no pair.

The scripts call the stages in order, one method of ``Round`` each, and stop where --stop_after says::

    loop = Loop(run_path, prompts, settings, judge)
    for rnd in loop.rounds():
        rnd.sample()        # if rnd.stop_after("sample"): break   (likewise after each stage)
        rnd.judge()
        rnd.pair()
        rnd.train()
        rnd.merge()
        rnd.judge_after()
        rnd.done()
    write_outputs(run_path, loop.result(), title, method)   # ipo/selfimprove/outputs.py

Each stage frees its model before the next loads one (upstream's DPO/self_reward.py kept the sampling model
resident while loading the training model, and ran out of memory). Under several processes (torchrun,
accelerate launch) the sample and judge stages share the prompts out, training runs on all of them and
only the main process writes the files (ipo/parallel.py). ``check_loop_settings`` refuses, in
one line, every setting that would otherwise fail after sampling; the scripts call it before anything loads.

Modes follow ``prompt_format``:
  upstream  raw instructions for sampling; DPO records ``[INST] x [/INST]`` + response + ``<|eot_id|>``;
            case-sensitive category keys with upstream's fallback to the *code* prompt; every pair kept.
  chat      the chat template for sampling and for the DPO records (conversational rows, the tokenizer's
            EOS); categories normalised and checked; pairs with tied scores or identical texts dropped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ipo import IpoError
from ipo.judges.server import ServerSettings, connect
from ipo.modeling import load_model, load_tokenizer, resolve_device, split_gguf
from ipo.parallel import Ranks, current_ranks, run_sharded
from ipo.runs import RecordLog, atomic_write_json, atomic_write_jsonl, read_jsonl
from ipo.selfimprove.judging import JudgeSpec, held_out_change, judge_summary, score_responses_into_log
from ipo.selfimprove.pairs import (
    build_pairs,
    count_non_finite,
    export_pairs,
    export_path,
    held_out_ids,
    pair_stats,
)
from ipo.selfimprove.pairs_from import PairsSource, take_source_pairs
from ipo.selfimprove.prompts_pool import Prompt
from ipo.selfimprove.sampling import SamplingSettings, check_sampling_settings, sample_into_log
from ipo.selfimprove.server_sampling import make_sampler
from ipo.training.config import build_dpo_config, build_lora_config
from ipo.training.dpo import free_memory, train_dpo
from ipo.training.losses import UNPAIRED_LOSS_TYPES
from ipo.training.merge import load_peft_model, merge_adapter
from ipo.training.options import ADAPTER_DIR, CHECKPOINT_DIR, TrainingOptions, check_options
from ipo.training.run_pairs import pair_record

logger = logging.getLogger("ipo")

STAGES = ("sample", "score", "pairs", "train", "merge")  # --stop_after choices; "after" always runs last


@dataclass
class LoopSettings:
    model: str  # round 1's policy, judge and reference
    prompt_format: str
    sampling: SamplingSettings
    training: TrainingOptions
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
    cut_responses_at: str | None = None  # see ipo.selfimprove.sampling.sample_into_log
    run_name: str = "run"
    train_path: str | None = None
    test_path: str | None = None
    mapped_path: str | None = None
    source: PairsSource | None = None  # --pairs_from: train on this finished round's pairs (no sample/judge/pair)
    server: ServerSettings | None = None  # --backend server: round 1's policy is served there (sample, judge)


@dataclass
class LoopResult:
    rounds: list[dict]
    stopped_after: str | None
    final_model: str | None  # the last round's merged folder, or its adapter when not merged


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
        if not log_path.is_file():
            return False
        log = RecordLog(log_path)
        return all(p.id in log for p in prompts)


def select_pairs(
    round_dir: RoundDir, scored: Sequence[dict], judge: JudgeSpec, prompt_format: str, seed: int, test_ids: set[str]
) -> tuple[list[dict], dict]:
    """The round's pairs from its scored records (pure and seeded), and their statistics; one line when no
    training pair is left."""
    pairs, dropped = build_pairs(
        scored,
        judge.score_field,
        judge.tie_break,
        drop_degenerate=prompt_format == "chat",
        seed=seed,
        test_ids=test_ids,
        judge_text_field=judge.judge_text_field,
    )
    n_unscored = sum(score is None for record in scored for score in record[judge.score_field])
    n_non_finite = count_non_finite(scored, judge.score_field)
    stats = pair_stats(pairs, dropped, len(scored), n_unscored, n_non_finite)
    if n_non_finite:
        logger.warning(
            "%d of %d responses have a NaN or infinite score (a half-precision overflow?) and are never "
            "chosen or rejected",
            n_non_finite,
            sum(len(r["responses"]) for r in scored),
        )
    if n_unscored:
        logger.warning(
            "%d of %d responses have no score (the judge's text had none) and are never chosen or rejected",
            n_unscored,
            sum(len(r["responses"]) for r in scored),
        )
    if dropped:
        logger.info(
            "dropped %d of %d pairs: %s",
            sum(dropped.values()),
            len(scored),
            ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(dropped.items())),
        )
    kept_degenerate = sum(1 for p in pairs if p["degenerate"])
    if kept_degenerate:
        logger.warning(
            "%d pairs have tied scores or identical texts; kept, as upstream did (chat mode drops them)",
            kept_degenerate,
        )
    if not any(p["split"] == "train" for p in pairs):
        reasons = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(dropped.items())) or "none"
        hint = (
            f"; {n_unscored} responses had no readable score: the judge model does not follow the rubric "
            f"(see judge_text in {round_dir.scored})"
            if n_unscored
            else ""
        )
        raise IpoError(
            f"no training pairs in round {round_dir.index}: {len(scored)} prompts, {len(pairs)} pairs "
            f"({stats['n_test']} held out), dropped: {reasons}{hint}"
        )
    return pairs, stats


def check_loop_settings(settings: LoopSettings) -> None:
    """One line (IpoError) for every setting that would otherwise fail, or silently do something else, only
    after sampling and judging: the sampler's and the training's (TrainingOptions' own checks and the loop's
    own), also when the run stops before training (the training flags are part of the run's identity); when it
    goes as far as training, TRL's and PEFT's configs are also built once as a dry run (scheduler and
    optimizer names, the device). Loads nothing, writes nothing: the scripts call it before the run folder
    is opened, so a corrected command is never refused as a run with other settings."""
    check_sampling_settings(settings.sampling)
    resolve_device(settings.device, shardable=True)  # e.g. --device cuda on a machine without a GPU
    options = settings.training
    check_options(options)  # learning rate, beta, LoRA rank, --max_steps 0, ... (ipo/training/options.py)
    if options.loss_type in UNPAIRED_LOSS_TYPES:
        raise IpoError(
            f"--loss_type {options.loss_type} trains on unpaired examples; the loop makes pairs: choose a paired loss"
        )
    if options.load_in_4bit and not options.use_lora:
        raise IpoError("--load_in_4bit trains a LoRA adapter on a frozen 4-bit base; drop --no_lora")
    if settings.stop_after in ("sample", "score", "pairs"):
        return
    if split_gguf(settings.model)[1]:
        raise IpoError(
            "training needs a model folder or Hub id, not a .gguf file; convert it first, or stop "
            "before training (--stop_after pairs)"
        )
    build_dpo_config(
        options, Path(settings.run_name) / CHECKPOINT_DIR, device=settings.device, has_eval=settings.test_fraction > 0
    )  # creates nothing
    if options.use_lora:
        build_lora_config(options)


def _read_metrics(path: Path) -> dict | None:
    """A round's metrics.json from an earlier run, or None (missing or unreadable: the round starts afresh)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------------
# The loop: rounds, and the stages of one round
# ---------------------------------------------------------------------------------------------------
class Loop:
    """The rounds of one run: what stays fixed (prompts, held-out split, settings, judge) and what one round
    hands the next (its merged model). ``on_resolved`` receives settings found on the way (sampler and judge
    details) for the run's config.json."""

    def __init__(
        self,
        run_path: Path,
        prompts: Sequence[Prompt],
        settings: LoopSettings,
        judge: JudgeSpec,
        on_resolved: Callable[[dict], None] | None = None,
        ranks: Ranks | None = None,
    ):
        self.run_path, self.prompts, self.settings, self.judge = Path(run_path), prompts, settings, judge
        self.on_resolved = on_resolved  # called in the main process only
        self.ranks = ranks or current_ranks()
        self.test_ids = held_out_ids([p.id for p in prompts], settings.test_fraction, settings.seed)
        self.order = [p.id for p in prompts]
        self.policy = settings.source.policy if settings.source else settings.model  # policy, judge, DPO reference
        # --judge_after samples these: all prompts, or with --pairs_from the held-out ones (the before scores are
        # the source's, and training prompts tell nothing new about the new training settings)
        held_out = [p for p in prompts if str(p.id) in self.test_ids]
        self.after_prompts = held_out if settings.source and held_out else list(prompts)
        self.results: list[dict] = []
        self.final: str | None = None  # the newest adapter or merged model
        self.stopped_after: str | None = None
        self.reported = False

    def rounds(self) -> Iterator[Round]:
        """Round 1, 2, ... up to ``settings.rounds``; the caller breaks out when a stage stops the run."""
        for k in range(1, self.settings.rounds + 1):
            yield Round(self, k)

    def result(self) -> LoopResult:
        if self.stopped_after:
            return LoopResult(self.results, self.stopped_after, None)
        return LoopResult(self.results, None, self.final)

    def load(self, path: str):
        """Model and tokenizer for sampling and judging (4-bit with ``quantized``), on this process's device."""
        s = self.settings
        tokenizer = load_tokenizer(path, trust_remote_code=s.trust_remote_code)
        if s.server is not None and path == s.model:  # --backend server: only the tokenizer is local
            return connect(path, s.server, s.trust_remote_code), tokenizer
        model, _, _ = load_model(
            path,
            dtype=s.dtype,
            device=self.ranks.device(s.device),
            quantized=s.quantized,
            trust_remote_code=s.trust_remote_code,
        )
        return model, tokenizer

    def load_judge(self):
        """Model and tokenizer of the judge: its own model where it has one (a reward model, on this process's
        device), else the round's policy (``load``)."""
        if self.judge.load is None:
            return self.load(self.policy)
        return self.judge.load(self.ranks.device(self.settings.device))


class Round:
    """One round's stages, in the order the scripts call them; each saves metrics.json when it is done."""

    def __init__(self, loop: Loop, index: int):
        self.loop, self.k = loop, index
        self.dir = RoundDir(loop.run_path / f"round_{index}", index)
        self.dir.path.mkdir(parents=True, exist_ok=True)
        self.metrics = _read_metrics(self.dir.metrics) or {"round": index}
        self.metrics.update(round=index, policy=loop.policy, n_prompts=len(loop.prompts), n_held_out=len(loop.test_ids))
        self.salt = f"round{index}"  # the random streams of this round's samples
        self.policy_model = None  # (model, tokenizer), loaded by sample() for judge() when both have work
        self.pairs: list[dict] = []

    def save(self) -> None:
        if self.loop.ranks.main:
            atomic_write_json(self.dir.metrics, self.metrics)

    def stop_after(self, stage: str) -> bool:
        """True when --stop_after names this stage: the round's metrics are saved and the run ends here."""
        if self.loop.settings.stop_after != stage:
            return False
        self.policy_model = None
        self.save()
        self.loop.results.append(self.metrics)
        self.loop.stopped_after = stage
        logger.info("stopped after the %s stage of round %d (--stop_after / --just_sample)", stage, self.k)
        return True

    def _report_resolved(self) -> None:
        """Round 1's sampler and judge settings to config.json, once known (also when resumed)."""
        loop = self.loop
        report = loop.on_resolved and loop.ranks.main and not loop.reported
        if report and self.k == 1 and "judge_settings" in self.metrics:
            loop.on_resolved({"sampling": self.metrics["sampling"], "judge": self.metrics["judge_settings"]})
            loop.reported = True

    def _sampling(self, sampler, tokenizer, what: str) -> Callable[[Sequence[Prompt], RecordLog], int]:
        """A sampling stage's work on (some of) the prompts, for run_sharded."""
        s = self.loop.settings

        def work(prompts, log):
            return sample_into_log(
                sampler,
                tokenizer,
                prompts,
                log,
                s.prompt_format,
                desc=f"round {self.k}: {what}",
                cut_at=s.cut_responses_at,
            )

        return work

    def _judging(self, scorer, what: str) -> Callable[[Sequence[dict], RecordLog], int]:
        """A judging stage's work on (some of) the sampled records, for run_sharded."""

        def work(records, log):
            return score_responses_into_log(scorer, records, log, self.loop.judge, desc=f"round {self.k}: {what}")

        return work

    def sample(self) -> None:
        """responses.jsonl: N responses per prompt from this round's policy, which stays loaded for judging
        where it is the judge.

        Nothing is loaded once scored.jsonl is complete (an earlier run sampled and judged this round), nor with
        --pairs_from (the source run did)."""
        loop, s, rd = self.loop, self.loop.settings, self.dir
        if s.source:
            return
        if rd.complete(rd.scored, loop.prompts):
            self._report_resolved()
            return
        model, tokenizer = loop.load(loop.policy)
        sampler = make_sampler(model, tokenizer, s.sampling, batch_size=s.sample_batch_size, salt=self.salt)
        run_sharded(loop.ranks, rd.responses, loop.prompts, self._sampling(sampler, tokenizer, "sampling"))
        self.metrics["sampling"] = sampler.resolved()
        if loop.judge.load is None:  # the policy judges: it stays loaded for judge()
            self.policy_model = model, tokenizer
        else:  # a judge of its own (a reward model): the policy is freed before it loads
            del model, sampler
            free_memory()

    def judge(self) -> None:
        """scored.jsonl: the policy judges its own samples (one score per response, ``JudgeSpec.fields``)."""
        loop, rd, judge = self.loop, self.dir, self.loop.judge
        if loop.settings.source:
            return
        if not rd.complete(rd.scored, loop.prompts):
            model, tokenizer = self.policy_model or loop.load_judge()
            self.policy_model = None
            responses = RecordLog(rd.responses).ordered(loop.order)
            scorer = judge.build(model, tokenizer)
            run_sharded(loop.ranks, rd.scored, responses, self._judging(scorer, "judging"), key=lambda r: r["id"])
            self.metrics["judge_settings"] = {"name": judge.name, **judge.resolved}
            del model, tokenizer, scorer
            free_memory()
            self.save()
        self._report_resolved()

    def pair(self) -> None:
        """The judge's scores summarised (metrics.json 'judge'), then pairs.jsonl: best vs worst response of
        each prompt; and upstream's --train_path / --test_path / --mapped_path files where asked. With --pairs_from:
        the source round's pairs and judge summary (ipo/selfimprove/pairs_from.py)."""
        loop, s, rd = self.loop, self.loop.settings, self.dir
        if s.source:
            take_source_pairs(s.source, rd.path, loop.test_ids, main=loop.ranks.main)
            self.metrics.update(judge=s.source.metrics.get("judge"), pairs=s.source.metrics["pairs"])
            self.metrics["pairs_from"] = s.source.describe()
            self.save()
        else:
            scored = RecordLog(rd.scored).ordered(loop.order)
            judge = loop.judge
            self.metrics["judge"] = judge_summary(scored, judge.score_field, loop.test_ids, judge.failure_field)
            self.save()
            if not rd.pairs.is_file() or "pairs" not in self.metrics:  # (re)written whole: pure and seeded
                pairs, self.metrics["pairs"] = select_pairs(rd, scored, judge, s.prompt_format, s.seed, loop.test_ids)
                if loop.ranks.main:  # every process selects the same pairs (and fails alike); one writes them
                    atomic_write_jsonl(rd.pairs, pairs)
                self.save()
        loop.ranks.wait()
        self.pairs = read_jsonl(rd.pairs)
        if loop.ranks.main:
            export_pairs(
                self.pairs,
                s.prompt_format,
                export_path(s.train_path, self.k),
                export_path(s.test_path, self.k),
                export_path(s.mapped_path, self.k),
            )

    def train(self) -> None:
        """adapter/: DPO with a LoRA adapter on this round's policy (held-out pairs as the eval set)."""
        loop, s, rd = self.loop, self.loop.settings, self.dir
        train = [pair_record(p, s.prompt_format) for p in self.pairs if p["split"] == "train"]
        test = [pair_record(p, s.prompt_format) for p in self.pairs if p["split"] == "test"]
        options = replace(s.training, run_name=f"{s.run_name}-round{self.k}")
        result = train_dpo(
            loop.policy,
            train,
            options,
            rd.path,
            eval_records=test or None,
            device=s.device,
            extra_config={"round": self.k, "prompt_format": s.prompt_format},
        )
        if not result.skipped:
            training = {key: v for key, v in result.metrics.items() if isinstance(v, (int, float))}
            training.update(n_train=result.n_train, n_eval=result.n_eval, resumed_from=result.resumed_from)
            self.metrics["training"] = training
        self.metrics["adapter"] = loop.final = str(rd.adapter)
        self.save()

    def merge(self) -> None:
        """merged/: the adapter merged into its base; always before another round, after the last on request."""
        loop, s, rd = self.loop, self.loop.settings, self.dir
        if self.k < s.rounds or s.merge_final:
            if loop.ranks.main and not (rd.merged / "config.json").is_file():
                merge_adapter(rd.adapter, rd.merged, dtype=s.dtype)  # returns the merged model: drop it now
                free_memory()
            loop.ranks.wait()  # the other processes wait for the merged model
            self.metrics["merged"] = loop.final = str(rd.merged)
            self.save()

    def judge_after(self) -> None:
        """With --judge_after: the trained model samples the same prompts (same random streams) and this
        round's judge scores them; before/after means in metrics.json 'after'."""
        loop, s, rd, judge = self.loop, self.loop.settings, self.dir, self.loop.judge
        if not s.judge_after:
            return
        if not rd.complete(rd.after_responses, loop.after_prompts):
            if (rd.merged / "config.json").is_file():
                model, tokenizer = loop.load(str(rd.merged))
            else:
                model, _ = load_peft_model(rd.adapter, dtype=s.dtype, device=loop.ranks.device(s.device))
                tokenizer = load_tokenizer(str(rd.adapter))
            sampler = make_sampler(model, tokenizer, s.sampling, batch_size=s.sample_batch_size, salt=self.salt)
            run_sharded(
                loop.ranks,
                rd.after_responses,
                loop.after_prompts,
                self._sampling(sampler, tokenizer, "sampling after DPO"),
            )
            del model, sampler
            free_memory()
        if not rd.complete(rd.after_scored, loop.after_prompts):
            model, tokenizer = loop.load_judge()
            scorer = judge.build(model, tokenizer)
            run_sharded(
                loop.ranks,
                rd.after_scored,
                RecordLog(rd.after_responses).ordered([p.id for p in loop.after_prompts]),
                self._judging(scorer, "judging after DPO"),
                key=lambda r: r["id"],
            )
            del model, scorer
            free_memory()
        after = judge_summary(
            RecordLog(rd.after_scored).ordered([p.id for p in loop.after_prompts]),
            judge.score_field,
            loop.test_ids,
            judge.failure_field,
        )
        who = judge.model or "this round's policy"
        self.metrics["after"] = {"judge": who, "before": self.metrics["judge"], "after": after}
        self.metrics["held_out"] = held_out_change(self.metrics["judge"], after)
        self.save()

    def done(self) -> None:
        """The round's metrics.json, final; the next round's policy is this round's merged model."""
        self.save()
        self.loop.results.append(self.metrics)
        if self.k < self.loop.settings.rounds:
            self.loop.policy = str(self.dir.merged)
