"""Run a per-block solver over every aligned m x m block of a score matrix, in memory-bounded chunks."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._logging import progress
from ..layout import from_blocks, to_blocks

#: Blocks solved per chunk: bounds peak memory (a chunk of 8x8 fp32 blocks is 16 MiB) and feeds the bar.
CHUNK_BLOCKS = 1 << 16


def solve_blocks(
    scores: torch.Tensor,
    m: int,
    block_fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    desc: str,
    progress_bar: bool | None = None,
    chunk: int = CHUNK_BLOCKS,
) -> torch.Tensor:
    """Apply ``block_fn`` (``[B, m, m]`` scores -> ``[B, m, m]`` bool) to all blocks of ``scores [rows, K]``."""
    rows, cols = scores.shape
    blocks = to_blocks(scores, m).contiguous()  # (B, m, m)
    total = blocks.shape[0]
    out = torch.empty(blocks.shape, dtype=torch.bool, device=scores.device)
    starts = range(0, total, chunk)
    show = progress_bar if progress_bar is not None else (None if total > 4 * chunk else False)
    for start in progress(starts, desc=desc, total=len(starts), enabled=show, unit="chunk"):
        out[start : start + chunk] = block_fn(blocks[start : start + chunk])
    return from_blocks(out, rows, cols)
