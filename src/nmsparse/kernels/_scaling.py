"""Exact per-block power-of-two rescaling, so that sums of scores can neither overflow nor lose subnormals.

Multiplying by a power of two is exact (unless the result leaves the normal range), so equal scores stay equal,
exactly representable sums stay exact and the order of scores and of sums is kept: a mask that is optimal for the
scaled block is optimal for the original one. Every block is scaled so that its largest ``|score|`` lies in
``[0.5, 1)``; an all-zero block is left alone. The factor ``2**-e`` itself may not be representable (``e`` is
-1063 for a block whose largest value is ``1e-320``), so it is applied in two steps whose factors always are.
"""

from __future__ import annotations

import torch

__all__ = ["scale_blocks"]


def scale_blocks(blocks: torch.Tensor) -> torch.Tensor:
    """``blocks [B, ...]`` (float32 or float64) scaled per block by a power of two to a max ``|x|`` in [0.5, 1).

    Example:
        >>> blocks = torch.tensor([[[1e-320, 0.0], [0.0, 0.0]], [[1.5e308, -1.0e308], [3.0, 0.0]]],
        ...                       dtype=torch.float64)
        >>> scaled = scale_blocks(blocks)
        >>> scaled.abs().amax(dim=(1, 2)).tolist()[0] >= 0.5, bool(torch.isfinite(scaled).all())
        (True, True)
    """
    if blocks.numel() == 0:
        return blocks
    amax = blocks.abs().reshape(blocks.shape[0], -1).amax(dim=1)
    exponent = torch.frexp(amax).exponent.to(torch.int64)  # amax = mantissa * 2**exponent; 0 for amax = 0
    first = torch.div(-exponent, 2, rounding_mode="floor")
    second = -exponent - first
    shape = (-1,) + (1,) * (blocks.dim() - 1)
    one = torch.ones((), dtype=blocks.dtype, device=blocks.device)
    factor_a = torch.ldexp(one, first.to(blocks.dtype)).reshape(shape)
    factor_b = torch.ldexp(one, second.to(blocks.dtype)).reshape(shape)
    return blocks * factor_a * factor_b
