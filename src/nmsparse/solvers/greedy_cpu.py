"""Compiled CPU twin of the greedy transposable solver (numba): the ``"numba"`` backend of greedy methods.

Same rule, same tie order (a stable descending sort: lower flat index first), so masks are bit-equal to the
vectorised torch version (:func:`nmsparse.solvers.greedy.greedy_blocks`), which stays the reference and the path
for other devices. numba is imported on first use, not at package import; the kernel is compiled with
``cache=True`` (numba's on-disk cache), so only the first process ever pays the compilation, and
:func:`nmsparse.solvers.warmup` moves that cost out of timed work.

A first call never waits for the compiler (issue 16): it answers with the bit-equal torch version, then starts
the compile (or cache load) of the kernel for its dtype on a background thread; until that is done, masks keep
coming from the torch version, so the result is the same.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Callable

import numpy as np
import torch

from ._threads import build_done, run_split, start_build
from .greedy import blockwise_greedy, greedy_blocks
from .registry import numba_available

__all__ = ["greedy_blocks_cpu", "greedy_kernel", "greedy_numba_matrix", "greedy_repair_numba_matrix"]

#: Blocks per parallel work item: scratch arrays are allocated once per item, not once per block.
_ITEM = 256

# Serial (``range``): threads split the blocks instead (see :mod:`nmsparse.solvers._threads`; a ``numba.prange``
# kernel took several times longer to compile, which every fresh machine paid on its first mask).
_prange = range


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


_KERNEL: Callable[[np.ndarray, int, np.ndarray], None] | None = None
_NO_NUMBA = "numba is not installed: greedy masks use the slower vectorised torch path"
_LOCK = threading.Lock()


def _compile(dtype: np.dtype) -> None:
    """Compile (or load from numba's cache) the kernel for ``dtype`` blocks: one call on a tiny block."""
    kernel = greedy_kernel()
    if kernel is not None:
        kernel(np.zeros((1, 2, 2), dtype=dtype), 1, np.zeros((1, 2, 2), dtype=np.bool_))


def greedy_kernel() -> Callable[[np.ndarray, int, np.ndarray], None] | None:
    """The compiled kernel ``(blocks [B, m, m] float32/float64, n, keep bool [B, m, m]) -> None``, or ``None``
    without numba. Compiling happens on the first call for each dtype (or loads numba's on-disk cache)."""
    global _KERNEL
    if _KERNEL is None:
        with _LOCK:
            if _KERNEL is None:
                try:
                    import numba
                except ImportError:
                    return None
                _KERNEL = numba.njit(cache=True, nogil=True)(_greedy_kernel)
    return _KERNEL


def greedy_blocks_cpu(blocks: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy mask of CPU ``blocks [B, m, m]`` (float32/float64) with the compiled kernel.

    Until the kernel for the blocks' dtype is compiled (on a background thread, started by the first call), and
    when numba is missing (one warning), the vectorised torch version answers: the same mask.
    """
    array = blocks.detach().to("cpu").contiguous().numpy()
    build = f"greedy-{array.dtype.name}"
    if not build_done(build):  # the first call answers first, then starts the compile
        if not numba_available():
            warnings.warn(_NO_NUMBA, stacklevel=2)
            return greedy_blocks(blocks, n)
        keep_torch = greedy_blocks(blocks, n)
        start_build(build, functools.partial(_compile, array.dtype))
        return keep_torch
    kernel = greedy_kernel()
    if kernel is None:
        warnings.warn(_NO_NUMBA, stacklevel=2)
        return greedy_blocks(blocks, n)
    keep = np.zeros(array.shape, dtype=np.bool_)
    if array.shape[0]:

        def solve(a: int, b: int) -> None:
            kernel(array[a:b], n, keep[a:b])

        run_split(solve, array.shape[0], min_blocks=max(16, 8192 // array.shape[1] ** 2))
    return torch.from_numpy(keep).to(blocks.device)


greedy_numba_matrix = blockwise_greedy(greedy_blocks_cpu, repair=False, label="greedy")
greedy_repair_numba_matrix = blockwise_greedy(greedy_blocks_cpu, repair=True, label="greedy+repair")
