"""Exact transposable masks for tiny blocks by enumeration: score every valid block mask, keep the best.

For ``m = 4`` there are only 24, 90 and 24 valid ``4 x 4`` masks for ``n = 1, 2, 3``, so scoring all of them and
taking the first maximum is an exact solver, vectorised over all blocks, on any device. The computation is
:func:`nmsparse.kernels.reference.exact_enum_blocks`, the twin of the Triton kernel (one implementation).
"""

from __future__ import annotations

import torch

from ..errors import PatternError
from ..kernels.reference import MAX_ENUM_M, _tables, exact_enum_blocks

__all__ = ["valid_block_masks", "enumerate_blocks", "MAX_ENUM_M"]


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
        raise PatternError(f"valid_block_masks: need 2 <= m <= {MAX_ENUM_M}, got {m}; use exact_blocks for larger m")
    if not 1 <= n < m:
        raise PatternError(f"valid_block_masks: need 1 <= n < m, got n={n}, m={m}")
    return _tables(m, n, "cpu")[3].clone()  # the enumeration's own candidates, in its order


def enumerate_blocks(blocks: torch.Tensor, n: int) -> torch.Tensor:
    """Optimal transposable masks of ``blocks [B, m, m]`` (``m <= 4``) by scoring every valid mask.

    The one torch implementation, :func:`nmsparse.kernels.reference.exact_enum_blocks` (the twin of the Triton
    exact 4x4 kernel): float64 sums on every device, float64 blocks first scaled per block by a power of two
    (exact, order-preserving) so the sums can neither overflow nor vanish. Among masks with exactly equal sums,
    the one keeping the lower flat indices wins (see :func:`valid_block_masks`).

    Returns:
        ``torch.bool [B, m, m]`` on ``blocks``' device, exactly ``n`` kept per row and column.
    """
    return exact_enum_blocks(blocks, n)
