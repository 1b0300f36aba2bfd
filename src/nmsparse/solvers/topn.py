"""Per-group top-n: keeps the n largest scores of every m consecutive ones (optimal for plain n:m).

Ties go to the lower index (a stable descending sort), so masks are deterministic.
"""

from __future__ import annotations

import torch

from ..pattern import NMPattern

__all__ = ["topn_groups", "topn_matrix"]

_CHUNK_GROUPS = 1 << 20


def topn_groups(groups: torch.Tensor, n: int) -> torch.Tensor:
    """``groups [G, m]`` -> bool ``[G, m]`` keeping the ``n`` largest per row, lower index first on ties."""
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices[..., :n]
    mask = torch.zeros(groups.shape, dtype=torch.bool, device=groups.device)
    return mask.scatter_(-1, order, True)


def topn_matrix(scores: torch.Tensor, pattern: NMPattern, progress: bool | None = None) -> torch.Tensor:
    """Plain n:m mask of a ``[rows, K]`` score matrix (groups run along K)."""
    groups = scores.reshape(-1, pattern.m)
    out = torch.empty(groups.shape, dtype=torch.bool, device=scores.device)
    for start in range(0, groups.shape[0], _CHUNK_GROUPS):
        out[start : start + _CHUNK_GROUPS] = topn_groups(groups[start : start + _CHUNK_GROUPS], pattern.n)
    return out.reshape(scores.shape)
