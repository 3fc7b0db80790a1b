"""Preference datasets for training, turned into TRL's records, with one-line errors that name file and row.

Accepted layouts (detected from all the rows, or forced with ``format=``):

| format | columns | becomes |
|---|---|---|
| standard | prompt, chosen, rejected: text | the same |
| conversational | prompt, chosen, rejected: lists of {role, content} | the same |
| implicit | chosen, rejected: text, the prompt is their longest common prefix (TRL ``extract_prompt``) | standard |
| conversational_implicit | chosen, rejected: whole conversations (a text ``prompt`` column is ignored, as TRL does; e.g. ultrafeedback_binarized) | conversational |
| hh | chosen, rejected: Anthropic HH dialogues (``\\n\\nHuman: ...\\n\\nAssistant: ...``) | standard (or conversational with ``hh_messages``) |
| sharegpt | conversations: [{from, value}], chosen/rejected: {from, value} (LLaMA-Factory) | conversational |
| unpaired | prompt, completion, label (bool) | the same (TRL's KTO format) |
| run_pairs | a self-improvement run's ``round_<k>/pairs.jsonl`` (prompt, chosen, rejected, scores, split) | the pairs of ``split`` (train or test) in the run's prompt format (ipo/training/run_pairs.py) |

A file is read in the layout most of its rows have; a row of another layout is refused with one line when it
would otherwise be read silently in the wrong way (a text prompt ignored, a null prompt taken for an implicit
one), so the first row alone never decides how the whole file is read.

Content problems (an HH row whose chosen and rejected dialogues differ before the last Assistant turn,
identical chosen and rejected responses, no common prompt) drop the row and are counted by reason; schema problems (a
missing column, a number where text belongs) stop with one line naming the file and the row.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from ipo import IpoError
from ipo.data import read_records
from ipo.training.losses import UNPAIRED_LOSS_TYPES
from ipo.training.run_pairs import is_run_pair, run_config_path, run_pair_records, run_prompt_format

DATASET_FORMATS = (
    "auto",
    "standard",
    "conversational",
    "implicit",
    "conversational_implicit",
    "hh",
    "sharegpt",
    "unpaired",
    "run_pairs",
)
HH_HUMAN = "\n\nHuman:"
HH_ASSISTANT = "\n\nAssistant:"
# LLaMA-Factory sharegpt role tags (its dataset_info defaults) -> chat roles
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass
class PreferenceData:
    """Training records plus where they came from and what was dropped."""

    records: list[dict]  # {prompt, chosen, rejected} or {prompt, completion, label}
    source: str
    format: str  # the detected (or forced) layout of the source, one of DATASET_FORMATS
    paired: bool
    dropped: Counter = field(default_factory=Counter)  # reason -> rows
    converted_to_unpaired: bool = False
    run_pairs: dict | None = (
        None  # a run's pairs.jsonl: {"split", "prompt_format", "config"} (ipo/training/run_pairs.py)
    )

    @property
    def conversational(self) -> bool:
        return bool(self.records) and isinstance(self.records[0]["prompt"], list)

    def summary(self) -> str:
        kind = "pairs" if self.paired else "unpaired examples"
        text = f"{len(self.records):,} {kind} from {self.source} (format {self.format}"
        text += ", each pair split into a chosen and a rejected example)" if self.converted_to_unpaired else ")"
        if self.run_pairs:
            text += (
                f"; the {self.run_pairs['split']} split of a self-improvement run's pairs, in its prompt format "
                f"{self.run_pairs['prompt_format']} (from {self.run_pairs['config']})"
            )
        if self.dropped:
            reasons = "; ".join(f"{reason}: {count:,}" for reason, count in self.dropped.most_common())
            text += f"; dropped {sum(self.dropped.values()):,} rows ({reasons})"
        return text


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------
def load_preference_data(
    source: str, split: str = "train", format: str = "auto", hh_messages: bool = False
) -> PreferenceData:
    """Read a Hub dataset split or a local json/jsonl/parquet file (gzip accepted) into TRL records.

    ``hh_messages`` turns Anthropic HH dialogues into chat messages (user/assistant turns) instead of
    the raw ``Human:``/``Assistant:`` text, so that an instruct model sees its own chat template.
    """
    rows, format, detected = _read_rows(source, split, format, DATASET_FORMATS, "dataset format", detect_format)
    if format == "run_pairs":  # the split column decides (never the held-out pairs for training), not the file
        prompt_format = run_prompt_format(source)
        records = run_pair_records(rows, source, split, prompt_format)
        if not records:
            raise IpoError(f"{source}: no pairs in its {split} split")
        info = {"split": split, "prompt_format": prompt_format, "config": str(run_config_path(source))}
        return PreferenceData(records, source, format, paired=True, run_pairs=info)
    dropped: Counter = Counter()
    records = []
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise IpoError(f"{source}: row {index} is not a JSON object")
        where = f"{source}: row {index}"
        record = _convert_row(row, format, where, hh_messages)
        if detected:
            _refuse_other_layout(row_format(row), format, where)
        if isinstance(record, str):
            dropped[record] += 1
        else:
            records.append(record)
    if not records:
        reasons = "; ".join(f"{reason}: {count}" for reason, count in dropped.items())
        raise IpoError(f"{source}: no usable rows (all {len(rows)} dropped: {reasons})")
    return PreferenceData(records, source, format, paired=format != "unpaired", dropped=dropped)


def _read_rows(source: str, split: str, format: str, formats: Sequence[str], what: str, detect):
    """(rows, format, whether it was detected): ``format``, or for auto ``detect(rows, source)``."""
    if format not in formats:
        raise IpoError(f"unknown {what} {format!r}; choose one of {', '.join(formats)}")
    rows = read_records(source, split)
    if not rows:
        raise IpoError(f"{source}: the dataset is empty")
    if format != "auto":
        return rows, format, False
    return rows, detect(rows, source), True


def detect_format(rows: Sequence[dict], source: str) -> str:
    """The layout of a dataset: the one most of its rows have (on a tie, the one met first)."""
    return _majority(rows, row_format) or _undetectable(rows[0], source)


def row_format(row) -> str | None:
    """The layout one row has, or None when it fits none (its conversion then names what is missing)."""
    if not isinstance(row, dict):
        return None
    if is_run_pair(row):
        return "run_pairs"
    if "conversations" in row and "chosen" in row and "rejected" in row:
        return "sharegpt"
    if "completion" in row and "label" in row and "prompt" in row:
        return "unpaired"
    if "chosen" in row and "rejected" in row:
        chosen, prompt = row["chosen"], row.get("prompt")
        if isinstance(chosen, list):
            return "conversational" if isinstance(prompt, list) else "conversational_implicit"
        if isinstance(prompt, str):
            return "standard"
        if isinstance(chosen, str) and HH_HUMAN in chosen and HH_ASSISTANT in chosen:
            return "hh"
        return "implicit"
    return None


def _majority(rows: Sequence, detect) -> str | None:
    """The layout most rows have by ``detect(row)`` (the first met on a tie); None when no row has one."""
    counts: Counter = Counter()
    for row in rows:
        found = detect(row)
        if found is not None:
            counts[found] += 1
    return max(counts, key=counts.get) if counts else None  # max keeps the first of equal counts


def _undetectable(row, source: str):
    if not isinstance(row, dict):
        raise IpoError(f"{source}: row 0 is not a JSON object")
    raise IpoError(
        f"{source}: cannot tell the dataset format from columns {', '.join(sorted(row)) or '(none)'}; expected "
        "prompt/chosen/rejected, chosen/rejected, conversations/chosen/rejected (LLaMA-Factory sharegpt) or "
        "prompt/completion/label (unpaired)"
    )


# Layouts read the same way: a text pair without a prompt column is split at its HH turns or at its common prefix.
_SAME_READING = {frozenset({"hh", "implicit"})}


def _refuse_other_layout(own: str | None, format: str, where: str) -> None:
    """One line for a row of another layout than the file's that converted without an error (it would be read
    the wrong way, or dropped for a wrong reason: a text prompt ignored, a null prompt taken for an implicit one)."""
    if own is None or own == format or frozenset({own, format}) in _SAME_READING:
        return
    raise IpoError(
        f"{where} is a {own} row, but most rows of the file are {format}: the file mixes layouts; fix the row, or "
        "pass the layout to read every row in (--dataset_format)"
    )


def _convert_row(row: dict, format: str, where: str, hh_messages: bool) -> dict | str:
    """One source row -> a record, or the reason it is dropped."""
    if format == "unpaired":
        _require(row, ("prompt", "completion", "label"), where)
        prompt, completion = _text_or_messages(row, "prompt", where), _text_or_messages(row, "completion", where)
        if type(prompt) is not type(completion):
            raise IpoError(f"{where}: 'prompt' and 'completion' must both be text or both be message lists")
        label = row["label"]
        if label not in (True, False) or not isinstance(label, (bool, int)):  # bool, or the ints 0/1
            raise IpoError(f"{where}: 'label' must be true or false (desirable or not), got {label!r}")
        return {"prompt": prompt, "completion": completion, "label": bool(label)}

    if format == "sharegpt":
        _require(row, ("conversations", "chosen", "rejected"), where)
        prompt, chosen, rejected = _sharegpt_pair(row, where)
    else:
        _require(
            row,
            ("prompt", "chosen", "rejected") if format in ("standard", "conversational") else ("chosen", "rejected"),
            where,
        )
        chosen, rejected = _text_or_messages(row, "chosen", where), _text_or_messages(row, "rejected", where)
        want_messages = format in ("conversational", "conversational_implicit")
        for column, value in (("chosen", chosen), ("rejected", rejected)):
            if isinstance(value, list) != want_messages:
                kind = "a list of {role, content} messages" if want_messages else "text"
                raise IpoError(f"{where}: column {column!r} must be {kind} in a {format} dataset")
        if format in ("standard", "conversational"):
            prompt = _text_or_messages(row, "prompt", where)
            if isinstance(prompt, list) != want_messages:
                raise IpoError(f"{where}: 'prompt' must be {'messages' if want_messages else 'text'} like 'chosen'")
        elif format == "hh":
            split = split_hh_pair(chosen, rejected)
            if isinstance(split, str):
                return split
            prompt, chosen, rejected = split
            if hh_messages:
                prompt = hh_to_messages(prompt)
                chosen = [{"role": "assistant", "content": chosen.strip()}]
                rejected = [{"role": "assistant", "content": rejected.strip()}]
        else:  # implicit, conversational_implicit
            prompt, chosen, rejected = split_common_prefix(chosen, rejected)
            if not prompt or isinstance(prompt, str) and not prompt.strip():
                return "no common prompt between chosen and rejected"
    if chosen == rejected:  # no preference to learn; an empty response alone is kept (TRL appends EOS)
        return "chosen and rejected are identical"
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _require(row: dict, columns: Sequence[str], where: str) -> None:
    missing = [column for column in columns if column not in row]
    if missing:
        raise IpoError(f"{where} has no column {missing[0]!r} (columns: {', '.join(sorted(row))})")


def _text_or_messages(row: dict, column: str, where: str) -> str | list[dict]:
    value = row[column]
    if isinstance(value, str):
        return value
    if (
        isinstance(value, list)
        and value
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
        )
    ):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise IpoError(
        f"{where}: column {column!r} must be text or a non-empty list of {{role, content}} messages, "
        f"got {type(value).__name__}"
    )


# ---------------------------------------------------------------------------------------------------
# Splitting prompts off
# ---------------------------------------------------------------------------------------------------
def split_hh_prompt(dialogue: str) -> tuple[str, str] | None:
    """An Anthropic HH dialogue -> (prompt up to and including the last "\\n\\nAssistant:", the response).

    The response keeps its leading space, as the DPO reference code's ``extract_anthropic_prompt`` and
    RPO's HH loader split it. None if there is no Assistant turn.
    """
    end = dialogue.rfind(HH_ASSISTANT)
    if end < 0:
        return None
    end += len(HH_ASSISTANT)
    return dialogue[:end], dialogue[end:]


def split_hh_pair(chosen: str, rejected: str) -> tuple[str, str, str] | str:
    """(prompt, chosen response, rejected response), or the reason the pair is dropped."""
    chosen_split, rejected_split = split_hh_prompt(chosen), split_hh_prompt(rejected)
    if chosen_split is None or rejected_split is None:
        return "no Assistant turn in chosen or rejected"
    if chosen_split[0] != rejected_split[0]:
        return "chosen and rejected dialogues differ before the last Assistant turn"
    return chosen_split[0], chosen_split[1], rejected_split[1]


def hh_to_messages(prompt: str) -> list[dict]:
    """An HH prompt ("\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nAssistant:") -> user/assistant messages.

    The trailing empty Assistant turn is the generation prompt and is left out.
    """
    messages = []
    position = 0
    markers = {HH_HUMAN: "user", HH_ASSISTANT: "assistant"}
    while position < len(prompt):
        starts = {m: prompt.find(m, position) for m in markers}
        starts = {m: s for m, s in starts.items() if s >= 0}
        if not starts:
            break
        marker = min(starts, key=starts.get)
        begin = starts[marker] + len(marker)
        following = [prompt.find(m, begin) for m in markers]
        end = min([s for s in following if s >= 0], default=len(prompt))
        messages.append({"role": markers[marker], "content": prompt[begin:end].strip()})
        position = end
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    return messages


def split_common_prefix(chosen, rejected) -> tuple:
    """(prompt, chosen rest, rejected rest) with prompt = the longest common prefix, as TRL ``extract_prompt``.

    Works on text (characters; a space just before the first difference goes to the responses, as TRL
    does) and on message lists (whole messages). Unlike TRL's loop, a pair where one side is a prefix of
    the other leaves that side empty instead of cutting its last character.
    """
    length = 0
    limit = min(len(chosen), len(rejected))
    while length < limit and chosen[length] == rejected[length]:
        length += 1
    if isinstance(chosen, str) and length > 0 and chosen[length - 1] == " ":
        length -= 1
    return chosen[:length], chosen[length:], rejected[length:]


def _sharegpt_pair(row: dict, where: str) -> tuple[list[dict], list[dict], list[dict]]:
    turns = row["conversations"]
    if not isinstance(turns, list) or not turns:
        raise IpoError(f"{where}: 'conversations' must be a non-empty list of {{from, value}} turns")
    prompt = []
    system = row.get("system")
    if isinstance(system, str) and system.strip():
        prompt.append({"role": "system", "content": system})
    for turn in turns:
        prompt.append(_sharegpt_message(turn, where, "conversations"))
    if prompt[-1]["role"] != "user":
        raise IpoError(f"{where}: 'conversations' must end with a human turn (the one chosen/rejected answer)")
    chosen, rejected = (_sharegpt_message(row[c], where, c) for c in ("chosen", "rejected"))
    for column, message in (("chosen", chosen), ("rejected", rejected)):
        if message["role"] != "assistant":
            raise IpoError(f"{where}: {column!r} must be a gpt turn, got from={message['role']!r}")
    return prompt, [chosen], [rejected]


def _sharegpt_message(turn, where: str, column: str) -> dict:
    if not isinstance(turn, dict) or not isinstance(turn.get("from"), str) or not isinstance(turn.get("value"), str):
        raise IpoError(f'{where}: {column!r} turns must be {{"from": str, "value": str}}, got {turn!r:.80}')
    role = SHAREGPT_ROLES.get(turn["from"])
    if role is None:
        raise IpoError(
            f"{where}: {column!r} has a turn from {turn['from']!r}; supported: {', '.join(SHAREGPT_ROLES)} "
            "(tool-call turns are not supported)"
        )
    return {"role": role, "content": turn["value"]}


# ---------------------------------------------------------------------------------------------------
# Unpaired data (rpo_unpaired)
# ---------------------------------------------------------------------------------------------------
def to_unpaired(data: PreferenceData) -> PreferenceData:
    """Each pair -> a desirable (chosen, label True) and an undesirable (rejected, label False) example.

    The two halves of a pair are adjacent here; RPO's unpaired loader shuffles them apart each epoch
    (``balanced_unpaired_batches``).
    """
    if not data.paired:
        raise IpoError(f"{data.source}: --unpaired splits pairs, but this dataset is already unpaired")
    records = []
    for record in data.records:
        records.append({"prompt": record["prompt"], "completion": record["chosen"], "label": True})
        records.append({"prompt": record["prompt"], "completion": record["rejected"], "label": False})
    return replace(data, records=records, paired=False, converted_to_unpaired=True)


def check_data_for_loss(data: PreferenceData, loss_type: str) -> None:
    """Refuse a loss that cannot train on this data, with the flag that fixes it.

    Every loss but those of UNPAIRED_LOSS_TYPES (including TRL's own, e.g. hinge) trains on pairs; whether
    the name is a known loss is ipo.training.options.check_options' job.
    """
    if loss_type in UNPAIRED_LOSS_TYPES and data.paired:
        raise IpoError(
            f"--loss_type {loss_type} trains on unpaired (prompt, completion, label) examples, but "
            f"{data.source} holds pairs; pass --unpaired to split each pair into a chosen and a rejected example"
        )
    if loss_type not in UNPAIRED_LOSS_TYPES and not data.paired:
        fix = "drop --unpaired" if data.converted_to_unpaired else "use a paired dataset or --loss_type rpo_unpaired"
        raise IpoError(f"--loss_type {loss_type} needs chosen/rejected pairs, but the data is unpaired; {fix}")


def balanced_unpaired_batches(labels: Sequence[bool], batch_size: int, seed: int) -> list[list[int]]:
    """One epoch of RPO-unpaired batches: indices, half desirable and half undesirable, interleaved.

    As RPO's ``SimpleKTODataLoader``: shuffle all examples, queue them by label, and whenever both queues
    hold batch_size/2 emit a batch (chosen, rejected, chosen, ...) so that every device slice of it stays
    balanced; what is left in the queues at the end of the epoch is dropped. Pass ``seed + epoch`` for a
    new order each epoch.
    """
    if batch_size < 2 or batch_size % 2:
        raise ValueError(f"batch_size must be even and >= 2 (half chosen, half rejected), got {batch_size}")
    order = list(range(len(labels)))
    random.Random(seed).shuffle(order)
    quota = batch_size // 2
    chosen_queue: list[int] = []
    rejected_queue: list[int] = []
    batches = []
    for index in order:
        (chosen_queue if labels[index] else rejected_queue).append(index)
        if len(chosen_queue) >= quota and len(rejected_queue) >= quota:
            batch = []
            for _ in range(quota):
                batch += [chosen_queue.pop(0), rejected_queue.pop(0)]
            batches.append(batch)
    return batches


# ---------------------------------------------------------------------------------------------------
# SFT data (DPO/sft.py): the stage before preference training
# ---------------------------------------------------------------------------------------------------
SFT_FORMATS = ("auto", "preference", "prompt_completion", "instruction")
# Stanford Alpaca's prompt (github.com/tatsu-lab/stanford_alpaca, train.py PROMPT_DICT), for instruction data
# trained as plain text (a base model without a chat template).
ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
# instruction datasets: (instruction, optional context, response) column names
INSTRUCTION_COLUMNS = (
    ("instruction", "context", "response"),  # databricks-dolly-15k
    ("instruction", "input", "output"),
)  # Alpaca


@dataclass
class SftData:
    records: list[dict]  # {prompt, completion}: text, or message lists
    source: str
    format: str
    dropped: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        text = f"{len(self.records):,} SFT examples from {self.source} (format {self.format})"
        if self.dropped:
            text += "; dropped " + "; ".join(f"{reason}: {count:,}" for reason, count in self.dropped.most_common())
        return text


def load_sft_data(
    source: str, split: str = "train", format: str = "auto", messages: bool = False, preference_format: str = "auto"
) -> SftData:
    """{prompt, completion} records for SFT from a preference dataset (its chosen responses, as RPO's SFT
    stage), a prompt/completion dataset, or instruction data (Dolly: instruction/context/response; Alpaca:
    instruction/input/output).

    ``messages`` turns text prompts into chat messages (user turn, assistant completion) so that the model's
    chat template is applied; without it, instruction data uses the Alpaca prompt as plain text.
    """
    rows, format, detected = _read_rows(source, split, format, SFT_FORMATS, "SFT data format", detect_sft_format)
    if format == "preference":
        data = load_preference_data(source, split, preference_format, hh_messages=messages)
        if not data.paired:
            records = [{"prompt": r["prompt"], "completion": r["completion"]} for r in data.records if r["label"]]
        else:
            records = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in data.records]
        return SftData(records, source, f"preference ({data.format}), chosen responses", data.dropped)
    records, dropped = [], Counter()
    for index, row in enumerate(rows):
        where = f"{source}: row {index}"
        if not isinstance(row, dict):
            raise IpoError(f"{where} is not a JSON object")
        if format == "prompt_completion":
            _require(row, ("prompt", "completion"), where)
            prompt, completion = _text_or_messages(row, "prompt", where), _text_or_messages(row, "completion", where)
            if type(prompt) is not type(completion):
                raise IpoError(f"{where}: 'prompt' and 'completion' must both be text or both be message lists")
            if messages and isinstance(prompt, str):
                prompt, completion = _as_messages(prompt, completion)
        else:
            record = _instruction_record(row, where, messages)
            if isinstance(record, str):
                dropped[record] += 1
                continue
            prompt, completion = record
        if detected:
            _refuse_other_layout(sft_row_format(row), format, where)
        records.append({"prompt": prompt, "completion": completion})
    if not records:
        raise IpoError(f"{source}: no usable rows ({'; '.join(f'{k}: {v}' for k, v in dropped.items())})")
    return SftData(records, source, format, dropped)


def detect_sft_format(rows: Sequence[dict], source: str) -> str:
    """The SFT layout most rows have (the first met on a tie); "preference" when none has another."""
    if not isinstance(rows[0], dict):
        raise IpoError(f"{source}: row 0 is not a JSON object")
    return _majority(rows, sft_row_format) or "preference"


def sft_row_format(row) -> str | None:
    if not isinstance(row, dict):
        return None
    if any(all(column in row for column in (c[0], c[2])) for c in INSTRUCTION_COLUMNS):
        return "instruction"
    if "prompt" in row and "completion" in row and "label" not in row:
        return "prompt_completion"
    return "preference"  # load_preference_data names what is missing


def _instruction_record(row: dict, where: str, messages: bool):
    columns = next((c for c in INSTRUCTION_COLUMNS if c[0] in row and c[2] in row), None)
    if columns is None:
        raise IpoError(f"{where} has no instruction/response (Dolly) or instruction/output (Alpaca) columns")
    instruction_column, context_column, response_column = columns
    values = {}
    for column in (instruction_column, context_column, response_column):
        value = row.get(column) or ""
        if not isinstance(value, str):
            raise IpoError(f"{where}: column {column!r} must be text, got {type(value).__name__}")
        values[column] = value.strip()
    instruction, context, response = (values[c] for c in (instruction_column, context_column, response_column))
    if not instruction or not response:
        return "empty instruction or response"
    if messages:
        return _as_messages(f"{instruction}\n\n{context}" if context else instruction, response)
    if context:
        return ALPACA_PROMPT_WITH_INPUT.format(instruction=instruction, input=context), response
    return ALPACA_PROMPT.format(instruction=instruction), response


def _as_messages(prompt: str, completion: str) -> tuple[list[dict], list[dict]]:
    return [{"role": "user", "content": prompt}], [{"role": "assistant", "content": completion}]
