"""Triton mask kernels (imported lazily: only when a Triton backend runs).

* :func:`exact4_triton`: exact n:4-T (n = 1, 2, 3; 2:4-T is the one that matters), one pass over W (the
  generated kernels in ``_generated_exact24_triton``, made by ``tools/gen_exact24.py``).
* :func:`greedy_t_triton`: the greedy (2-approximation) n:m-T mask, one program per ``BB`` blocks, each
  block's ``m * m`` scores in registers. Instead of sorting, each of the ``n * m`` steps keeps the largest *eligible*
  entry (row and column below ``n``, not yet kept; ties: lowest flat index). An entry the sorted visit would
  skip has a full row or column when it is reached, and stays ineligible, so this keeps exactly the entries
  the sorted visit keeps (:func:`nmsparse.solvers.greedy.greedy_blocks`), bit for bit.
* :func:`flow_t_triton`: exact n:m-T for m = 8, 16 (the min-cost flow of :mod:`nmsparse.kernels.exact_flow`
  in registers, bit-equal to it).
* :func:`topn_triton`: plain n:m, an entry is kept when fewer than ``n`` entries of its group beat it (larger,
  or equal at a lower index): the stable-sort top-n of :func:`nmsparse.solvers.topn.topn_groups`.

Each wrapper takes a ``[rows, K]`` matrix of any strides and returns a new contiguous ``torch.bool`` mask;
inputs are read in their own dtype. Comparisons (greedy, top-n) run on integer keys built from the float bits,
exact on any hardware (subnormals included, which a GPU's float compare may flush to zero); the float64 sums of
the exact kernels read bf16 as bits widened by a shift for the same reason. Shapes and
devices are checked once by the solver registry (:func:`nmsparse.find_mask`), which calls these wrappers.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..layout import from_blocks, to_blocks
from ._generated_exact24_triton import exact14_kernel, exact24_kernel, exact34_kernel
from ._scaling import scale_blocks

__all__ = ["exact4_triton", "greedy_t_triton", "topn_triton", "flow_t_triton", "GREEDY_MS", "TOPN_MAX_M", "FLOW_MS"]

#: Block sides of the greedy kernel (its registers hold BB * m * m scores).
GREEDY_MS = (4, 8, 16, 32)
#: Largest plain group size of the top-n kernel (its comparisons are m * m per group).
TOPN_MAX_M = 64

_EXACT24_BLOCK = 128


_EXACT4_KERNELS = {1: exact14_kernel, 2: exact24_kernel, 3: exact34_kernel}


def exact4_triton(x: torch.Tensor, n: int, *, absolute: bool, out: torch.Tensor | None = None) -> torch.Tensor:
    """Exact n:4-T mask of ``x`` (scores, or ``|x|`` with ``absolute``); ``out``: also write the masked ``x``."""
    rows, cols = x.shape
    mask = torch.empty((rows, cols), dtype=torch.bool, device=x.device)
    n_blocks = (rows // 4) * (cols // 4)
    grid = (triton.cdiv(n_blocks, _EXACT24_BLOCK),)
    write = out is not None
    bf16 = x.dtype == torch.bfloat16
    src = x.view(torch.int16) if bf16 else x
    target = mask.view(torch.uint8) if out is None else (out.view(torch.int16) if bf16 else out)
    _EXACT4_KERNELS[n][grid](
        src,
        mask.view(torch.uint8),
        target,
        n_blocks,
        cols // 4,
        x.stride(0),
        x.stride(1),
        mask.stride(0),
        target.stride(0),
        BLOCK=_EXACT24_BLOCK,
        ABS=bool(absolute),
        WRITE_OUT=write,
        BF16_BITS=bf16,
        num_warps=4,
    )
    return mask


_INT_VIEW = {
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}


def _bits(scores: torch.Tensor) -> torch.Tensor:
    """``scores`` reinterpreted as signed integers of the same width (for :func:`_order_key`)."""
    return scores.view(_INT_VIEW[scores.dtype])


@triton.jit
def _order_key(bits, ABS: tl.constexpr):
    """Integer key ordered like the float whose bits these are (sign-magnitude to two's complement; -0 = +0).

    Comparing keys is exact on any hardware (no flush of subnormals to zero) and ranks exactly like torch's
    float comparisons for finite values. ``ABS``: the key of ``|x|``.
    """
    if bits.dtype == tl.int16:
        bits = bits.to(tl.int32)
        mag = bits & 0x7FFF
    elif bits.dtype == tl.int32:
        mag = bits & 0x7FFFFFFF
    else:
        mag = bits & 0x7FFFFFFFFFFFFFFF
    if ABS:
        return mag
    return tl.where(bits < 0, -mag, mag)


@triton.jit
def _greedy_t_kernel(
    s_ptr,
    mask_ptr,
    n_blocks,
    kb,
    stride_sr,
    stride_sc,
    stride_mr,
    N: tl.constexpr,
    M: tl.constexpr,
    BB: tl.constexpr,
    ABS: tl.constexpr,
):
    pid = tl.program_id(0)
    blk = pid.to(tl.int64) * BB + tl.arange(0, BB)
    valid_b = blk < n_blocks
    br = blk // kb
    bc = blk - br * kb
    e = tl.arange(0, M * M)
    er = e // M
    ec = e % M
    rows = br[:, None] * M + er[None, :]
    cols = bc[:, None] * M + ec[None, :]
    valid = valid_b[:, None] & (e[None, :] >= 0)
    s = _order_key(tl.load(s_ptr + rows * stride_sr + cols * stride_sc, mask=valid, other=0), ABS)
    kept = e[None, :] < 0  # all False, [BB, M*M]
    kept = kept & valid
    rowc = tl.zeros([BB, M * M], dtype=tl.int32)
    colc = tl.zeros([BB, M * M], dtype=tl.int32)
    elig = valid
    below = tl.min(s, axis=1)[:, None] - 1  # under every key of the block (keys never reach the int minimum)
    for _ in range(N * M):
        key = tl.where(elig, s, below)
        mx = tl.max(key, axis=1)
        cand = elig & (s == mx[:, None])
        idx = tl.min(tl.where(cand, e[None, :], M * M), axis=1)
        has = idx < M * M
        chosen = e[None, :] == idx[:, None]
        kept = kept | chosen
        r_sel = idx // M
        c_sel = idx % M
        rowc += ((er[None, :] == r_sel[:, None]) & has[:, None]).to(tl.int32)
        colc += ((ec[None, :] == c_sel[:, None]) & has[:, None]).to(tl.int32)
        elig = elig & (~chosen) & (rowc < N) & (colc < N)
    tl.store(mask_ptr + rows * stride_mr + cols, kept.to(tl.uint8), mask=valid)


def greedy_t_triton(scores: torch.Tensor, n: int, m: int, *, absolute: bool = False) -> torch.Tensor:
    """Greedy n:m-T mask of ``scores [rows, K]`` (``m`` in :data:`GREEDY_MS`; ``absolute``: of ``|scores|``)."""
    rows, cols = scores.shape
    mask = torch.empty((rows, cols), dtype=torch.bool, device=scores.device)
    n_blocks = (rows // m) * (cols // m)
    bb = max(1, 1024 // (m * m))
    grid = (triton.cdiv(n_blocks, bb),)
    _greedy_t_kernel[grid](
        _bits(scores),
        mask.view(torch.uint8),
        n_blocks,
        cols // m,
        scores.stride(0),
        scores.stride(1),
        mask.stride(0),
        N=n,
        M=m,
        BB=bb,
        ABS=bool(absolute),
        num_warps=4,
    )
    return mask


@triton.jit
def _topn_kernel(
    s_ptr,
    mask_ptr,
    n_groups,
    gpr,
    stride_sr,
    stride_sc,
    stride_mr,
    N: tl.constexpr,
    M: tl.constexpr,
    MP: tl.constexpr,
    BG: tl.constexpr,
    ABS: tl.constexpr,
):
    pid = tl.program_id(0)
    g = pid.to(tl.int64) * BG + tl.arange(0, BG)
    valid_g = g < n_groups
    row = g // gpr
    gc = g - row * gpr
    j = tl.arange(0, MP)
    valid_j = j < M
    valid = valid_g[:, None] & valid_j[None, :]
    cols = gc[:, None] * M + j[None, :]
    s = _order_key(tl.load(s_ptr + row[:, None] * stride_sr + cols * stride_sc, mask=valid, other=0), ABS)
    si = s[:, :, None]
    sj = s[:, None, :]
    lower = j[None, :, None] > j[None, None, :]  # j (the rival) comes before i
    beats = valid_j[None, None, :] & ((sj > si) | ((sj == si) & lower))
    rank = tl.sum(beats.to(tl.int32), axis=2)
    keep = rank < N
    tl.store(mask_ptr + row[:, None] * stride_mr + cols, keep.to(tl.uint8), mask=valid)


def topn_triton(scores: torch.Tensor, n: int, m: int, *, absolute: bool = False) -> torch.Tensor:
    """Plain n:m mask of ``scores [rows, K]`` (groups of ``m <=`` :data:`TOPN_MAX_M` along K; ``absolute``:
    of ``|scores|``)."""
    rows, cols = scores.shape
    mask = torch.empty((rows, cols), dtype=torch.bool, device=scores.device)
    gpr = cols // m
    n_groups = rows * gpr
    mp = triton.next_power_of_2(m)
    bg = max(1, 4096 // (mp * mp))
    grid = (triton.cdiv(n_groups, bg),)
    _topn_kernel[grid](
        _bits(scores),
        mask.view(torch.uint8),
        n_groups,
        gpr,
        scores.stride(0),
        scores.stride(1),
        mask.stride(0),
        N=n,
        M=m,
        MP=mp,
        BG=bg,
        ABS=bool(absolute),
        num_warps=4,
    )
    return mask


@triton.jit
def _pick(values, sel, axis: tl.constexpr, fill):
    """The entry of ``values`` where ``sel`` holds (one per slice along ``axis``), exactly (a max over one)."""
    return tl.max(tl.where(sel, values, fill), axis=axis)


@triton.jit
def _flow_t_kernel(
    s_ptr,
    mask_ptr,
    n_blocks,
    kb,
    stride_sr,
    stride_sc,
    stride_mr,
    N: tl.constexpr,
    M: tl.constexpr,
    BB: tl.constexpr,
    NEG: tl.constexpr,
    BF16_BITS: tl.constexpr,
):
    # The algorithm and arithmetic of nmsparse.kernels.exact_flow._solve_chunk, one program per BB blocks.
    pid = tl.program_id(0)
    blk = pid.to(tl.int64) * BB + tl.arange(0, BB)
    valid_b = blk < n_blocks
    br = blk // kb
    bc = blk - br * kb
    ii = tl.arange(0, M)[None, :, None]  # row index, [1, M, 1]
    jj = tl.arange(0, M)[None, None, :]  # column index, [1, 1, M]
    jv = tl.arange(0, M)[None, :]  # index along the last axis of [BB, M] tensors
    rows = br[:, None, None] * M + ii
    cols = bc[:, None, None] * M + jj
    valid = valid_b[:, None, None] & (ii >= 0) & (jj >= 0)
    raw = tl.load(s_ptr + rows * stride_sr + cols * stride_sc, mask=valid, other=0)
    if BF16_BITS:
        s = (raw.to(tl.int32) << 16).to(tl.float32, bitcast=True).to(tl.float64)
    else:
        s = raw.to(tl.float64)
    if NEG:
        s = -s
    inf = float("inf")
    # Warm start: the stable top-N of every row; pr = the best unkept score of the row.
    s_k = s[:, :, None, :]  # rival column k, [BB, M, 1, M]
    s_j = s[:, :, :, None]  # [BB, M, M, 1]
    kk = tl.arange(0, M)[None, None, None, :]
    jj4 = tl.arange(0, M)[None, None, :, None]
    beats = (s_k > s_j) | ((s_k == s_j) & (kk < jj4))
    rank = tl.sum(beats.to(tl.int32), axis=3)  # [BB, M, M]
    x = rank < N
    pr = tl.max(tl.where(x, -inf, s), axis=2)  # [BB, M]
    pc = tl.zeros([BB, M], dtype=tl.float64)
    deg = tl.sum(x.to(tl.int32), axis=1)  # kept per column, [BB, M]
    excess = tl.sum(tl.maximum(deg - N, 0), axis=1)  # [BB]
    excess = tl.where(valid_b, excess, 0)
    while tl.max(excess, axis=0) > 0:
        active = excess > 0  # [BB]
        over = deg > N
        cost_cr = tl.where(x, tl.maximum(s - pr[:, :, None] + pc[:, None, :], 0.0), inf)
        cost_rc = tl.where(x, inf, tl.maximum(pr[:, :, None] - pc[:, None, :] - s, 0.0))
        dist_c = tl.where(over, 0.0, inf).to(tl.float64)
        dist_r = tl.full([BB, M], inf, tl.float64)
        pred_c = tl.full([BB, M], -1, tl.int32)
        pred_r = tl.full([BB, M], -1, tl.int32)
        sweep = 0
        moved = 1
        while (sweep < 2 * M) & (moved > 0):
            t = dist_c[:, None, :] + cost_cr  # [BB, i, j]
            new_r = tl.min(t, axis=2)
            via_c = tl.min(tl.where(t == new_r[:, :, None], jj, M), axis=2)
            moved_r = new_r < dist_r
            dist_r = tl.where(moved_r, new_r, dist_r)
            pred_r = tl.where(moved_r, via_c, pred_r)
            t2 = dist_r[:, :, None] + cost_rc  # [BB, i, k]
            new_c = tl.min(t2, axis=1)
            via_r = tl.min(tl.where(t2 == new_c[:, None, :], ii, M), axis=1)
            moved_c = new_c < dist_c
            dist_c = tl.where(moved_c, new_c, dist_c)
            pred_c = tl.where(moved_c, via_r, pred_c)
            moved = tl.max(tl.max((moved_r | moved_c).to(tl.int32), axis=1), axis=0)
            sweep += 1
        under = tl.where(deg < N, dist_c, inf)
        reach = tl.min(under, axis=1)  # [BB]
        target = tl.min(tl.where(under == reach[:, None], jv, M), axis=1)
        act2 = active[:, None]
        pc = tl.where(act2, pc + tl.minimum(dist_c, reach[:, None]), pc)
        pr = tl.where(act2, pr + tl.minimum(dist_r, reach[:, None]), pr)
        deg = deg + ((jv == target[:, None]) & act2).to(tl.int32)
        col = target
        walking = active
        for _ in range(M + 1):
            row = _pick(pred_c, jv == col[:, None], 1, -2)
            walking = walking & (row >= 0)
            c_back = _pick(pred_r, jv == row[:, None], 1, -2)
            w3 = walking[:, None, None] & (ii == row[:, None, None])
            x = x | (w3 & (jj == col[:, None, None]))
            x = x & ~(w3 & (jj == c_back[:, None, None]))
            col = tl.where(walking, c_back, col)
        deg = deg - ((jv == col[:, None]) & act2).to(tl.int32)
        excess = tl.where(active, excess - 1, excess)
    if NEG:
        x = ~x
    tl.store(mask_ptr + rows * stride_mr + cols, x.to(tl.uint8), mask=valid)


#: Block sides of the Triton exact flow (its registers hold BB x m x m scores and their rank comparisons).
FLOW_MS = (8, 16)


def flow_t_triton(scores: torch.Tensor, n: int, m: int, *, absolute: bool = False) -> torch.Tensor:
    """Exact n:m-T mask (``m`` in :data:`FLOW_MS`) by the batched min-cost flow of
    :mod:`nmsparse.kernels.exact_flow`, one program per few blocks, everything in registers.

    Same arithmetic as the torch twin, so the same mask bit for bit. The twin scales each block by a power of
    two first; that changes no decision when nothing under- or overflows, which holds for fp32/fp16/bf16 scores
    in float64, so the kernel skips it for them (fp64 scores are scaled on the host first)."""
    rows, cols = scores.shape
    src = scores.abs() if absolute else scores
    if src.dtype == torch.float64:  # the twin's per-block power-of-two scaling, so fp64 extremes behave the same
        src = from_blocks(scale_blocks(to_blocks(src, m)), rows, cols)
    mask = torch.empty((rows, cols), dtype=torch.bool, device=scores.device)
    n_blocks = (rows // m) * (cols // m)
    bb = max(1, 256 // (m * m)) if m >= 16 else 4
    grid = (triton.cdiv(n_blocks, bb),)
    neg = 2 * n > m
    bf16 = src.dtype == torch.bfloat16
    _flow_t_kernel[grid](
        src.view(torch.int16) if bf16 else src,
        mask.view(torch.uint8),
        n_blocks,
        cols // m,
        src.stride(0),
        src.stride(1),
        mask.stride(0),
        N=m - n if neg else n,
        M=m,
        BB=bb,
        NEG=neg,
        BF16_BITS=bf16,
        num_warps=4,
    )
    return mask
