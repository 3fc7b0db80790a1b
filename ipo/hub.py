"""Opt-in uploads to the Hugging Face Hub. Nothing here runs unless a script got --push_to_hub.

The token comes from the environment (HF_TOKEN) or the `hf auth login` cache; it is never a
function argument, never logged and never saved.
"""

from __future__ import annotations

import logging
import re

from ipo import IpoError

logger = logging.getLogger("ipo")


def repo_id(hf_user: str | None, name: str) -> str:
    """``<user>/<name>``; the user defaults to the logged-in account."""
    if not hf_user:
        try:
            from huggingface_hub import whoami

            hf_user = whoami()["name"]
        except Exception as err:
            raise IpoError(f"--push_to_hub needs --hf_user or a Hub login (HF_TOKEN / `hf auth login`): {err}")
    return f"{hf_user}/{name}"


def model_repo(repo: str) -> str:
    """A full ``owner/name`` as given, else ``name`` under the logged-in account."""
    return repo if "/" in repo else repo_id(None, repo)


def sanitize_split(name: str) -> str:
    """Upstream's split names: non-word characters to '_' (alpacaeval-easy -> alpacaeval_easy)."""
    return re.sub(r"\W+", "_", name)


def push_records(records: list[dict], repo: str, split_by: str | None = None, private: bool = True) -> None:
    """Upload prediction records as a dataset, one split per value of ``split_by`` (e.g. subset)."""
    import datasets

    if split_by:
        groups: dict[str, list[dict]] = {}
        for record in records:
            groups.setdefault(sanitize_split(str(record[split_by])), []).append(record)
        data = datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in groups.items()})
    else:
        data = datasets.Dataset.from_list(records)
    try:
        data.push_to_hub(repo, private=private)
    except Exception as err:
        raise IpoError(f"upload to {repo} failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
    logger.info("pushed %d records to https://huggingface.co/datasets/%s", len(records), repo)


def push_folder(folder, repo: str, private: bool = True, what: str = "model") -> None:
    """Upload a model or adapter folder (weights, config, tokenizer) as a Hub model repository."""
    from huggingface_hub import create_repo, upload_folder

    try:
        create_repo(repo, private=private, exist_ok=True)
        upload_folder(repo_id=repo, folder_path=str(folder), commit_message=f"Upload {what}")
    except Exception as err:
        raise IpoError(f"upload to {repo} failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
    logger.info("pushed the %s in %s to https://huggingface.co/%s", what, folder, repo)


def push_model(folder, repo: str, what: str = "model", private: bool = True) -> None:
    """Upload a trained model/adapter folder to ``repo`` (``owner/name``, or ``name`` under the logged-in account)."""
    push_folder(folder, model_repo(repo), private=private, what=what)
