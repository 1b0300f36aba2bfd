"""PLACEHOLDER: exact transposable solver (being written)."""

from __future__ import annotations

import torch

from ..pattern import NMPattern


def exact_matrix(scores: torch.Tensor, pattern: NMPattern, progress: bool | None = None) -> torch.Tensor:
    raise NotImplementedError
