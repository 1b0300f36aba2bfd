"""Triton mask kernels (imported lazily: only when a Triton backend runs).

* :func:`exact4_triton`: exact n:4-T (n = 1, 2, 3; 2:4-T is the one that matters), one pass over W (the
  generated kernels in ``_triton_exact24_kernel``).
* :func:`greedy_t_triton`: the greedy (2-approximation) n:m-T mask, one program per ``BB`` blocks, each
  block's ``m * m`` scores in registers. Instead of sorting, each of the ``n * m`` steps keeps the largest *eligible*
  entry (row and column below ``n``, not yet kept; ties: lowest flat index). An entry the sorted visit would
  skip has a full row or column when it is reached, and stays ineligible, so this keeps exactly the entries
  the sorted visit keeps (:func:`nmsparse.solvers.greedy.greedy_blocks`), bit for bit.
* :func:`topn_triton`: plain n:m, an entry is kept when fewer than ``n`` entries of its group beat it (larger,
  or equal at a lower index): the stable-sort top-n of :func:`nmsparse.solvers.topn.topn_groups`.

Each wrapper takes a ``[rows, K]`` matrix of any strides and returns a new contiguous ``torch.bool`` mask;
inputs are read in their own dtype (fp16/bf16 widened to fp32 inside the kernel, order-preserving). Shapes and
devices are checked by the callers in :mod:`nmsparse.kernels`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton_exact24_kernel import exact14_kernel, exact24_kernel, exact34_kernel

__all__ = ["exact4_triton", "greedy_t_triton", "topn_triton", "GREEDY_MS", "TOPN_MAX_M"]

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
    target = out if out is not None else mask.view(torch.uint8)
    _EXACT4_KERNELS[n][grid](x, mask.view(torch.uint8), target, n_blocks, cols // 4, x.stride(0), x.stride(1),
                             mask.stride(0), target.stride(0), BLOCK=_EXACT24_BLOCK, ABS=bool(absolute),
                             WRITE_OUT=write, num_warps=4)
    return mask


@triton.jit
def _greedy_t_kernel(s_ptr, mask_ptr, n_blocks, kb, stride_sr, stride_sc, stride_mr,
                     N: tl.constexpr, M: tl.constexpr, BB: tl.constexpr, WIDE: tl.constexpr, ABS: tl.constexpr):
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
    s = tl.load(s_ptr + rows * stride_sr + cols * stride_sc, mask=valid, other=0.0)
    if WIDE:
        s = s.to(tl.float32)
    if ABS:
        s = tl.abs(s)
    kept = e[None, :] < 0  # all False, [BB, M*M]
    kept = kept & valid
    rowc = tl.zeros([BB, M * M], dtype=tl.int32)
    colc = tl.zeros([BB, M * M], dtype=tl.int32)
    elig = valid
    for _ in range(N * M):
        key = tl.where(elig, s, float("-inf"))
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
    wide = scores.dtype in (torch.float16, torch.bfloat16)
    _greedy_t_kernel[grid](scores, mask.view(torch.uint8), n_blocks, cols // m, scores.stride(0), scores.stride(1),
                           mask.stride(0), N=n, M=m, BB=bb, WIDE=wide, ABS=bool(absolute), num_warps=4)
    return mask


@triton.jit
def _topn_kernel(s_ptr, mask_ptr, n_groups, gpr, stride_sr, stride_sc, stride_mr,
                 N: tl.constexpr, M: tl.constexpr, MP: tl.constexpr, BG: tl.constexpr, WIDE: tl.constexpr,
                 ABS: tl.constexpr):
    pid = tl.program_id(0)
    g = pid.to(tl.int64) * BG + tl.arange(0, BG)
    valid_g = g < n_groups
    row = g // gpr
    gc = g - row * gpr
    j = tl.arange(0, MP)
    valid_j = j < M
    valid = valid_g[:, None] & valid_j[None, :]
    cols = gc[:, None] * M + j[None, :]
    s = tl.load(s_ptr + row[:, None] * stride_sr + cols * stride_sc, mask=valid, other=0.0)
    if WIDE:
        s = s.to(tl.float32)
    if ABS:
        s = tl.abs(s)
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
    wide = scores.dtype in (torch.float16, torch.bfloat16)
    _topn_kernel[grid](scores, mask.view(torch.uint8), n_groups, gpr, scores.stride(0), scores.stride(1),
                       mask.stride(0), N=n, M=m, MP=mp, BG=bg, WIDE=wide, ABS=bool(absolute), num_warps=4)
    return mask
