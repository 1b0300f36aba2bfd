"""Byte-level tokenizer: a token is one UTF-8 byte (256 symbols); byte 0 (NUL) separates documents.

Why bytes and not a trained BPE: it needs no dependency, no training step and no vocabulary file (so nothing
beside the corpus hash decides what the model sees), every string round-trips exactly, and the loss per token
is directly bits (or nats) per byte, comparable across runs and corpora. A small model on bytes still has to
spend capacity on spelling and syntax, which is what makes sparsity structures separate at laptop scale. (A
BPE from ``tokenizers`` would shorten sequences about 3x, but it adds an optional dependency and a trained
artefact to the run for a gain the default model size does not need.)

Example:
    >>> tok = ByteTokenizer()
    >>> ids = tok.encode("héllo")
    >>> ids, tok.decode(ids)
    ([104, 195, 169, 108, 108, 111], 'héllo')
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

__all__ = ["ByteTokenizer", "VOCAB_SIZE", "EOT"]

#: Number of symbols.
VOCAB_SIZE = 256
#: End-of-document token (the NUL byte, which the text never contains: :meth:`ByteTokenizer.encode` drops it).
EOT = 0


class ByteTokenizer:
    """UTF-8 bytes as token ids; :data:`EOT` (NUL) marks document ends."""

    vocab_size = VOCAB_SIZE
    eot = EOT
    name = "bytes"

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes of ``text`` without NULs (which are reserved for :data:`EOT`)."""
        return list(text.encode("utf-8").replace(b"\x00", b""))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` (:data:`EOT` becomes a blank line; invalid UTF-8 is replaced, never an error)."""
        data = bytes(int(i) for i in ids)
        return data.replace(b"\x00", b"\n\n").decode("utf-8", errors="replace")

    def encode_documents(self, texts: Sequence[str]) -> torch.Tensor:
        """One ``uint8`` stream: each document's bytes followed by :data:`EOT`.

        Example:
            >>> ByteTokenizer().encode_documents(["ab", "c"]).tolist()
            [97, 98, 0, 99, 0]
        """
        data = b"".join(t.encode("utf-8").replace(b"\x00", b"") + b"\x00" for t in texts)
        return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)
