"""The paper's 2-approximation for transposable n:m masks, vectorised over all blocks (the torch backend).

Visit the entries of each ``m x m`` block by decreasing score (ties: lower flat index first) and keep an entry
when its row and its column both hold fewer than ``n``. This keeps at least half of the optimum (in practice
98-99%), but can leave some rows and columns short of ``n``: valid (at most ``n``), but wasted capacity.

``repair=True`` then fills the short rows and columns with the best swap along an augmenting path of length
three (add ``(r, c1)``, drop ``(r1, c1)``, add ``(r1, c)`` for a short row ``r`` and a short column ``c``),
which always exists in a greedy (maximal) mask, until every row and column holds exactly ``n``.

This module is the reference: the compiled CPU twin (:mod:`nmsparse.solvers.greedy_cpu`) imports it, never the
other way round.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..pattern import NMPattern
from ._blocks import solve_blocks
from ._scaling import scale_blocks

__all__ = ["greedy_blocks", "repair_blocks", "greedy_matrix", "greedy_repair_matrix", "blockwise_greedy"]


def greedy_blocks(blocks: torch.Tensor, n: int) -> torch.Tensor:
    """``blocks [B, m, m]`` scores -> bool ``[B, m, m]`` greedy mask (at most ``n`` per row and column)."""
    nblocks, m, _ = blocks.shape
    device = blocks.device
    order = torch.sort(blocks.reshape(nblocks, m * m), dim=1, descending=True, stable=True).indices
    base = torch.arange(nblocks, device=device).unsqueeze(1)
    # Linear indices into flat per-block counters / mask, visit-step major: (m*m, B), contiguous per step.
    row_idx = (base * m + order // m).t().contiguous()
    col_idx = (base * m + order % m).t().contiguous()
    keep_idx = (base * (m * m) + order).t().contiguous()
    row_count = torch.zeros(nblocks * m, dtype=torch.int32, device=device)
    col_count = torch.zeros(nblocks * m, dtype=torch.int32, device=device)
    keep = torch.zeros(nblocks * m * m, dtype=torch.bool, device=device)
    for step in range(m * m):
        r, c = row_idx[step], col_idx[step]
        ok = (row_count[r] < n) & (col_count[c] < n)
        keep[keep_idx[step]] = ok
        ok_int = ok.to(torch.int32)
        row_count[r] += ok_int  # one entry per block per step: indices are unique
        col_count[c] += ok_int
    return keep.reshape(nblocks, m, m)


def repair_blocks(blocks: torch.Tensor, keep: torch.Tensor, n: int) -> torch.Tensor:
    """Fill short rows/columns of a maximal mask ``keep`` up to exactly ``n`` with best 3-edge swaps.

    The swap gains are computed on the blocks scaled per block by a power of two (exact, order-preserving), so
    they cannot overflow for scores near the dtype's largest value.
    """
    keep = keep.clone()
    m = blocks.shape[-1]
    if blocks.dtype not in (torch.float32, torch.float64):
        blocks = blocks.float()
    blocks = scale_blocks(blocks)
    neg_inf = torch.tensor(float("-inf"), dtype=blocks.dtype, device=blocks.device)
    while True:
        row_count = keep.sum(dim=2)  # (B, m)
        col_count = keep.sum(dim=1)
        short = (row_count < n).any(dim=1).nonzero().squeeze(1)
        if short.numel() == 0:
            return keep
        s, k = blocks[short], keep[short]  # (A, m, m)
        ar = torch.arange(short.numel(), device=blocks.device)
        r = (row_count[short] < n).to(torch.int8).argmax(dim=1)  # first short row
        c = (col_count[short] < n).to(torch.int8).argmax(dim=1)  # first short column
        row_r_s, row_r_k = s[ar, r], k[ar, r]  # (A, m) over c1
        col_c_s, col_c_k = s[ar, :, c], k[ar, :, c]  # (A, m) over r1
        # gain[a, r1, c1] = s[r, c1] - s[r1, c1] + s[r1, c]
        gain = row_r_s.unsqueeze(1) - s + col_c_s.unsqueeze(2)
        valid = (~row_r_k).unsqueeze(1) & k & (~col_c_k).unsqueeze(2)
        best = torch.where(valid, gain, neg_inf).reshape(-1, m * m).argmax(dim=1)
        r1, c1 = best // m, best % m
        k[ar, r, c1] = True
        k[ar, r1, c1] = False
        k[ar, r1, c] = True
        keep[short] = k


def blockwise_greedy(
    block_greedy: Callable[[torch.Tensor, int], torch.Tensor], *, repair: bool, label: str
) -> Callable[[torch.Tensor, NMPattern, bool | None], torch.Tensor]:
    """A matrix solver from a per-block greedy function (``repair``: then fill to exactly ``n``)."""

    def solve(scores: torch.Tensor, pattern: NMPattern, progress: bool | None = None) -> torch.Tensor:
        n = pattern.n

        def fn(blocks: torch.Tensor) -> torch.Tensor:
            keep = block_greedy(blocks, n)
            return repair_blocks(blocks, keep, n) if repair else keep

        return solve_blocks(scores, pattern.m, fn, desc=f"{label} {pattern} masks", progress_bar=progress)

    return solve


greedy_matrix = blockwise_greedy(greedy_blocks, repair=False, label="greedy")
greedy_matrix.__doc__ = "Greedy transposable mask of a ``[rows, K]`` score matrix (vectorised torch)."
greedy_repair_matrix = blockwise_greedy(greedy_blocks, repair=True, label="greedy+repair")
greedy_repair_matrix.__doc__ = "Greedy transposable mask, then repaired to exactly ``n`` per row and column."
