"""Exact n:m-T masks on any device: batched min-cost flow written in vectorised torch ops (CPU and CUDA).

The same problem as :mod:`nmsparse.solvers.exact` (per block, exactly ``n`` kept per row and column, the
largest kept sum), solved by the same successive-shortest-path scheme, but with every block of a chunk moving
in lockstep so it runs on a GPU without leaving it:

1. Warm start: each row keeps its top ``n`` (ties: lower column), optimal for its own column counts. Row
   potentials ``pr[i]`` = the best unkept score of row ``i``, column potentials ``pc = 0``: every reduced cost
   of the residual graph is ``>= 0``.
2. While a block has an over-full column: shortest paths from all its over-full columns at once over the
   residual graph (kept entry: column -> row, reduced cost ``s - pr + pc``; unkept: row -> column, reduced cost
   ``pr - pc - s``; both clamped at 0 against round-off) by Bellman-Ford sweeps on dense ``[B, m, m]``
   tensors until no distance moves (at most ``2m`` sweeps; paths are short, so usually 2-4). The nearest
   under-full column (ties: lowest index) is the target; potentials move by ``min(dist, reach)``; the
   alternating path is flipped, moving one unit from an over-full to an under-full column.
3. Blocks that are done leave the batch (compaction every round).

Every step is exact float64 arithmetic in a fixed order, so a CPU and a CUDA run give the same mask. Scores
are scaled per block by a power of two (exact) so sums cannot overflow; ``n > m / 2`` solves the complement.
The optimum equals the numba solver's (:func:`nmsparse.solvers.exact.flow_blocks`); among several optimal
masks the two may pick different ones (their shortest-path tie rules differ).
"""

from __future__ import annotations

import torch

from ..errors import PatternError
from ._scaling import scale_blocks
from .reference import check_blocks

__all__ = ["flow_blocks_torch", "flow_matrix_torch", "CHUNK_BLOCKS"]

#: Blocks solved per batch: ``[chunk, m, m]`` float64 temporaries (8x8: 32 MiB each on the CPU, 512 MiB on CUDA).
CHUNK_BLOCKS = {"cpu": 1 << 16, "cuda": 1 << 20}


def _solve_chunk(s: torch.Tensor, n: int) -> torch.Tensor:
    """``s [B, m, m]`` float64 (scaled) -> bool ``[B, m, m]`` with exactly ``n`` per row and column, optimal."""
    nblocks, m, _ = s.shape
    device = s.device
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=device)
    order = torch.sort(s, dim=2, descending=True, stable=True).indices
    x = torch.zeros(s.shape, dtype=torch.bool, device=device)
    x.scatter_(2, order[..., :n], True)
    pr = s.gather(2, order[..., n : n + 1]).squeeze(2)  # best unkept score per row
    pc = torch.zeros((nblocks, m), dtype=torch.float64, device=device)
    deg = x.sum(dim=1)  # kept per column, (B, m)
    result = torch.empty(s.shape, dtype=torch.bool, device=device)
    active = torch.arange(nblocks, device=device)
    while True:
        over = deg > n
        done = ~over.any(dim=1)
        if bool(done.any()):
            result[active[done]] = x[done]
            keep = ~done
            if not bool(keep.any()):
                return result
            active, s, x, pr, pc, deg, over = (t[keep] for t in (active, s, x, pr, pc, deg, over))
        count = active.shape[0]
        ar = torch.arange(count, device=device)
        # Reduced costs, clamped at 0 (round-off only): arc col j -> row i over a kept entry, row i -> col k over
        # an unkept one. Shapes (A, i, j).
        cost_cr = torch.where(x, (s - pr[:, :, None] + pc[:, None, :]).clamp_min(0.0), inf)
        cost_rc = torch.where(x, inf, (pr[:, :, None] - pc[:, None, :] - s).clamp_min(0.0))
        dist_c = torch.where(over, torch.zeros((), dtype=torch.float64, device=device), inf)
        dist_r = torch.full((count, m), float("inf"), dtype=torch.float64, device=device)
        pred_c = torch.full((count, m), -1, dtype=torch.int64, device=device)  # row a column is reached from
        pred_r = torch.full((count, m), -1, dtype=torch.int64, device=device)  # column a row is reached from
        for _ in range(2 * m):
            new_r, via_c = (dist_c[:, None, :] + cost_cr).min(dim=2)  # (A, i)
            moved_r = new_r < dist_r
            dist_r = torch.where(moved_r, new_r, dist_r)
            pred_r = torch.where(moved_r, via_c, pred_r)
            new_c, via_r = (dist_r[:, :, None] + cost_rc).min(dim=1)  # (A, k)
            moved_c = new_c < dist_c
            dist_c = torch.where(moved_c, new_c, dist_c)
            pred_c = torch.where(moved_c, via_r, pred_c)
            if not bool(moved_r.any() | moved_c.any()):
                break
        reach, target = torch.where(deg < n, dist_c, inf).min(dim=1)  # nearest under-full column, lowest index
        if not bool(torch.isfinite(reach).all()):
            raise RuntimeError("exact flow: an under-full column is unreachable (a bug: the problem is feasible)")
        pc = pc + torch.minimum(dist_c, reach[:, None])
        pr = pr + torch.minimum(dist_r, reach[:, None])
        deg[ar, target] += 1
        col = target.clone()
        walking = torch.ones(count, dtype=torch.bool, device=device)
        for _ in range(m + 1):
            row = pred_c[ar, col]
            walking = walking & (row >= 0)
            if not bool(walking.any()):
                break
            idx = walking.nonzero().squeeze(1)
            r, c = row[idx], col[idx]
            x[idx, r, c] = True
            c_back = pred_r[idx, r]
            x[idx, r, c_back] = False
            col[idx] = c_back
        deg[ar, col] -= 1


def flow_blocks_torch(blocks: torch.Tensor, n: int, *, chunk: int | None = None) -> torch.Tensor:
    """Optimal n:m-T masks of ``blocks [B, m, m]`` on ``blocks``' device (exactly ``n`` per row and column).

    Args:
        blocks: ``[B, m, m]`` floating scores (finite; may be negative), any device.
        n: kept per row and column, ``1 <= n < m``.
        chunk: blocks per batch (default :data:`CHUNK_BLOCKS` for the device type).

    Returns:
        ``torch.bool [B, m, m]`` on ``blocks``' device; the same mask on CPU and CUDA.

    Example:
        >>> s = torch.tensor([[[4., 3., 0., 0.], [3., 0., 0., 0.], [0., 0., 1., 1.], [0., 0., 1., 1.]]])
        >>> flow_blocks_torch(s, 2)[0].int().tolist()
        [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    """
    check_blocks(blocks, "flow_blocks_torch")
    m = blocks.shape[1]
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n < m:
        raise PatternError(f"flow_blocks_torch: need an int n with 1 <= n < m={m}, got {n!r}")
    out = torch.empty(blocks.shape, dtype=torch.bool, device=blocks.device)
    if blocks.shape[0] == 0:
        return out
    flip = 2 * n > m
    step = chunk or CHUNK_BLOCKS.get(blocks.device.type, 1 << 16)
    for start in range(0, blocks.shape[0], step):
        s = scale_blocks(blocks[start : start + step].detach().to(torch.float64))
        if flip:
            out[start : start + step] = ~_solve_chunk(-s, m - n)
        else:
            out[start : start + step] = _solve_chunk(s, n)
    return out


def flow_matrix_torch(scores: torch.Tensor, pattern: object, progress: bool | None = None) -> torch.Tensor:
    """Exact n:m-T mask of a ``[rows, K]`` score matrix on its own device (a registry ``MatrixSolver``)."""
    from ..layout import from_blocks, to_blocks

    n, m = pattern.n, pattern.m  # type: ignore[attr-defined]
    rows, cols = scores.shape
    return from_blocks(flow_blocks_torch(to_blocks(scores, m).contiguous(), n), rows, cols)
