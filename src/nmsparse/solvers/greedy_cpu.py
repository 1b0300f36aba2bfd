"""Compiled CPU fast path of the greedy transposable solver (numba), twin of ``greedy.greedy_blocks``.

Same rule, same tie order (a stable descending sort: lower flat index first), so masks are bit-equal to the
vectorised torch version, which stays the reference and the path for CUDA tensors.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

__all__ = ["greedy_blocks_cpu", "HAVE_NUMBA"]

try:
    import numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without numba
    numba = None
    HAVE_NUMBA = False

#: Blocks per parallel work item: scratch arrays are allocated once per item, not once per block.
_ITEM = 256


def _greedy_kernel(blocks: np.ndarray, n: int, keep: np.ndarray) -> None:  # pragma: no cover - compiled
    nblocks, m, _ = blocks.shape
    mm = m * m
    items = (nblocks + _ITEM - 1) // _ITEM
    for item in _prange(items):
        row_count = np.zeros(m, np.int32)
        col_count = np.zeros(m, np.int32)
        for b in range(item * _ITEM, min(nblocks, (item + 1) * _ITEM)):
            flat = blocks[b].reshape(mm)
            # stable ascending sort of -score == stable descending sort of score, ties by lower index
            order = np.argsort(-flat, kind="mergesort")
            row_count[:] = 0
            col_count[:] = 0
            kept = 0
            for t in range(mm):
                idx = order[t]
                r = idx // m
                c = idx - r * m
                if row_count[r] < n and col_count[c] < n:
                    keep[b, r, c] = True
                    row_count[r] += 1
                    col_count[c] += 1
                    kept += 1
                    if kept == n * m:
                        break


if HAVE_NUMBA:
    _prange = numba.prange
    _compiled = numba.njit(cache=True, parallel=True, nogil=True)(_greedy_kernel)
else:  # pragma: no cover
    _prange = range
    _compiled = None


def greedy_blocks_cpu(blocks: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy mask of CPU ``blocks [B, m, m]`` (float32/float64) with the compiled kernel.

    Falls back to the vectorised torch version when numba is missing.
    """
    if _compiled is None:  # pragma: no cover
        from .greedy import greedy_blocks

        warnings.warn("numba is not installed: greedy masks use the slower vectorised torch path", stacklevel=2)
        return greedy_blocks(blocks, n)
    array = blocks.detach().contiguous().numpy()
    keep = np.zeros(array.shape, dtype=np.bool_)
    _compiled(array, n, keep)
    return torch.from_numpy(keep)
