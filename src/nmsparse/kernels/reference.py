"""The torch twin of the exact n:4-T Triton kernels, and the one torch exact solver for blocks of side <= 4.

A valid ``m x m`` block mask keeps exactly ``n`` in every row and column (24, 90, 24 masks for ``m = 4`` and
``n = 1, 2, 3``). Each row chooses one of its column subsets of size ``n``; the kept score of a block mask is,
for ``m = 4``, ``(v0[p0] + v1[p1]) + (v2[p2] + v3[p3])`` with ``v_r[p]`` = the sum of row ``r`` over subset ``p``,
its columns added left to right, all in float64 in exactly this order: the order of the generated Triton kernel
(``_generated_exact24_triton.py``, made by ``tools/gen_exact24.py`` from :func:`exact4_candidates`). The candidates
are visited in decreasing order of their code (flat index 0 as the most significant bit) and the first maximum
wins, so among exactly equal sums the mask keeping the lower flat indices wins: the order of
:func:`nmsparse.solvers.enumerate.valid_block_masks`. Kernel and twin therefore return the same mask bit for bit
on every input, ties included.

:func:`exact_enum_blocks` is that computation on ``[B, m, m]`` blocks; the solver registry's ``exact/torch`` and
:func:`nmsparse.solvers.exact.exact_blocks` (m <= 4) run it. float64 blocks are first scaled per block by a power
of two (exact), so values near the float64 limits stay optimal; every other dtype sums exactly in float64.
"""

from __future__ import annotations

import itertools
from functools import cache

import torch

from ..errors import InputError, PatternError, ShapeError
from ..layout import from_blocks, to_blocks
from ._scaling import scale_blocks

__all__ = [
    "PAIRS",
    "row_subsets",
    "block_candidates",
    "exact4_candidates",
    "exact24_candidates",
    "exact_enum_blocks",
    "exact_4_t_reference",
    "exact_2_4_t_reference",
    "exact_2_4_t_masked_reference",
]

#: The 6 column pairs a row of a 2:4-T block can keep, in decreasing order of their 4-bit code (column 0 = MSB).
PAIRS: tuple[tuple[int, ...], ...] = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))
#: Largest block side solved by enumeration.
MAX_ENUM_M = 4
#: Blocks scored per batch: the (batch, candidates) float64 sums stay in cache on the CPU.
_SUBCHUNK = {"cpu": 2048}
_DEVICE_SUBCHUNK = 1 << 18


def _subset_code(subset: tuple[int, ...], m: int) -> int:
    code = 0
    for c in subset:
        code |= 1 << (m - 1 - c)
    return code


@cache
def row_subsets(n: int, m: int = 4) -> tuple[tuple[int, ...], ...]:
    """The column subsets of size ``n`` a row of an ``m x m`` block can keep, decreasing code (``n=2``: PAIRS)."""
    return tuple(sorted(itertools.combinations(range(m), n), key=lambda s: -_subset_code(s, m)))


@cache
def block_candidates(m: int, n: int) -> tuple[tuple[tuple[int, ...], int], ...]:
    """Every valid ``m x m`` block mask as ``(row subset indices, code)``, decreasing code.

    The row subset index ``p_r`` indexes :func:`row_subsets` (the columns row ``r`` keeps); ``code`` is the mask's
    ``m * m`` bits with flat index 0 (row 0, column 0) as the most significant bit.
    """
    if not 2 <= m <= MAX_ENUM_M:
        raise PatternError(f"exact enumeration: need 2 <= m <= {MAX_ENUM_M}, got {m}")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n < m:
        raise PatternError(f"exact enumeration: need an int n with 1 <= n < m={m}, got {n!r}")
    subsets = row_subsets(n, m)
    out: list[tuple[tuple[int, ...], int]] = []
    for rows in itertools.product(range(len(subsets)), repeat=m):
        counts = [0] * m
        for p in rows:
            for c in subsets[p]:
                counts[c] += 1
        if counts != [n] * m:
            continue
        code = 0
        for p in rows:
            code = (code << m) | _subset_code(subsets[p], m)
        out.append((rows, code))
    out.sort(key=lambda cand: -cand[1])
    return tuple(out)


def exact4_candidates(n: int) -> tuple[tuple[int, int, int, int, int], ...]:
    """The valid n:4-T block masks (24, 90, 24 for n = 1, 2, 3) as ``(p0, p1, p2, p3, code)``, decreasing code.

    Example:
        >>> cands = exact4_candidates(2)
        >>> len(cands), cands[0]
        (90, (0, 0, 5, 5, 52275))
    """
    return tuple((*rows, code) for rows, code in block_candidates(4, n))  # type: ignore[misc]


def exact24_candidates() -> tuple[tuple[int, int, int, int, int], ...]:
    """:func:`exact4_candidates` for ``n = 2`` (the 90 valid 2:4-T masks)."""
    return exact4_candidates(2)


@cache
def _tables(m: int, n: int, device: str) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Selection tables of the enumeration on ``device`` (cached); ``P`` row subsets, ``C`` candidates.

    Returns ``(rows, rest, pairs, masks)``: ``rows`` float64 ``[m * m, m * P]``, column ``(r, p)`` selecting the
    first two columns of subset ``p`` in row ``r``; ``rest[k]`` the index of the (k+2)-th column of each subset in
    the ``[B, m * m]`` flat block, added one at a time; ``pairs`` float64 ``[m * P, 2 * C]``, column ``c``
    selecting ``v_0[p_0]`` and ``v_1[p_1]``, column ``C + c`` selecting ``v_2[p_2]`` and ``v_3[p_3]`` of candidate
    ``c``; ``masks`` bool ``[C, m, m]``. Every product column has at most two ones.
    """
    subsets = row_subsets(n, m)
    count = len(subsets)
    cands = block_candidates(m, n)
    rows = torch.zeros(m * m, m * count, dtype=torch.float64)
    for r in range(m):
        for p, subset in enumerate(subsets):
            for c in subset[:2]:
                rows[r * m + c, r * count + p] = 1.0
    rest = [
        torch.tensor([r * m + subset[k] for r in range(m) for subset in subsets], dtype=torch.int64)
        for k in range(2, n)
    ]
    pairs = torch.zeros(m * count, 2 * len(cands), dtype=torch.float64)
    for c, (picks, _) in enumerate(cands):
        for r, p in enumerate(picks):
            pairs[r * count + p, c if r < 2 else len(cands) + c] = 1.0
    codes = torch.tensor([code for _, code in cands], dtype=torch.int64)
    shifts = torch.arange(m * m - 1, -1, -1, dtype=torch.int64)
    masks = ((codes[:, None] >> shifts) & 1).to(torch.bool).reshape(-1, m, m)
    return rows.to(device), [r.to(device) for r in rest], pairs.to(device), masks.to(device)


def check_blocks(blocks: torch.Tensor, where: str) -> None:
    """Raise :class:`~nmsparse.errors.InputError` unless ``blocks`` is a floating ``[B, m, m]`` tensor."""
    if not isinstance(blocks, torch.Tensor) or blocks.dim() != 3 or blocks.shape[1] != blocks.shape[2]:
        shape = tuple(blocks.shape) if isinstance(blocks, torch.Tensor) else type(blocks).__name__
        raise InputError(f"{where}: expected a [B, m, m] tensor of block scores, got {shape}")
    if not blocks.is_floating_point():
        raise InputError(f"{where}: expected floating scores, got {blocks.dtype}; convert with .float()")


def exact_enum_blocks(blocks: torch.Tensor, n: int) -> torch.Tensor:
    """Optimal masks of ``blocks [B, m, m]`` (``2 <= m <= 4``): exactly ``n`` per row and column, largest kept sum.

    Scores every valid mask in float64 in the Triton kernel's order (see the module docstring) and keeps the first
    maximum, so ties go to the mask keeping the lower flat indices. The sums of two terms are matrix products with
    0/1 matrices that have at most two ones per column: a dot product with two non-zero terms rounds once, whatever
    order the BLAS adds in, so every sum is exactly the kernel's.

    Args:
        blocks: ``[B, m, m]`` floating scores (finite; may be negative), any device.
        n: kept per row and column, ``1 <= n < m``.

    Returns:
        ``torch.bool [B, m, m]`` on ``blocks``' device.

    Example:
        >>> s = torch.tensor([[[4., 3., 0., 0.], [3., 0., 0., 0.], [0., 0., 1., 1.], [0., 0., 1., 1.]]])
        >>> exact_enum_blocks(s, 2)[0].int().tolist()
        [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    """
    check_blocks(blocks, "exact_enum_blocks")
    nblocks, m, _ = blocks.shape
    rows, rest, pairs, masks = _tables(m, n, str(blocks.device))
    cands = pairs.shape[1] // 2
    step = min(max(nblocks, 1), _SUBCHUNK.get(blocks.device.type, _DEVICE_SUBCHUNK))
    device = blocks.device
    best = torch.empty(nblocks, dtype=torch.int64, device=device)
    v_buf = torch.empty(step, rows.shape[1], dtype=torch.float64, device=device)
    pair_buf = torch.empty(step, 2 * cands, dtype=torch.float64, device=device)
    sum_buf = torch.empty(step, cands, dtype=torch.float64, device=device)
    max_buf = torch.empty(step, dtype=torch.float64, device=device)
    scale = blocks.dtype == torch.float64  # other dtypes sum exactly in float64: scaling would change nothing
    flat = blocks.detach().reshape(nblocks, m * m)
    for start in range(0, nblocks, step):
        x = flat[start : start + step].to(torch.float64)
        b = x.shape[0]
        if scale:
            x = scale_blocks(x)
        v = torch.mm(x, rows, out=v_buf[:b])  # v[:, (r, p)]: row r over subset p, columns left to right
        for index in rest:
            v += x.index_select(1, index)
        both = torch.mm(v, pairs, out=pair_buf[:b])  # v_0[p_0] + v_1[p_1] | v_2[p_2] + v_3[p_3]
        sums = torch.add(both[:, :cands], both[:, cands:], out=sum_buf[:b])
        torch.max(sums, dim=1, out=(max_buf[:b], best[start : start + b]))  # the first maximum
    return masks[best]


def _check_matrix(scores: torch.Tensor, m: int, where: str) -> None:
    if not isinstance(scores, torch.Tensor):
        raise InputError(f"{where}: expected a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() != 2:
        raise ShapeError(
            f"{where}: expected a 2-D [rows, K] matrix, got shape {tuple(scores.shape)}; "
            f"take the matrix view first (nmsparse.layout.to_matrix)"
        )
    if not scores.is_floating_point():
        raise InputError(f"{where}: expected floating scores, got {scores.dtype}; convert with .float()")
    rows, cols = scores.shape
    if rows % m or cols % m or rows == 0 or cols == 0:
        raise ShapeError(
            f"{where}: need a non-empty matrix with rows and K multiples of {m}, got "
            f"{tuple(scores.shape)}; pad it or leave this tensor dense"
        )


def exact_4_t_reference(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Optimal n:4-T mask (``n`` in 1, 2, 3) of a ``[rows, K]`` matrix: the twin of the Triton kernel for ``n``.

    Example:
        >>> s = torch.tensor([[4., 3., 0., 0.], [3., 0., 0., 0.], [0., 0., 1., 1.], [0., 0., 1., 1.]])
        >>> exact_4_t_reference(s, 2).int().tolist()
        [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    """
    if n not in (1, 2, 3) or isinstance(n, bool):
        raise PatternError(f"exact_4_t: need n in (1, 2, 3) for 4x4 blocks, got {n!r}")
    _check_matrix(scores, 4, f"exact_{n}_4_t")
    rows, cols = scores.shape
    return from_blocks(exact_enum_blocks(to_blocks(scores.detach(), 4), n), rows, cols)


def exact_2_4_t_reference(scores: torch.Tensor) -> torch.Tensor:
    """Optimal 2:4-T mask of a ``[rows, K]`` score matrix (:func:`exact_4_t_reference` with ``n = 2``)."""
    return exact_4_t_reference(scores, 2)


def exact_2_4_t_masked_reference(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2:4-T mask of ``|weight|`` and ``weight`` with the pruned entries set to +0 (twin of the kernel).

    Returns:
        ``(mask, masked)``: ``mask`` as :func:`exact_2_4_t_reference` of ``weight.abs()``, ``masked`` a new
        contiguous tensor of ``weight``'s dtype, ``torch.where(mask, weight, 0)``.
    """
    _check_matrix(weight, 4, "exact_2_4_t_masked")
    mask = exact_2_4_t_reference(weight.detach().abs())
    masked = torch.where(mask, weight.detach(), torch.zeros((), dtype=weight.dtype, device=weight.device))
    return mask, masked.contiguous()
