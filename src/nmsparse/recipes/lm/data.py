"""Token streams of the embedded corpus and the batches a run draws from them.

The training batch of step ``s`` is a function of ``(seed, s)`` alone (a generator seeded per step), so a
resumed run draws exactly the batches an uninterrupted one would, with no random state to save. Held-out
loss is computed on fixed, non-overlapping windows of the held-out stream (every token but a window's first is
predicted once, from the tokens of its window before it).

Example:
    >>> data = build_lm_data(sources=("topics",), heldout_permille=100)
    >>> x, y = data.train_batch(step=0, batch_size=2, context=8, seed=0)
    >>> x.shape, bool((x[:, 1:] == y[:, :-1]).all())
    (torch.Size([2, 8]), True)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nmsparse.errors import ConfigError

from .corpus import SOURCES, load_corpus
from .tokenizer import ByteTokenizer

__all__ = ["LMData", "build_lm_data"]

_STEP_SEED_STRIDE = 1_000_003  # a prime: (seed, step) pairs map to distinct generator seeds for step < stride


@dataclass(frozen=True)
class LMData:
    """Tokenised train and held-out streams plus what identifies them.

    Attributes:
        train: token stream of the training documents, each followed by the end-of-document token if the
            tokenizer has one (``uint8`` for bytes, ``int64`` for a model folder's tokenizer).
        heldout: same for the held-out documents.
        corpus_sha256: hash of the whole corpus (:attr:`nmsparse.recipes.lm.corpus.Corpus.sha256`).
        tokenizer: the tokenizer's name (``"bytes"`` or the model folder's ``tokenizer.json``).
        vocab_size: number of token ids.
        train_documents / heldout_documents: document counts.
        heldout_names: names of the held-out documents (what the split chose).
        python: Python build the text came from.
    """

    train: torch.Tensor
    heldout: torch.Tensor
    corpus_sha256: str
    tokenizer: str
    vocab_size: int
    train_documents: int
    heldout_documents: int
    heldout_names: tuple[str, ...]
    python: str

    def describe(self) -> dict[str, object]:
        """JSON-ready description for run files (no tensors)."""
        return {
            "corpus_sha256": self.corpus_sha256,
            "tokenizer": self.tokenizer,
            "vocab_size": self.vocab_size,
            "train_tokens": int(self.train.numel()),
            "heldout_tokens": int(self.heldout.numel()),
            "train_documents": self.train_documents,
            "heldout_documents": self.heldout_documents,
            "python": self.python,
        }

    def train_batch(
        self, *, step: int, batch_size: int, context: int, seed: int, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-token targets ``(batch_size, context)`` (int64) from random training windows.

        Raises:
            ConfigError: ``context`` does not fit the training stream.
        """
        limit = self.train.numel() - context - 1
        if limit <= 0:
            raise ConfigError(
                f"LM data: context {context} does not fit the {self.train.numel()}-token training "
                f"stream; use a shorter context or more sources"
            )
        generator = torch.Generator().manual_seed(seed * _STEP_SEED_STRIDE + step)
        starts = torch.randint(0, limit + 1, (batch_size,), generator=generator)
        offsets = torch.arange(context + 1)
        windows = self.train[starts[:, None] + offsets].long()  # (B, T+1)
        return windows[:, :-1].contiguous().to(device), windows[:, 1:].contiguous().to(device)

    def heldout_batches(
        self, *, context: int, batch_size: int, max_tokens: int | None = None, device: torch.device | str = "cpu"
    ) -> Iterator[torch.Tensor]:
        """Non-overlapping held-out windows of ``context`` tokens, in order, ``batch_size`` at a time.

        Each window is scored on its tokens 2..``context`` given the ones before it (no context across windows),
        the convention of :func:`nmsparse.hf.perplexity`, so both report the same number for the same
        model.

        Args:
            context: window length.
            batch_size: windows per batch (the last batch may be smaller).
            max_tokens: use only about this many tokens (the first windows); ``None``: all.

        Raises:
            ConfigError: the held-out stream is shorter than one window.
        """
        if context < 2:
            raise ConfigError(f"LM data: held-out windows need a context >= 2, got {context}")
        count = self.heldout.numel() // context
        if max_tokens is not None:
            count = min(count, max(1, max_tokens // context))
        if count < 1:
            raise ConfigError(
                f"LM data: the held-out stream ({self.heldout.numel()} tokens) is shorter than one "
                f"context of {context}; hold out more documents (heldout_permille)"
            )
        windows = self.heldout[: count * context].long().view(count, context)
        for batch in windows.split(batch_size):
            yield batch.to(device)


def build_lm_data(
    *,
    sources: Sequence[str] = SOURCES,
    heldout_permille: int = 100,
    files: Sequence[str] | None = None,
    tokenizer: Any = None,
) -> LMData:
    """Collect the corpus, split it by document and tokenise both sides.

    Args:
        sources: embedded sources (:data:`~nmsparse.recipes.lm.corpus.SOURCES`), used when ``files`` is not given.
        heldout_permille: per mille of documents held out (by the hash of their names).
        files: *optional* ``--data`` files and folders (:func:`nmsparse.recipes.lm.text.read_documents`) instead
            of the embedded corpus.
        tokenizer: *optional* tokenizer with ``name``, ``vocab_size`` and ``encode_documents`` (a model folder's,
            :func:`nmsparse.recipes.lm.text.folder_tokenizer`); default :class:`ByteTokenizer`.

    Raises:
        ConfigError: unknown sources or a split that leaves a side empty.
        InputError: unreadable ``files`` (see :func:`~nmsparse.recipes.lm.text.read_documents`).
    """
    if files:
        from .text import load_text_corpus

        corpus = load_text_corpus(files)
    else:
        corpus = load_corpus(sources)
    try:
        train_docs, heldout_docs = corpus.split(heldout_permille)
    except ConfigError as exc:
        if not files:
            raise
        raise ConfigError(
            f"--data: {len(corpus.documents)} document(s) (paragraphs of text files, lines of .jsonl "
            f"files) do not give both training and held-out text ({exc}); give more text"
        ) from None
    tokenizer = tokenizer if tokenizer is not None else ByteTokenizer()
    return LMData(
        train=tokenizer.encode_documents([d.text for d in train_docs]),
        heldout=tokenizer.encode_documents([d.text for d in heldout_docs]),
        corpus_sha256=corpus.sha256,
        tokenizer=tokenizer.name,
        vocab_size=tokenizer.vocab_size,
        train_documents=len(train_docs),
        heldout_documents=len(heldout_docs),
        heldout_names=tuple(d.name for d in heldout_docs),
        python=corpus.python,
    )
