"""Exact transposable n:m masks: the best mask of every aligned ``m x m`` block, batched over all blocks.

Per block the task is a maximum-weight b-matching on the complete bipartite graph K(m, m): keep exactly ``n``
entries in every row and every column and maximise the kept score. Two exact solvers share the work:

* ``m = 4``: enumerate every valid block mask (24, 90, 24 of them for ``n = 1, 2, 3``) and take the argmax of
  one matrix product (:mod:`nmsparse.solvers.enumerate`). Runs on the input's device.
* ``m >= 8``: min-cost flow by successive shortest paths, compiled with numba (a serial ``nogil`` kernel run on
  slices of the blocks by a thread pool: see :mod:`nmsparse.solvers._threads`). It
  starts from the best mask that ignores the column limits (row-wise top-n, optimal for its own column counts,
  with dual potentials that certify it), then moves one unit from an over-full to an under-full column along a
  shortest alternating path (Dijkstra on reduced costs from all over-full columns at once, stopping at the
  first under-full column) until every column holds ``n``. On Gaussian 8x8 blocks at 4:8 that is about 4.4
  augmentations per block instead of the ``n * m = 32`` of a cold start. For ``n > m / 2`` it solves the
  complement (drop ``m - n``), whose warm start is cheaper. Always runs on the CPU, in float64.

  ``m = 8`` with exactly ``n`` (4:8-T, SparseGPT's inner loop) has a kernel of its own, :func:`flow8_kernel`
  (issue 15): the same flow and the same masks bit for bit, about three times faster (1.5 instead of 5 us per
  8x8 block on one core), compiled only when needed. Both kernels scale each block by a power of two (so sums
  neither overflow nor vanish) only where skipping the scale could change a result (see ``_SCALE_BIG``).

  The first call of a process does not wait for numba (issue 16: compiling the kernel takes seconds): up to
  ``_TWIN_WORK`` it is answered by the kernel's vectorised numpy twin (:func:`_flow_blocks_np`, the same steps
  in lockstep over the blocks: the same masks bit for bit, several times slower), and the kernel then compiles
  (or loads from numba's on-disk cache) on a background thread; calls keep taking the twin until it is ready.

``exact_blocks(..., at_most=True)`` solves the relaxation "at most ``n`` per row and column" instead (same
kernel, plus a zero-cost bypass from every row to the sink), whose optimum can be larger: see
:func:`exact_blocks`.

Threads: numba's thread count (``NUMBA_NUM_THREADS``, all cores by default, or ``numba.set_num_threads``)
Python threads each run the compiled kernel on a slice of the blocks. torch's OpenMP runtime spin-waits between
parallel regions; on a machine shared with other busy processes that spinning can cost several times the useful
work, and small torch ops wait for a descheduled team thread (measured on a 2-core machine at load ~4: ``x.max(1)``
of a 256x256 tensor took over 1 ms 40-70% of the time, 5-25 ms each, with or without a solve and with
``NUMBA_NUM_THREADS=1``). ``OMP_WAIT_POLICY=PASSIVE``, set before torch is imported, or one torch thread avoids it.
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

from .._logging import logger
from ..errors import PatternError
from ..kernels.reference import check_blocks
from ..pattern import NMPattern
from ._blocks import solve_blocks
from ._threads import run_split, start_build
from .enumerate import MAX_ENUM_M, enumerate_blocks
from .registry import numba_available

__all__ = [
    "exact_matrix",
    "exact_blocks",
    "flow_blocks",
    "flow_kernel",
    "flow8_kernel",
    "block_kernel",
    "KERNEL_INFO",
    "enumerate_matrix",
    "flow_matrix_numba",
    "flow_matrix_python",
]

# The kernel's loop over runs of blocks is serial (``range``); threads split the blocks instead (issue 16: a
# ``numba.prange`` kernel took three times longer to compile, which every fresh machine paid on its first mask).
prange = range

#: Largest number of float64 values handed to one kernel call (32 MiB): bounds the float64 copy of a chunk.
_KERNEL_VALUES = 1 << 22
#: Contiguous runs of blocks per kernel call, each with its own scratch arrays. The kernel is serial and threads
#: split the blocks before the call (see :mod:`nmsparse.solvers._threads`), so one run: scratch is allocated once
#: per call (256 runs per call cost more allocations than the solve of a small slice).
_KERNEL_RUNS = 1

#: Largest first call (``blocks * m**3``; 8192 blocks of 8x8, 2048 of 16x16) answered by the numpy twin of the
#: kernel while numba compiles it in the background (about 0.1-0.3 s on a quiet 2-core machine).
_TWIN_WORK = 1 << 23

#: Filled on first use: ``backend`` ("numba" or "python") and ``compile_s`` (seconds of the first call,
#: including numba's compilation or its load from the on-disk cache); ``compile_m8_s`` likewise for the m = 8
#: kernel (:func:`flow8_kernel`), once it is built.
KERNEL_INFO: dict[str, object] = {}


#: The kernels' per-block power-of-two scale (to a largest ``|score|`` in [0.5, 1)) is skipped where it provably
#: changes nothing (issue 15): a block whose largest ``|score|`` is below 1 (the scale is up by ``2**k``: exact for
#: every value), or below ``_SCALE_BIG`` with every nonzero ``|score|`` at least ``_SCALE_TINY`` (the scale is down
#: by at most ``2**-64``: exact, as no scaled value comes near the subnormal range). Every float the kernels make is
#: a sum or difference of scores and of earlier sums, and such steps commute with an exact power-of-two scale unless
#: a result overflows (here every value stays within a small multiple of ``2**64``: potentials are path lengths of
#: at most ``2m`` arcs) or is rounded in the subnormal range (a sum or difference of two floats never is: a
#: subnormal result is exact). Compares are scale-free, so the masks are bit for bit those of the scaled block.
_SCALE_BIG = 2.0**64
_SCALE_TINY = 2.0**-900

# The m = 8 kernel (_flow8_py) keeps all its floats in one scratch vector, at these offsets: the scores (row-major),
# the kept mask as two matrices of arc costs (at _ARM8 + 8 j + i: 0 where row i keeps column j, so the residual
# arc column j -> row i exists, inf elsewhere; at _ACM8 + 8 i + k: 0 where row i does not keep column k, so the
# arc row i -> column k exists, inf elsewhere), the row and column potentials, the Dijkstra distances (columns,
# then rows) and the settled flags (inf once settled, 0 before: added to a distance, they hide settled nodes).
_M8 = 8
_S8 = 0
_ARM8 = 64
_ACM8 = 128
_PR8 = 192
_PC8 = 200
_DIST8 = 208
_DONE8 = 224
_SCRATCH8 = 240


def _flow_blocks_py(blocks: np.ndarray, n: int, at_most: bool, out: np.ndarray) -> None:  # pragma: no cover
    """Optimal masks of ``blocks`` (float64 ``[B, m, m]``) written into ``out`` (bool ``[B, m, m]``).

    ``at_most=False``: exactly ``n`` per row and column. ``at_most=True``: at most ``n``; a row's unused
    capacity flows straight to the sink ``z`` at zero cost (a bypass arc), so negative scores are never kept
    and a row or column may stay short when that keeps more.

    Costs are ``-score``. Reduced costs ``rc[i, j] = -s[i, j] + pr[i] - pc[j]`` (row potentials ``pr``, column
    potentials ``pc``, sink potential ``pz``) stay ``>= 0`` on every residual arc, so there is never a
    negative cycle: every intermediate mask is optimal for its own column counts, and the last one is optimal.
    """
    nblocks = blocks.shape[0]
    m = blocks.shape[1]
    inf = np.inf
    # Exactly n with n > m/2: solve the complement (drop m - n per row and column, minimising the dropped
    # sum). The same flow, but a cheaper warm start (top-(m-n) instead of top-n per row).
    flip = 2 * n > m and not at_most
    sign = 1.0
    if flip:
        n = m - n
        sign = -1.0
    runs = min(nblocks, _KERNEL_RUNS)
    for run in prange(runs):
        start = run * nblocks // runs
        stop = (run + 1) * nblocks // runs
        s = np.empty((m, m), dtype=np.float64)
        x = np.zeros((m, m), dtype=np.bool_)
        pr = np.empty(m, dtype=np.float64)
        pc = np.empty(m, dtype=np.float64)
        dist_r = np.empty(m, dtype=np.float64)
        dist_c = np.empty(m, dtype=np.float64)
        done_r = np.empty(m, dtype=np.bool_)
        done_c = np.empty(m, dtype=np.bool_)
        pred_r = np.empty(m, dtype=np.int64)  # column a row was reached from (over a kept entry)
        pred_c = np.empty(m, dtype=np.int64)  # row a column was reached from (an unkept entry); -1: source
        deg = np.empty(m, dtype=np.int64)
        for b in range(start, stop):
            # Scale by a power of two (exact, order-preserving) to a largest |score| in [0.5, 1), so sums of up
            # to 2m scores can neither overflow (scores near 1e308) nor vanish (subnormal scores). ldexp of each
            # value, not a product with 2**-e: that factor itself overflows for a subnormal maximum.
            # When the scale provably changes nothing (see _SCALE_BIG), the scores are used as they are.
            amax = 0.0
            amin = inf
            for i in range(m):
                for j in range(m):
                    v = blocks[b, i, j]
                    s[i, j] = sign * v
                    a = abs(v)
                    if a > amax:
                        amax = a
                    if 0.0 < a < amin:
                        amin = a
            if not (amax < 1.0 or (amax < _SCALE_BIG and amin >= _SCALE_TINY)):
                shift = -math.frexp(amax)[1]
                for i in range(m):
                    for j in range(m):
                        s[i, j] = sign * math.ldexp(blocks[b, i, j], shift)

            # Warm start: the best mask without column limits, top-n of every row (ties: lower column; with
            # at_most, only scores >= 0). pr[i] = the best unkept score (at least 0 with at_most) makes
            # rc >= 0 off the mask and <= 0 on it, with pc = 0 and pz = 0.
            pz = 0.0
            for j in range(m):
                deg[j] = 0
                pc[j] = 0.0
            for i in range(m):
                for j in range(m):
                    x[i, j] = False
                for _ in range(n):
                    best = -1
                    best_val = 0.0
                    for j in range(m):
                        if not x[i, j] and (best < 0 or s[i, j] > best_val):
                            best = j
                            best_val = s[i, j]
                    if at_most and best_val < 0.0:
                        break
                    x[i, best] = True
                    deg[best] += 1
                thr = 0.0 if at_most else -inf
                for j in range(m):
                    if not x[i, j] and s[i, j] > thr:
                        thr = s[i, j]
                pr[i] = thr
            excess = 0
            for j in range(m):
                if deg[j] > n:
                    excess += deg[j] - n

            while excess > 0:
                # Dijkstra on reduced costs from every over-full column at once. Residual arcs: column j ->
                # row i where kept (cost +s, reduced -rc >= 0), row i -> column k where not kept (reduced rc).
                # Targets: an under-full column (exactly n) or the sink z (at most n), which is reached from
                # a row (drop one of its entries, reduced pr - pz) or from an under-full column (pc - pz).
                for j in range(m):
                    dist_c[j] = inf
                    done_c[j] = False
                    pred_c[j] = -1
                    dist_r[j] = inf
                    done_r[j] = False
                    pred_r[j] = -1
                dist_z = inf
                pred_z = -1
                z_from_row = False
                # Over-full columns are the sources (distance 0): settle them and relax their kept rows.
                for j in range(m):
                    if deg[j] > n:
                        dist_c[j] = 0.0
                        done_c[j] = True
                        for i in range(m):
                            if x[i, j]:
                                r = s[i, j] - pr[i] + pc[j]
                                if r < 0.0:
                                    r = 0.0  # round-off only
                                if r < dist_r[i]:
                                    dist_r[i] = r
                                    pred_r[i] = j
                target = -1
                reach = 0.0
                while True:
                    node = -1
                    is_col = False
                    best_d = inf
                    for j in range(m):
                        if not done_c[j] and dist_c[j] < best_d:
                            best_d = dist_c[j]
                            node = j
                            is_col = True
                    for i in range(m):
                        if not done_r[i] and dist_r[i] < best_d:
                            best_d = dist_r[i]
                            node = i
                            is_col = False
                    if at_most and dist_z <= best_d and pred_z >= 0:
                        target = pred_z
                        reach = dist_z
                        break
                    if node < 0:
                        break  # unreachable for a feasible problem (1 <= n < m)
                    if is_col:
                        done_c[node] = True
                        if deg[node] < n:
                            if not at_most:
                                target = node
                                reach = best_d
                                break
                            r = pc[node] - pz
                            if r < 0.0:
                                r = 0.0
                            if best_d + r < dist_z:
                                dist_z = best_d + r
                                pred_z = node
                                z_from_row = False
                        for i in range(m):
                            if x[i, node] and not done_r[i]:
                                r = s[i, node] - pr[i] + pc[node]
                                if r < 0.0:
                                    r = 0.0
                                nd = best_d + r
                                if nd < dist_r[i]:
                                    dist_r[i] = nd
                                    pred_r[i] = node
                    else:
                        done_r[node] = True
                        if at_most:
                            r = pr[node] - pz
                            if r < 0.0:
                                r = 0.0
                            if best_d + r < dist_z:
                                dist_z = best_d + r
                                pred_z = node
                                z_from_row = True
                        for k in range(m):
                            if not x[node, k] and not done_c[k]:
                                r = pr[node] - pc[k] - s[node, k]
                                if r < 0.0:
                                    r = 0.0
                                nd = best_d + r
                                if nd < dist_c[k]:
                                    dist_c[k] = nd
                                    pred_c[k] = node
                if target < 0:
                    break
                # New potentials: distances, capped at the target's (nodes not settled are at least that far).
                for j in range(m):
                    pc[j] += dist_c[j] if done_c[j] else reach
                    pr[j] += dist_r[j] if done_r[j] else reach
                pz += reach
                # Flip the alternating path back from the target to its source column.
                if at_most and z_from_row:
                    col = pred_r[target]  # the row drops this entry; its capacity goes to the sink
                    x[target, col] = False
                else:
                    col = target
                    deg[col] += 1
                while pred_c[col] >= 0:
                    row = pred_c[col]
                    x[row, col] = True
                    col = pred_r[row]
                    x[row, col] = False
                deg[col] -= 1
                excess -= 1

            for i in range(m):
                for j in range(m):
                    out[b, i, j] = x[i, j] != flip


def _flow8_py(blocks: np.ndarray, n: int, out: np.ndarray) -> None:  # pragma: no cover
    """:func:`_flow_blocks_py` for ``m = 8`` and exactly ``n``: the same masks, bit for bit, with less work per block.

    Issue 15: SparseGPT's 4:8-T sweep solves one ``[rows, 8]`` group of columns at a time, and this kernel is most
    of its time. It runs the same min-cost flow (the same warm start, one Dijkstra per augmentation, the same
    potentials), and every float is computed by the same expression in the same order; what differs is the
    bookkeeping around them:

    * the scores are used as they are when the power-of-two scale provably changes nothing (see ``_SCALE_BIG``);
    * the warm start ranks each row's scores pairwise (ties: the lower column ranks first), the top-n rule;
    * the argmin of the Dijkstra scans four chains of four nodes and combines them in order: the first minimum,
      columns before rows, as the general scan; settled nodes are hidden by adding inf to their distance;
    * a relaxation keeps the smaller distance without branches and without recording a predecessor: a settled
      node never gets a smaller distance (reduced costs are >= 0, and a float sum is never below its first term),
      so it needs no test;
    * the path is traced once the target is found: a node's predecessor is the first settled node (in settling
      order) whose relaxation gives the node's final distance, which is the one the general loop's strict-<
      update keeps;
    * the kept mask lives in two matrices of arc costs (0 or inf) that the relaxations add, instead of tests.
    """
    nblocks = blocks.shape[0]
    inf = np.inf
    flip8 = 2 * n > _M8
    n8 = _M8 - n if flip8 else n
    sign8 = -1.0 if flip8 else 1.0
    w = np.empty(_SCRATCH8, dtype=np.float64)
    deg8 = np.empty(_M8, dtype=np.int64)
    rank = np.empty(_M8, dtype=np.int64)
    order = np.empty(2 * _M8, dtype=np.int64)  # settled nodes in settling order: columns 0..7, rows 8..15
    path = np.empty(2 * _M8 + 1, dtype=np.int64)  # target column, row, column, ..., source column
    for b in range(nblocks):
        amax = 0.0
        amin = inf
        for i in range(_M8):
            for j in range(_M8):
                v = blocks[b, i, j]
                w[_S8 + i * _M8 + j] = sign8 * v
                a = abs(v)
                amax = a if a > amax else amax
                amin = a if 0.0 < a < amin else amin
        if not (amax < 1.0 or (amax < _SCALE_BIG and amin >= _SCALE_TINY)):
            shift = -math.frexp(amax)[1]
            for i in range(_M8):
                for j in range(_M8):
                    w[_S8 + i * _M8 + j] = sign8 * math.ldexp(blocks[b, i, j], shift)
        for j in range(_M8):
            deg8[j] = 0
            w[_PC8 + j] = 0.0
        for i in range(_M8):
            for j in range(_M8):
                rank[j] = 0
            for j in range(_M8):
                v = w[_S8 + i * _M8 + j]
                for k in range(j + 1, _M8):
                    ahead = w[_S8 + i * _M8 + k] > v  # column k ranks before column j (ties: j first)
                    rank[j] += ahead
                    rank[k] += 1 - ahead
            for j in range(_M8):
                keep = rank[j] < n8
                w[_ARM8 + j * _M8 + i] = 0.0 if keep else inf
                w[_ACM8 + i * _M8 + j] = inf if keep else 0.0
                deg8[j] += keep
                if rank[j] == n8:  # the best unkept score
                    w[_PR8 + i] = w[_S8 + i * _M8 + j]
        excess = 0
        for j in range(_M8):
            if deg8[j] > n8:
                excess += deg8[j] - n8
        while excess > 0:
            for k in range(2 * _M8):
                w[_DIST8 + k] = inf
                w[_DONE8 + k] = 0.0
            count = 0
            for j in range(_M8):
                if deg8[j] > n8:
                    w[_DIST8 + j] = 0.0
                    w[_DONE8 + j] = inf
                    order[count] = j
                    count += 1
                    pcj = w[_PC8 + j]
                    for i in range(_M8):
                        r = w[_S8 + i * _M8 + j] - w[_PR8 + i] + pcj
                        r = 0.0 if r < 0.0 else r
                        r = r + w[_ARM8 + j * _M8 + i]
                        d = w[_DIST8 + _M8 + i]
                        w[_DIST8 + _M8 + i] = r if r < d else d
            target = -1
            reach = 0.0
            while True:
                b0 = w[_DIST8] + w[_DONE8]
                k0 = 0
                b1 = w[_DIST8 + 4] + w[_DONE8 + 4]
                k1 = 4
                b2 = w[_DIST8 + 8] + w[_DONE8 + 8]
                k2 = 8
                b3 = w[_DIST8 + 12] + w[_DONE8 + 12]
                k3 = 12
                for k in range(1, 4):
                    v = w[_DIST8 + k] + w[_DONE8 + k]
                    c = v < b0
                    b0 = v if c else b0
                    k0 = k if c else k0
                    v = w[_DIST8 + 4 + k] + w[_DONE8 + 4 + k]
                    c = v < b1
                    b1 = v if c else b1
                    k1 = 4 + k if c else k1
                    v = w[_DIST8 + 8 + k] + w[_DONE8 + 8 + k]
                    c = v < b2
                    b2 = v if c else b2
                    k2 = 8 + k if c else k2
                    v = w[_DIST8 + 12 + k] + w[_DONE8 + 12 + k]
                    c = v < b3
                    b3 = v if c else b3
                    k3 = 12 + k if c else k3
                c = b1 < b0
                b0 = b1 if c else b0
                k0 = k1 if c else k0
                c = b3 < b2
                b2 = b3 if c else b2
                k2 = k3 if c else k2
                c = b2 < b0
                best_d = b2 if c else b0
                node = k2 if c else k0
                if best_d == inf:
                    break  # unreachable for a feasible problem (1 <= n < m)
                w[_DONE8 + node] = inf
                order[count] = node
                count += 1
                if node < _M8:
                    if deg8[node] < n8:
                        target = node
                        reach = best_d
                        break
                    pcn = w[_PC8 + node]
                    for i in range(_M8):
                        r = w[_S8 + i * _M8 + node] - w[_PR8 + i] + pcn
                        r = 0.0 if r < 0.0 else r
                        nd = best_d + r + w[_ARM8 + node * _M8 + i]
                        d = w[_DIST8 + _M8 + i]
                        w[_DIST8 + _M8 + i] = nd if nd < d else d
                else:
                    row = node - _M8
                    prr = w[_PR8 + row]
                    for k in range(_M8):
                        r = prr - w[_PC8 + k] - w[_S8 + row * _M8 + k]
                        r = 0.0 if r < 0.0 else r
                        nd = best_d + r + w[_ACM8 + row * _M8 + k]
                        d = w[_DIST8 + k]
                        w[_DIST8 + k] = nd if nd < d else d
            if target < 0:
                break
            # Trace the path back to a source (an over-full column) before anything changes.
            plen = 0
            col = target
            path[0] = col
            while deg8[col] <= n8:
                dcol = w[_DIST8 + col]
                row = -1
                for t in range(count):
                    u = order[t] - _M8
                    if u >= 0 and w[_ACM8 + u * _M8 + col] == 0.0:
                        r = w[_PR8 + u] - w[_PC8 + col] - w[_S8 + u * _M8 + col]
                        r = 0.0 if r < 0.0 else r
                        if w[_DIST8 + _M8 + u] + r == dcol:
                            row = u
                            break
                drow = w[_DIST8 + _M8 + row]
                col = -1
                for t in range(count):
                    v8 = order[t]
                    if v8 < _M8 and w[_ARM8 + v8 * _M8 + row] == 0.0:
                        r = w[_S8 + row * _M8 + v8] - w[_PR8 + row] + w[_PC8 + v8]
                        r = 0.0 if r < 0.0 else r
                        if w[_DIST8 + v8] + r == drow:
                            col = v8
                            break
                path[plen + 1] = row
                path[plen + 2] = col
                plen += 2
            for j in range(_M8):
                w[_PC8 + j] += w[_DIST8 + j] if w[_DONE8 + j] == inf else reach
                w[_PR8 + j] += w[_DIST8 + _M8 + j] if w[_DONE8 + _M8 + j] == inf else reach
            deg8[target] += 1
            for t in range(0, plen, 2):
                row = path[t + 1]
                col = path[t]
                w[_ARM8 + col * _M8 + row] = 0.0  # row keeps col
                w[_ACM8 + row * _M8 + col] = inf
                col = path[t + 2]
                w[_ARM8 + col * _M8 + row] = inf  # and drops the next column
                w[_ACM8 + row * _M8 + col] = 0.0
            deg8[path[plen]] -= 1
            excess -= 1
        for i in range(_M8):
            for j in range(_M8):
                out[b, i, j] = (w[_ARM8 + j * _M8 + i] == 0.0) != flip8


def _flow_blocks_np(blocks: np.ndarray, n: int, out: np.ndarray) -> None:
    """The kernel's vectorised numpy twin for ``at_most=False``: the same masks, bit for bit, without numba.

    It answers a first call while numba compiles the kernel on a background thread (issue 16: a compile takes
    seconds). Every block runs the kernel's own steps in lockstep: the same scaling (``ldexp``), the same warm
    start, then one Dijkstra per round with the same float64 expressions evaluated in the same order and the
    same tie rules (the first minimum; columns before rows; nodes ``0..m-1`` are the columns, ``m..2m-1`` the
    rows), one augmentation per block and round. Blocks leave the batch once every column holds ``n``.
    """
    nblocks, m, _ = blocks.shape
    flip = 2 * n > m
    if flip:
        n = m - n
    amax = np.abs(blocks).max(axis=(1, 2))
    shift = np.where(amax > 0.0, -np.frexp(amax)[1], 0)
    s = np.ldexp(blocks, shift[:, None, None])
    if flip:
        s = -1.0 * s
    order = np.argsort(-s, axis=2, kind="stable")  # top-n of every row, ties to the lower column
    x = np.zeros(s.shape, dtype=np.bool_)
    np.put_along_axis(x, order[:, :, :n], True, axis=2)
    pr = np.take_along_axis(s, order[:, :, n : n + 1], axis=2)[:, :, 0].copy()  # the best unkept score
    pc = np.zeros((nblocks, m))
    deg = x.sum(axis=1)
    excess = np.maximum(deg - n, 0).sum(axis=1)
    ids = np.arange(nblocks)
    inf = np.inf
    arcs = np.empty((nblocks, 2 * m, m))  # reused every round: fresh large temporaries cost page faults
    while True:
        finished = excess == 0
        if finished.any():
            out[ids[finished]] = x[finished] != flip
            keep = ~finished
            if not keep.any():
                return
            s, x, pr, pc, deg, excess, ids = (a[keep] for a in (s, x, pr, pc, deg, excess, ids))
        count = ids.size
        ar = np.arange(count)
        # This round's arc costs, inf where there is no arc: arcs[b, j, i] from column j to row i over a kept
        # entry (s - pr + pc), arcs[b, m + i, k] from row i to column k over an unkept one (pr - pc - s); both
        # clamped at 0 like the kernel's (np.maximum keeps -0.0 where the kernel does too).
        to_rows = arcs[:count, :m]
        np.subtract(s.transpose(0, 2, 1), pr[:, None, :], out=to_rows)
        to_rows += pc[:, :, None]
        np.maximum(to_rows, 0.0, out=to_rows)
        np.copyto(to_rows, inf, where=~x.transpose(0, 2, 1))
        to_cols = arcs[:count, m:]
        np.subtract(pr[:, :, None], pc[:, None, :], out=to_cols)
        to_cols -= s
        np.maximum(to_cols, 0.0, out=to_cols)
        np.copyto(to_cols, inf, where=x)
        over = deg > n
        dist = np.full((count, 2 * m), inf)
        pred = np.full((count, 2 * m), -1)
        done = np.zeros((count, 2 * m), dtype=np.bool_)
        dist[:, :m][over] = 0.0
        done[:, :m] = over
        sources = np.where(over[:, :, None], to_rows, inf)  # [block, over-full column, row]
        dist[:, m:] = sources.min(axis=1)
        pred[:, m:] = np.where(dist[:, m:] < inf, sources.argmin(axis=1), -1)
        target = np.full(count, -1)
        reach = np.zeros(count)
        live = ar
        while live.size:
            d = np.where(done[live], inf, dist[live])
            u = d.argmin(axis=1)
            best = d[np.arange(live.size), u]
            found = best < inf  # always, for 1 <= n < m
            if not found.all():
                live, u, best = live[found], u[found], best[found]
            done[live, u] = True
            hit = (u < m) & (deg[live, np.minimum(u, m - 1)] < n)  # an under-full column: the target
            if hit.any():
                target[live[hit]] = u[hit]
                reach[live[hit]] = best[hit]
                go = ~hit
                live, u, best = live[go], u[go], best[go]
            halves = np.full((live.size, 2, m), inf)  # a column reaches rows (half 1), a row columns (half 0)
            halves[np.arange(live.size), (u < m).astype(np.intp)] = best[:, None] + arcs[live, u]
            nd = halves.reshape(live.size, 2 * m)
            cur = dist[live]
            better = (nd < cur) & ~done[live]
            dist[live] = np.where(better, nd, cur)
            pred[live] = np.where(better, u[:, None], pred[live])
        pc += np.where(done[:, :m], dist[:, :m], reach[:, None])
        pr += np.where(done[:, m:], dist[:, m:], reach[:, None])
        idx = ar[target >= 0]
        col = target[idx]
        deg[idx, col] += 1
        while idx.size:  # flip each alternating path back from its target to its source column
            row = pred[idx, col] - m
            more = row >= 0
            if not more.all():
                deg[idx[~more], col[~more]] -= 1
                idx, col, row = idx[more], col[more], row[more]
            x[idx, row, col] = True
            col = pred[idx, m + row]
            x[idx, row, col] = False
        excess -= 1


_KERNEL: Callable[[np.ndarray, int, bool, np.ndarray], None] | None = None
_KERNEL8: Callable[[np.ndarray, int, np.ndarray], None] | None = None
_KERNEL_LOCK = threading.Lock()


def _build(py_func: Callable, warm: tuple, info_key: str) -> Callable:
    """``py_func`` compiled by numba (``cache=True, nogil=True``) and run once on ``warm``, the seconds of that
    first call (compile or on-disk cache load) in ``KERNEL_INFO[info_key]``; without numba, ``py_func`` itself
    after one warning (shared by every kernel)."""
    try:
        import numba
    except ImportError:
        if KERNEL_INFO.get("backend") != "python":
            warnings.warn(
                "nmsparse exact solver: numba is not importable, so the min-cost-flow solver for m >= 8 "
                "runs as plain Python, thousands of times slower; install numba (pip install numba)",
                RuntimeWarning,
                stacklevel=4,
            )
        KERNEL_INFO.update({"backend": "python", info_key: 0.0})
        return py_func
    kernel = numba.njit(cache=True, nogil=True)(py_func)
    KERNEL_INFO.setdefault("backend", "numba")
    start = time.perf_counter()
    kernel(*warm)
    KERNEL_INFO[info_key] = elapsed = time.perf_counter() - start
    logger.debug("exact solver: numba %s ready in %.2f s (compile or cache load)", py_func.__name__, elapsed)
    return kernel


def flow_kernel() -> Callable[[np.ndarray, int, bool, np.ndarray], None]:
    """The compiled flow kernel ``(blocks float64 [B, m, m], n, at_most, out bool [B, m, m]) -> None``.

    numba is imported here, not at package import. The kernel is built with ``@njit(cache=True, nogil=True)``
    (serial; :func:`flow_blocks` runs it on slices of the blocks from several threads): the first call in a
    process compiles it (or loads it from numba's on-disk cache) and is timed into :data:`KERNEL_INFO`
    (``compile_s``). Its ``.py_func`` is the same code run by the Python interpreter. Without numba, the
    uncompiled function is returned after one warning. :func:`flow_blocks` solves ``m = 8`` with exactly ``n`` by
    :func:`flow8_kernel` instead (the same masks, faster).
    """
    global _KERNEL
    if _KERNEL is None:
        with _KERNEL_LOCK:
            if _KERNEL is None:
                warm = (np.zeros((1, 8, 8)), 4, False, np.zeros((1, 8, 8), dtype=np.bool_))
                _KERNEL = _build(_flow_blocks_py, warm, "compile_s")
    return _KERNEL


def flow8_kernel() -> Callable[[np.ndarray, int, np.ndarray], None]:
    """The compiled ``m = 8``, exactly-``n`` kernel ``(blocks float64 [B, 8, 8], n, out bool [B, 8, 8]) -> None``.

    The masks of :func:`flow_kernel` with ``at_most=False``, bit for bit (issue 15: about three times faster). Built
    like it, on its own (a caller that needs only one of the two kernels compiles only that one); the compile (or
    cache-load) time of its first call goes to ``KERNEL_INFO["compile_m8_s"]``.
    """
    global _KERNEL8
    if _KERNEL8 is None:
        with _KERNEL_LOCK:
            if _KERNEL8 is None:
                warm = (np.zeros((1, _M8, _M8)), 4, np.zeros((1, _M8, _M8), dtype=np.bool_))
                _KERNEL8 = _build(_flow8_py, warm, "compile_m8_s")
    return _KERNEL8


def block_kernel(
    m: int, *, at_most: bool = False, compiled: bool = True
) -> Callable[[np.ndarray, int, np.ndarray], None]:
    """The kernel that solves ``m x m`` blocks: ``kernel(blocks float64 [B, m, m], n, out bool [B, m, m])``.

    ``m = 8`` with exactly ``n``: :func:`flow8_kernel`; otherwise :func:`flow_kernel` with ``at_most`` bound.
    ``compiled=False``: their plain-Python twins. Serial and ``nogil``: callers may run it on slices of the blocks
    from several threads (:func:`flow_blocks` does).
    """
    if m == _M8 and not at_most:
        return flow8_kernel() if compiled else _flow8_py
    general = flow_kernel() if compiled else _flow_blocks_py

    def kernel(blocks: np.ndarray, n: int, out: np.ndarray) -> None:
        general(blocks, n, at_most, out)

    return kernel


def flow_blocks(blocks: torch.Tensor, n: int, *, at_most: bool = False, compiled: bool = True) -> torch.Tensor:
    """Optimal transposable masks of ``blocks [B, m, m]`` by the compiled min-cost-flow kernel.

    Solved on the CPU in float64 whatever the input's device and dtype; the mask is returned on the input's
    device. Deterministic: the same scores always give the same mask. ``at_most``: see :func:`exact_blocks`.
    ``compiled=False`` runs the kernel's plain-Python twin (the ``"python"`` backend). ``m = 8`` with exactly ``n``
    runs :func:`flow8_kernel` (the same masks as :func:`flow_kernel`, faster).
    """
    device = blocks.device
    nblocks, m, _ = blocks.shape
    if compiled and not at_most and nblocks * m**3 <= _TWIN_WORK and numba_available():
        built, name, build = (_KERNEL8, "exact-m8", flow8_kernel) if m == _M8 else (_KERNEL, "exact", flow_kernel)
        if built is None:
            # numba's compile takes seconds: answer with the kernel's bit-equal numpy twin, then compile in the
            # background (issue 16). A bigger first call waits for the compiler instead: its share of the wait is
            # less.
            array = blocks.detach().to(device="cpu", dtype=torch.float64).contiguous().numpy()
            out = np.empty(array.shape, dtype=np.bool_)
            _flow_blocks_np(array, n, out)
            start_build(name, build)
            return torch.from_numpy(out).to(device)
    kernel = block_kernel(m, at_most=at_most, compiled=compiled)
    out = np.empty((nblocks, m, m), dtype=np.bool_)
    step = max(1, _KERNEL_VALUES // (m * m))
    for start in range(0, nblocks, step):
        chunk = blocks[start : start + step].detach().to(device="cpu", dtype=torch.float64).contiguous().numpy()
        part = out[start : start + step]

        def solve(a: int, b: int, chunk: np.ndarray = chunk, part: np.ndarray = part) -> None:
            kernel(chunk[a:b], n, part[a:b])

        if compiled:  # a slice of at least ~0.1 ms of work: an m x m block costs about m**3 / 100 us
            run_split(solve, chunk.shape[0], min_blocks=max(1, 16384 // m**3))
        else:  # the interpreter holds the GIL: threads would only take turns
            solve(0, chunk.shape[0])
    return torch.from_numpy(out).to(device)


def exact_blocks(blocks: torch.Tensor, n: int, *, at_most: bool = False) -> torch.Tensor:
    """Optimal transposable mask of every ``m x m`` block: exactly ``n`` kept per row and column.

    Maximises the sum of kept scores per block (scores may be negative; any finite float dtype). ``m <= 4``
    enumerates every valid mask on ``blocks``' device (ties between exactly equal sums go to the mask keeping
    the lower flat indices); larger ``m`` runs the min-cost-flow kernel on the CPU (deterministic).

    Requiring exactly ``n`` can cost kept score even when every score is positive: on about 3% of Gaussian
    2:4 blocks (20% at 3:4, 6% at 4:8, 38% at 6:8) a mask with one short row and one short column keeps more,
    because the entry that would fill both is already kept and every way to fill them gives up score (kept
    fraction of ``|w|``, exactly n / at most n: 2:4 0.7014 / 0.7017, 4:8 0.7431 / 0.7432, 3:4 0.8877 /
    0.8904).
    ``at_most=True`` solves that relaxation instead: the true optimum under "at most n per row and column"
    (min-cost flow for every ``m``; entries with negative scores are then never kept).

    Args:
        blocks: ``[B, m, m]`` floating scores, finite.
        n: kept per row and per column, ``1 <= n < m``.
        at_most: keep at most ``n`` per row and column instead of exactly ``n``.

    Returns:
        ``torch.bool [B, m, m]`` on ``blocks``' device.

    Raises:
        InputError: ``blocks`` is not a floating ``[B, m, m]`` tensor.
        PatternError: ``n`` outside ``1 <= n < m``.

    Example:
        >>> import torch
        >>> scores = torch.tensor([[[4.0, 3.0, 0.0, 0.0],
        ...                         [3.0, 0.0, 0.0, 0.0],
        ...                         [0.0, 0.0, 1.0, 1.0],
        ...                         [0.0, 0.0, 1.0, 1.0]]])
        >>> exact_blocks(scores, 2)[0].int().tolist()
        [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    """
    check_blocks(blocks, "exact_blocks")
    m = blocks.shape[1]
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n < m:
        raise PatternError(f"exact_blocks: need an int n with 1 <= n < m={m}, got {n!r}")
    if blocks.shape[0] == 0:
        return torch.zeros(blocks.shape, dtype=torch.bool, device=blocks.device)
    blocks = blocks.detach()  # scores of a Parameter: no autograd graph (and out= products refuse one)
    if blocks.dtype in (torch.float16, torch.bfloat16):
        blocks = blocks.float()
    if m <= MAX_ENUM_M and not at_most:
        return enumerate_blocks(blocks, n)
    return flow_blocks(blocks, n, at_most=at_most)


def exact_matrix(scores: torch.Tensor, pattern: NMPattern, progress: bool | None = None) -> torch.Tensor:
    """Optimal transposable mask of a ``[rows, K]`` score matrix (``rows`` and ``K`` multiples of ``m``).

    Every aligned ``m x m`` block keeps exactly ``n`` per row and per column with the largest possible sum of
    kept scores. ``m = 4`` runs on the input's device (float64 sums on the CPU, the input's dtype on CUDA);
    ``m >= 8`` is solved on the CPU in float64 (a CUDA input is copied over chunk by chunk) and the mask comes
    back on the input's device.

    Args:
        scores: ``[rows, K]`` float32 or float64 importance (finite; may be negative).
        pattern: a transposable :class:`~nmsparse.NMPattern`.
        progress: progress bar over chunks of blocks; ``None`` = only for long work on a terminal.

    Returns:
        ``torch.bool [rows, K]`` on ``scores``' device.

    Example:
        >>> import torch
        >>> from nmsparse import NMPattern
        >>> mask = exact_matrix(torch.rand(16, 16), NMPattern.parse("4:8-T"))
        >>> mask.shape, int(mask.sum())
        (torch.Size([16, 16]), 128)
    """
    n, m = pattern.n, pattern.m
    desc = f"exact {pattern} masks"
    return solve_blocks(scores, m, lambda blocks: exact_blocks(blocks, n), desc=desc, progress_bar=progress)


def enumerate_matrix(scores: torch.Tensor, pattern: NMPattern, progress: bool | None = None) -> torch.Tensor:
    """``exact/torch``: optimal ``m = 4`` transposable mask of a ``[rows, K]`` matrix by enumeration."""
    n = pattern.n
    return solve_blocks(
        scores,
        pattern.m,
        lambda blocks: enumerate_blocks(blocks, n),
        desc=f"exact {pattern} masks",
        progress_bar=progress,
    )


def flow_matrix_numba(scores: torch.Tensor, pattern: NMPattern, progress: bool | None = None) -> torch.Tensor:
    """``exact/numba``: optimal transposable mask of a ``[rows, K]`` matrix by the compiled min-cost flow."""
    n = pattern.n
    return solve_blocks(
        scores, pattern.m, lambda blocks: flow_blocks(blocks, n), desc=f"exact {pattern} masks", progress_bar=progress
    )


_PYTHON_WARNED = False


def flow_matrix_python(scores: torch.Tensor, pattern: NMPattern, progress: bool | None = None) -> torch.Tensor:
    """``exact/python``: the min-cost flow of :func:`flow_matrix_numba` run by the Python interpreter."""
    global _PYTHON_WARNED
    if not _PYTHON_WARNED and not numba_available():
        _PYTHON_WARNED = True
        warnings.warn(
            "nmsparse exact solver: numba is not importable, so the min-cost-flow solver for m >= 8 runs as "
            "plain Python, thousands of times slower; install numba (pip install numba)",
            RuntimeWarning,
            stacklevel=3,
        )
    n = pattern.n
    return solve_blocks(
        scores,
        pattern.m,
        lambda blocks: flow_blocks(blocks, n, compiled=False),
        desc=f"exact {pattern} masks (python)",
        progress_bar=progress,
    )
