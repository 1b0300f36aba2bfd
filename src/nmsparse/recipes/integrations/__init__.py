"""Bridges to models that users have: Hugging Face ``transformers`` folders and the packaged all-MiniLM-L6-v2.

Nothing here is imported by ``import nmsparse``; ``transformers`` is loaded only when a function needs it.
"""

from __future__ import annotations

from .minilm import (
    EmbeddingAgreement,
    embed,
    embedding_agreement,
    english_sentences,
    load_hf_model,
    load_minilm,
    minilm_available,
    minilm_path,
    tokenize_batches,
)

__all__ = [
    "EmbeddingAgreement",
    "embed",
    "embedding_agreement",
    "english_sentences",
    "load_hf_model",
    "load_minilm",
    "minilm_available",
    "minilm_path",
    "tokenize_batches",
]
