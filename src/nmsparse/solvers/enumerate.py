"""Exact transposable masks for tiny blocks by enumeration: score every valid block mask, keep the best.

For ``m = 4`` there are only 24, 90 and 24 valid ``4 x 4`` masks for ``n = 1, 2, 3``, so one matrix product
of the flattened blocks with the pattern matrix, then an argmax, is an exact solver, vectorised over all
blocks, on any device.
"""

from __future__ import annotations

from functools import cache

import torch

from ..errors import PatternError
from ._scaling import scale_blocks

__all__ = ["valid_block_masks", "enumerate_blocks", "MAX_ENUM_M"]

#: Largest block side enumerated (2^(m*m) candidate masks are filtered once per (m, n)).
MAX_ENUM_M = 4
#: Blocks scored per matrix product on the CPU (the float64 sums of one sub-chunk stay in cache).
_CPU_SUBCHUNK = 2048


@cache
def _valid_block_masks_cpu(m: int, n: int) -> torch.Tensor:
    cells = m * m
    # Candidate c has flat index f kept when bit (cells - 1 - f) is set: flat index 0 is the most significant
    # bit, so walking c from high to low lists masks that keep lower flat indices first.
    codes = torch.arange((1 << cells) - 1, -1, -1, dtype=torch.int64)
    shifts = torch.arange(cells - 1, -1, -1, dtype=torch.int64)
    bits = ((codes.unsqueeze(1) >> shifts) & 1).to(torch.bool).reshape(-1, m, m)  # (2^cells, m, m)
    ok = (bits.sum(dim=2) == n).all(dim=1) & (bits.sum(dim=1) == n).all(dim=1)
    return bits[ok].contiguous()


def valid_block_masks(m: int, n: int) -> torch.Tensor:
    """Every ``m x m`` bool mask with exactly ``n`` per row and column, lower-flat-index-first order.

    The order is the masks' bit vectors (flat index 0 most significant) sorted descending, so among masks with
    equal kept sums the first one in this list keeps the lowest flat indices.

    Args:
        m: block side, ``2 <= m <= 4``.
        n: kept per row and column, ``1 <= n < m``.

    Returns:
        ``torch.bool`` tensor ``[P, m, m]`` on the CPU (``P`` = 24, 90, 24 for ``m = 4`` and ``n = 1, 2, 3``).

    Example:
        >>> valid_block_masks(4, 2).shape
        torch.Size([90, 4, 4])
        >>> valid_block_masks(4, 2)[0].int().tolist()
        [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    """
    if not 2 <= m <= MAX_ENUM_M:
        raise PatternError(
            f"valid_block_masks: need 2 <= m <= {MAX_ENUM_M}, got {m}; use exact_blocks for larger m"
        )
    if not 1 <= n < m:
        raise PatternError(f"valid_block_masks: need 1 <= n < m, got n={n}, m={m}")
    return _valid_block_masks_cpu(m, n).clone()


def enumerate_blocks(blocks: torch.Tensor, n: int) -> torch.Tensor:
    """Optimal transposable masks of ``blocks [B, m, m]`` (``m <= 4``) by scoring every valid mask.

    Sums are float64 on the CPU; on CUDA they use the input's dtype (fp32 or fp64). Each block is first scaled by
    a power of two (exact, order-preserving) to a largest ``|score|`` in [0.5, 1), so the sums can neither
    overflow (scores near the dtype's maximum) nor vanish (subnormal scores). Among masks with exactly equal
    sums, the one keeping the lower flat indices wins (see :func:`valid_block_masks`).

    Returns:
        ``torch.bool [B, m, m]`` on ``blocks``' device, exactly ``n`` kept per row and column.
    """
    blocks = blocks.detach()
    nblocks, m, _ = blocks.shape
    patterns = _valid_block_masks_cpu(m, n)  # (P, m, m)
    flat = blocks.reshape(nblocks, m * m)
    if blocks.device.type == "cpu":
        # float64 sums (exact for fp32 scores of similar magnitude, so exact ties stay ties). Sub-chunks keep
        # the (chunk, P) sums in cache: one big product would write and page-fault P * 8 bytes per block.
        pattern_matrix = patterns.reshape(-1, m * m).to(torch.float64).t().contiguous()  # (m*m, P)
        best = torch.empty(nblocks, dtype=torch.int64)
        sums = torch.empty(min(nblocks, _CPU_SUBCHUNK), pattern_matrix.shape[1], dtype=torch.float64)
        for start in range(0, nblocks, _CPU_SUBCHUNK):
            part = scale_blocks(flat[start:start + _CPU_SUBCHUNK].to(torch.float64))
            out = sums[:part.shape[0]]
            torch.mm(part, pattern_matrix, out=out)  # (chunk, P)
            torch.argmax(out, dim=1, out=best[start:start + part.shape[0]])  # first maximum on exact ties
        return patterns[best]
    sum_dtype = blocks.dtype if blocks.dtype in (torch.float32, torch.float64) else torch.float32
    pattern_matrix = patterns.reshape(-1, m * m).to(device=blocks.device, dtype=sum_dtype)  # (P, m*m)
    # (B, P) -> (B,), the first maximum on ties
    best = (scale_blocks(flat.to(sum_dtype)) @ pattern_matrix.t()).argmax(dim=1)
    return patterns.to(blocks.device)[best]
