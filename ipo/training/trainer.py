"""The custom preference losses in TRL: ``PreferenceLossTrainer``, a DPOTrainer subclass, and its data helpers.

TRL computes "sigmoid" and "ipo" itself; ipo_sum, kto_pair and the rpo_* losses (ipo/training/losses.py, pure
functions) are wired in by a DPOTrainer subclass that only computes the summed completion log-probs the
way TRL does and hands them to ipo.training.losses. Everything TRL-specific about them lives in this module;
``build_trainer`` (ipo/training/dpo.py) picks it through ``custom_trainer_class``.

What a batch is:
* paired losses: TRL's own batch, B pairs = 2B rows (chosen rows first), one device micro-batch. RPO's
  B x B matrix is this micro-batch: never gathered across GPUs or accumulation steps (as in RPO's code).
* rpo_unpaired: B single examples {prompt, completion, label}, half desirable and half undesirable,
  interleaved (ipo.training.preference_data.balanced_unpaired_batches, reshuffled each epoch; leftovers dropped),
  collated by UnpairedPreferenceCollator into input_ids/attention_mask/completion_mask (B, L) and the
  status vector is_chosen (B,). A micro-batch with one side only (possible in evaluation) has no RPO
  matrix: its loss is 0 * sum(logps) (so that DDP still runs a backward through every parameter), and it
  is counted in rpo/skipped_batches.
* --max_prompt_length: a prompt is cut to its last N tokens when prompt + longer response exceeds
  --max_length (TRL <= 0.7 and RPO's rule, keep_end); the response is then cut by TRL's collator.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader
from trl import DPOTrainer

from ipo import IpoError
from ipo.training.embeddings import PromptEmbedder
from ipo.training.losses import EMBEDDING_LOSS_TYPES, UNPAIRED_LOSS_TYPES, paired_preference_loss, rpo_unpaired_loss
from ipo.training.options import TRL_LOSS_TYPES, TrainingOptions
from ipo.training.preference_data import balanced_unpaired_batches

RPO_SKIPPED = "rpo/skipped_batches"


def custom_trainer_class(options: TrainingOptions):
    """The trainer the options need (a PreferenceLossTrainer bound to them), or None when TRL's DPOTrainer will do.

    ``sigmoid``/``ipo`` (and TRL's other losses) also go through it when --max_prompt_length is set.
    """
    if options.loss_type in TRL_LOSS_TYPES and options.max_prompt_length is None:
        return None
    return functools.partial(PreferenceLossTrainer, options=options)


def cut_long_prompt(
    prompt_ids: list[int], longest_response: int, max_prompt_length: int | None, max_length: int | None
) -> list[int]:
    """The prompt's last ``max_prompt_length`` tokens when prompt + longest response exceed ``max_length``.

    TRL <= 0.7 ``DPOTrainer.tokenize_row`` and RPO ``tokenize_batch_element`` (keep_end for HH): only prompts
    of too-long pairs are cut, and only down to ``max_prompt_length``; the response is then cut to fit.
    """
    if max_prompt_length is None or max_length is None:
        return prompt_ids
    if len(prompt_ids) + longest_response > max_length and len(prompt_ids) > max_prompt_length:
        return prompt_ids[-max_prompt_length:]
    return prompt_ids


class BalancedBatchSampler:
    """Batches of indices for rpo_unpaired: half desirable, half undesirable, interleaved; new order each epoch.

    A batch sampler (yields lists of indices) over one process's micro-batches; under several processes
    accelerate hands whole batches to each process in turn, so each process's micro-batch stays balanced.
    Its length does not depend on the order: every batch takes batch_size/2 of each label, so there are
    min(#desirable, #undesirable) // (batch_size/2) of them.
    """

    drop_last = True  # accelerate: never pad a round of batches with repeated indices

    def __init__(self, labels: Sequence[bool], batch_size: int, seed: int):
        self.labels = [bool(label) for label in labels]
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(balanced_unpaired_batches(self.labels, self.batch_size, self.seed + self.epoch))

    def __len__(self) -> int:
        desirable = sum(self.labels)
        return min(desirable, len(self.labels) - desirable) // (self.batch_size // 2)


class UnpairedPreferenceCollator:
    """Tokenised unpaired examples -> input_ids, attention_mask, completion_mask (B, L), right-padded, and
    is_chosen (B,) bool; prompt + completion is cut to ``max_length`` at the end, as TRL's collator does."""

    def __init__(self, pad_token_id: int, max_length: int | None = None):
        self.pad_token_id = pad_token_id
        self.max_length = max_length

    def __call__(self, examples: list[dict]) -> dict:
        sequences, masks = [], []
        for example in examples:
            ids = list(example["prompt_ids"]) + list(example["completion_ids"])
            mask = [0] * len(example["prompt_ids"]) + [1] * len(example["completion_ids"])
            sequences.append(ids[: self.max_length])
            masks.append(mask[: self.max_length])
        width = max(len(ids) for ids in sequences)
        batch = {
            "input_ids": torch.tensor([ids + [self.pad_token_id] * (width - len(ids)) for ids in sequences]),
            "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in sequences]),
            "completion_mask": torch.tensor([mask + [0] * (width - len(mask)) for mask in masks]),
            "is_chosen": torch.tensor([bool(example["label"]) for example in examples], dtype=torch.bool),
        }
        if "ref_logps" in examples[0]:
            batch["ref_logps"] = torch.tensor([example["ref_logps"] for example in examples])
        return batch


def _completion_as_pair(row: dict) -> dict:
    return {"chosen": row["completion"], "rejected": row["completion"]}


_NON_MODEL_KEYS = frozenset({"completion_mask", "ref_chosen_logps", "ref_rejected_logps", "is_chosen", "ref_logps"})


def load_outside_zero3(load):
    """``load()`` with DeepSpeed ZeRO-3's sharded model init switched off, and back on afterwards.

    Under ZeRO-3, transformers partitions every model loaded while the DeepSpeed config is registered (its
    global weak reference; ``is_deepspeed_zero3_enabled()``), and RPO's sentence-transformer must stay whole:
    it is a constant encoder, not an engine-managed model. The config is registered by TrainingArguments when
    ``deepspeed=`` is given, and by accelerate's DeepSpeed plugin under ``accelerate launch --config_file
    recipes/accelerate_configs/zero3.yaml`` (then ``args.hf_deepspeed_config`` does not exist), so the check asks
    transformers, not the arguments.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    if not hf_deepspeed.is_deepspeed_zero3_enabled():
        return load()
    reference = hf_deepspeed._hf_deepspeed_config_weak_ref  # the registered config, kept alive by its owner
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        return load()
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = reference


class PreferenceLossTrainer(DPOTrainer):
    """TRL's DPOTrainer with ipo.training.losses wired in; ``loss_type`` comes from the DPOConfig as usual.

    ``sigmoid`` and ``ipo`` (and every other TRL loss) are TRL's own code (``super().compute_loss``).
    ``ipo_sum``, ``kto_pair`` and ``rpo_*``: the summed completion log-probs of the policy and of the
    reference are computed as TRL computes them (fused LM head, the adapter disabled for the reference,
    or precomputed reference log-probs), then ``ipo.training.losses`` gives the loss. Metrics are logged under
    TRL's names (rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies, logps/*), plus
    rpo/skipped_batches (cumulative) for the RPO losses.

    Args: those of DPOTrainer, plus ``options`` (TrainingOptions: the RPO settings, max_prompt_length).
    """

    def __init__(self, *args, options: TrainingOptions | None = None, **kwargs):
        config = kwargs.get("args")
        self.loss_options = options or TrainingOptions(loss_type=config.loss_type[0] if config else "sigmoid")
        loss_types = list(config.loss_type) if config is not None else ["sigmoid"]
        custom = [t for t in loss_types if t not in TRL_LOSS_TYPES]
        if custom and len(loss_types) > 1:
            raise IpoError(f"loss {custom[0]!r} cannot be combined with other loss types ({loss_types})")
        self.custom_loss = custom[0] if custom else None
        self.unpaired = self.custom_loss in UNPAIRED_LOSS_TYPES
        self.rpo_skipped_batches = {"train": 0, "eval": 0}
        if self.unpaired and kwargs.get("data_collator") is None:
            tokenizer = kwargs.get("processing_class")
            if tokenizer is None:
                raise IpoError(f"--loss_type {self.custom_loss} needs the tokenizer passed as processing_class")
            tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            kwargs["data_collator"] = UnpairedPreferenceCollator(pad, config.max_length if config else None)
        super().__init__(*args, **kwargs)
        self.embedder = None
        if self.custom_loss in EMBEDDING_LOSS_TYPES:
            self.embedder = PromptEmbedder(self.loss_options.rpo_embedding_model, device=str(self.accelerator.device))
            # Load now (a missing model fails before the first step), and whole (outside ZeRO-3's sharded init).
            load_outside_zero3(lambda: self.embedder.model)  # the property loads the model

    # ---------------------------------------------------------------- data
    def _prepare_dataset(self, dataset, processing_class, config, dataset_name):  # config: the DPOConfig (TRL: args)
        if self.unpaired:
            # Tokenise each (prompt, completion) exactly as TRL tokenises a pair (chat template, EOS, the
            # prompt/completion boundary) by presenting it as a pair with the completion on both sides.
            if "prompt_ids" not in dataset.column_names:
                dataset = dataset.map(_completion_as_pair, desc=f"Preparing the {dataset_name} examples")
                dataset = self._prepare_paired(dataset, processing_class, config, dataset_name)
                dataset = dataset.remove_columns(["rejected_ids", "chosen", "rejected"])
                dataset = dataset.rename_column("chosen_ids", "completion_ids")
            if not any(dataset["label"]) or all(dataset["label"]):
                raise IpoError(
                    f"--loss_type {self.custom_loss}: the {dataset_name} data needs desirable and "
                    "undesirable examples (label true and false)"
                )
            return dataset
        return self._prepare_paired(dataset, processing_class, config, dataset_name)

    def _prepare_paired(self, dataset, processing_class, config, dataset_name):
        max_prompt_length = self.loss_options.max_prompt_length
        if max_prompt_length is None or "prompt_ids" in dataset.column_names:
            return super()._prepare_dataset(dataset, processing_class, config, dataset_name)
        # TRL drops pairs whose prompt alone fills max_length; cut the prompts first, then drop what is left.
        max_length = config.max_length
        config.max_length = None
        try:
            dataset = super()._prepare_dataset(dataset, processing_class, config, dataset_name)
        finally:
            config.max_length = max_length

        def cut(row):
            longest = max(len(row["chosen_ids"]), len(row["rejected_ids"]))
            return {"prompt_ids": cut_long_prompt(row["prompt_ids"], longest, max_prompt_length, max_length)}

        dataset = dataset.map(cut, desc=f"Cutting long prompts of the {dataset_name} dataset")
        if max_length is not None:
            dataset = dataset.filter(lambda row: len(row["prompt_ids"]) < max_length)
        return dataset

    def _set_signature_columns_if_needed(self):
        if self.unpaired and self._signature_columns is None:
            self._signature_columns = ["prompt_ids", "completion_ids", "label"]
        super()._set_signature_columns_if_needed()

    def get_train_dataloader(self):
        if not self.unpaired:
            return super().get_train_dataloader()
        return self._balanced_dataloader(self.train_dataset, "Training", self._train_batch_size)

    def get_eval_dataloader(self, eval_dataset=None):
        if not self.unpaired:
            return super().get_eval_dataloader(eval_dataset)
        if isinstance(eval_dataset, str):
            eval_dataset = self.eval_dataset[eval_dataset]
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        size = max(2, self.args.eval_batch_size - self.args.eval_batch_size % 2)  # balanced: even
        return self._balanced_dataloader(dataset, "Evaluation", size)

    def _balanced_dataloader(self, dataset, description, batch_size):
        dataset = self._remove_unused_columns(dataset, description=description)
        sampler = BalancedBatchSampler(dataset["label"], batch_size, seed=self.args.seed)
        if len(sampler) == 0:
            raise IpoError(
                f"--loss_type {self.custom_loss}: fewer than {batch_size // 2} desirable or undesirable "
                f"examples for one {batch_size}-example micro-batch ({description.lower()} data)"
            )
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return self.accelerator.prepare(loader)

    def evaluate(self, *args, **kwargs):
        self.rpo_skipped_batches["eval"] = 0  # rpo/skipped_batches of this evaluation only
        return super().evaluate(*args, **kwargs)

    # ---------------------------------------------------------------- loss
    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # Only the loss is evaluated: TRL would otherwise run an extra forward to build logits nobody reads.
        return super().prediction_step(model, inputs, True, ignore_keys)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.custom_loss is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if return_outputs:
            raise IpoError(f"--loss_type {self.custom_loss} returns the loss only (no logits for compute_metrics)")
        mode = "train" if self.model.training else "eval"
        options = self.loss_options
        embeddings = None
        if self.embedder is not None:  # before the forward: the embedder runs without gradient
            rows = inputs["input_ids"].shape[0] if self.unpaired else inputs["input_ids"].shape[0] // 2
            embeddings = self.embedder.encode(self.prompt_texts(inputs, rows)).to(inputs["input_ids"].device)
        logps, outputs = self.completion_logps(model, inputs)
        ref_logps = self.reference_logps(inputs)
        if self.unpaired:
            result = rpo_unpaired_loss(
                logps, ref_logps, inputs["is_chosen"], embeddings, self.beta, options.rpo_distance_temperature
            )
            chosen_logps, rejected_logps = logps[inputs["is_chosen"]], logps[~inputs["is_chosen"]]
        else:
            chosen_logps, rejected_logps = logps.chunk(2)
            ref_chosen, ref_rejected = ref_logps.chunk(2)
            chosen_lengths, rejected_lengths = inputs["completion_mask"].sum(dim=1).chunk(2)
            result = paired_preference_loss(
                self.custom_loss,
                chosen_logps,
                rejected_logps,
                ref_chosen,
                ref_rejected,
                beta=self.beta,
                chosen_lengths=chosen_lengths,
                rejected_lengths=rejected_lengths,
                prompt_embeddings=embeddings,
                temperature=options.rpo_distance_temperature,
                diagonal_weight=options.rpo_diagonal_weight,
            )
        if result is None:  # no RPO matrix: a zero loss that still reaches every trainable parameter
            loss = 0.0 * logps.sum()
        else:
            loss = result.losses.mean()
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss
        self.log_loss_metrics(mode, result, chosen_logps, rejected_logps)
        return loss

    def prompt_texts(self, inputs, rows: int) -> list[str]:
        """The first ``rows`` prompts as the model sees them (chat template applied, truncated), as text."""
        tokenizer = self._tokenizer
        starts = inputs["completion_mask"][:rows].int().argmax(dim=1).tolist()  # first completion token
        ids = inputs["input_ids"][:rows].tolist()
        return [tokenizer.decode(row[:start], skip_special_tokens=True) for row, start in zip(ids, starts)]

    def completion_logps(self, model, inputs):
        """Summed completion log-probs per row (rows,) and the model outputs, as TRL's _compute_loss."""
        model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
        model_kwargs["use_cache"] = False
        if self.aux_loss_enabled:
            model_kwargs["output_router_logits"] = True
        completion_mask = inputs["completion_mask"]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        per_token = outputs.log_probs[:, -(completion_mask.size(1) - 1) :]  # zero outside the completion
        return per_token.sum(dim=1), outputs

    def reference_logps(self, inputs):
        """Summed completion log-probs of the reference per row: precomputed, or TRL's reference forward."""
        if "ref_logps" in inputs:
            return inputs["ref_logps"]
        if "ref_chosen_logps" in inputs:
            return torch.cat((inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]))
        model = self.ref_model if self.ref_model is not None else self.model
        kept = {k: v for k, v in inputs.items() if k not in ("is_chosen", "ref_logps")}
        return torch.cat(self.compute_ref_log_probs(model, kept))

    def log_loss_metrics(self, mode, result, chosen_logps, rejected_logps) -> None:
        """TRL's reward metrics, averaged over processes (one gather, the same on every process)."""
        nan = float("nan")
        if result is None:
            values = [nan] * 6 + [1.0]
        else:
            chosen, rejected = result.chosen_rewards.float(), result.rejected_rewards.float()
            if self.unpaired:  # every desirable example against every undesirable one, as in the loss
                wins = (chosen[:, None] > rejected[None, :]).float().mean()
            else:
                wins = (chosen > rejected).float().mean()
            values = [
                chosen.mean(),
                rejected.mean(),
                wins,
                chosen.mean() - rejected.mean(),
                chosen_logps.detach().float().mean(),
                rejected_logps.detach().float().mean(),
                0.0,
            ]
        device = self.accelerator.device
        stats = torch.tensor([float(v) for v in values], device=device)
        stats = self.accelerator.gather(stats[None]).reshape(-1, len(values))
        names = (
            "rewards/chosen",
            "rewards/rejected",
            "rewards/accuracies",
            "rewards/margins",
            "logps/chosen",
            "logps/rejected",
        )
        for index, name in enumerate(names):
            column = stats[:, index]
            column = column[~column.isnan()]
            if column.numel():
                self._metrics[mode][name].append(column.mean().item())
        if self.custom_loss.startswith("rpo"):
            self.rpo_skipped_batches[mode] += int(stats[:, -1].sum().item())
            self._metrics[mode][RPO_SKIPPED] = [self.rpo_skipped_batches[mode]]
