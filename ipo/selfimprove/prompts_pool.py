"""The prompt pool the loop samples from: instructions with their categories, and the judge key of each category.

The paper's pool is UltraFeedback-1k-Each (four categories: chat, code, math, safety); any local
json/jsonl/parquet file with an 'instruction' column (and a 'category' column where the judge's question
depends on it) works the same way.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

from ipo import IpoError
from ipo.data import read_records, require_columns, require_text, row_ids
from ipo.prompts import DPO_CATEGORY_PROMPTS, DPO_FALLBACK_CATEGORY

logger = logging.getLogger("ipo")

DEFAULT_PROMPTS = "Ayush-Singh/UltraFeedback-1k-Each"  # the paper's prompt pool (4 categories)
DEFAULT_SPLIT = "split_1"

# chat mode: the prompt pool's four categories, compared lower-case, mapped to upstream's judge keys.
CHAT_CATEGORY_KEYS = {"chat": "chat", "code": "General", "math": "Math", "safety": "Safety"}


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
        raise IpoError(
            f"unknown category {category!r}; chat mode knows {', '.join(CHAT_CATEGORY_KEYS)} "
            "(any case); --prompt_format upstream judges unknown categories with the code prompt"
        )
    return key


def load_prompts(
    source: str, split: str | None, prompt_format: str, max_prompts: int | None = None, require_category: bool = True
) -> list[Prompt]:
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
            logger.warning(
                "categories judged with upstream's fallback (the code prompt): %s",
                ", ".join(f"{c!r} x{n}" for c, n in fallback.most_common()),
            )
    return prompts
