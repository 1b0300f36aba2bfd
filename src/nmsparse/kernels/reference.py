"""Pure-torch twins of the Triton kernels: the same arithmetic, the same tie rule, any device.

Each Triton kernel in this package has a twin here that it must match bit for bit (tests compare the masks
with ``torch.equal``). The twins are also the ``backend="torch"`` implementations of the kernel entry points
in :mod:`nmsparse.kernels`.

Exact 2:4-T (:func:`exact_2_4_t_reference`): a valid block keeps 2 of 4 in every row and column (90 masks).
Each row chooses one of the 6 column pairs; the kept score of a block mask is
``(v0[p0] + v1[p1]) + (v2[p2] + v3[p3])`` with ``v_r[p] = x[r, a] + x[r, b]`` for pair ``p = (a, b)``, all in
float64 in exactly this order (kernel and twin alike). The 90 candidates are visited in decreasing order of
their 16-bit code (flat index 0 as the most significant bit) and one replaces the best so far only when its
score is strictly larger, so among exactly equal sums the mask keeping the lower flat indices wins: the order
of :func:`nmsparse.solvers.enumerate.valid_block_masks`, whose argmax keeps the first maximum. Scores of fp32
inputs whose block maxima and minima are within 2^26 of each other sum exactly in float64, so on such inputs
this is the CPU enumeration solver's mask, ties included.
"""

from __future__ import annotations

import itertools
from functools import cache

import torch

__all__ = [
    "PAIRS",
    "row_subsets",
    "exact4_candidates",
    "exact24_candidates",
    "exact_4_t_reference",
    "exact_2_4_t_reference",
    "exact_2_4_t_masked_reference",
    "greedy_t_reference",
    "topn_reference",
]

#: The 6 column pairs a row of a 2:4-T block can keep, in decreasing order of their 4-bit code (column 0 = MSB).
PAIRS: tuple[tuple[int, ...], ...] = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))


def _subset_code(subset: tuple[int, ...]) -> int:
    code = 0
    for c in subset:
        code |= 1 << (3 - c)
    return code


@cache
def row_subsets(n: int) -> tuple[tuple[int, ...], ...]:
    """The column subsets of size ``n`` a row of a 4x4 block can keep, decreasing 4-bit code (``n=2``: PAIRS)."""
    return tuple(sorted(itertools.combinations(range(4), n), key=lambda s: -_subset_code(s)))


@cache
def exact4_candidates(n: int) -> tuple[tuple[int, int, int, int, int], ...]:
    """The valid n:4-T block masks (24, 90, 24 for n = 1, 2, 3) as ``(p0, p1, p2, p3, code)``, decreasing code.

    ``p_r`` indexes :func:`row_subsets` (the columns row ``r`` keeps); ``code`` is the mask's 16 bits with flat
    index 0 (row 0, column 0) as the most significant bit.

    Example:
        >>> cands = exact4_candidates(2)
        >>> len(cands), cands[0]
        (90, (0, 0, 5, 5, 52275))
    """
    subsets = row_subsets(n)
    out: list[tuple[int, int, int, int, int]] = []
    for rows in itertools.product(range(len(subsets)), repeat=4):
        counts = [0, 0, 0, 0]
        for p in rows:
            for c in subsets[p]:
                counts[c] += 1
        if counts != [n] * 4:
            continue
        code = 0
        for p in rows:
            code = (code << 4) | _subset_code(subsets[p])
        p0, p1, p2, p3 = rows
        out.append((p0, p1, p2, p3, code))
    out.sort(key=lambda cand: -cand[4])
    return tuple(out)


def exact24_candidates() -> tuple[tuple[int, int, int, int, int], ...]:
    """:func:`exact4_candidates` for ``n = 2`` (the 90 valid 2:4-T masks)."""
    return exact4_candidates(2)


def _check_matrix(scores: torch.Tensor, m: int, where: str) -> None:
    from ..errors import InputError, ShapeError

    if not isinstance(scores, torch.Tensor):
        raise InputError(f"{where}: expected a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() != 2:
        raise ShapeError(f"{where}: expected a 2-D [rows, K] matrix, got shape {tuple(scores.shape)}; "
                         f"take the matrix view first (nmsparse.layout.to_matrix)")
    if not scores.is_floating_point():
        raise InputError(f"{where}: expected floating scores, got {scores.dtype}; convert with .float()")
    rows, cols = scores.shape
    if rows % m or cols % m or rows == 0 or cols == 0:
        raise ShapeError(f"{where}: need a non-empty matrix with rows and K multiples of {m}, got "
                         f"{tuple(scores.shape)}; pad it or leave this tensor dense")


def _codes_to_mask(code: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """16-bit block codes ``[rows/4, cols/4]`` -> bool mask ``[rows, cols]``."""
    shifts = torch.arange(15, -1, -1, device=code.device, dtype=torch.int64)
    bits = ((code.unsqueeze(-1) >> shifts) & 1).to(torch.bool)  # (R4, C4, 16)
    return bits.reshape(rows // 4, cols // 4, 4, 4).permute(0, 2, 1, 3).reshape(rows, cols)


def _row_sum(x: torch.Tensor, r: int, subset: tuple[int, ...]) -> torch.Tensor:
    total = x[:, r, :, subset[0]]
    for c in subset[1:]:
        total = total + x[:, r, :, c]
    return total


def _exact4_codes(scores: torch.Tensor, n: int) -> torch.Tensor:
    rows, cols = scores.shape
    x = scores.detach().to(torch.float64).reshape(rows // 4, 4, cols // 4, 4)  # (R4, r, C4, c)
    # v[r][p]: row r of every block keeps subset p; (R4, C4) each, the kernel's additions in the kernel's order.
    v = [[_row_sum(x, r, subset) for subset in row_subsets(n)] for r in range(4)]
    top: dict[tuple[int, int], torch.Tensor] = {}
    bottom: dict[tuple[int, int], torch.Tensor] = {}
    best: torch.Tensor | None = None
    best_code = torch.empty(0)
    for p0, p1, p2, p3, code in exact4_candidates(n):
        t = top.get((p0, p1))
        if t is None:
            t = top[(p0, p1)] = v[0][p0] + v[1][p1]
        b = bottom.get((p2, p3))
        if b is None:
            b = bottom[(p2, p3)] = v[2][p2] + v[3][p3]
        s = t + b
        if best is None:
            best = s
            best_code = torch.full(s.shape, code, dtype=torch.int64, device=s.device)
        else:
            better = s > best
            best = torch.where(better, s, best)
            best_code = torch.where(better, torch.full_like(best_code, code), best_code)
    return best_code


def exact_4_t_reference(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Optimal n:4-T mask (``n`` in 1, 2, 3) of a ``[rows, K]`` matrix: twin of the Triton kernel for that ``n``.

    Same rule as :func:`exact_2_4_t_reference` (row subsets of size ``n`` instead of pairs; a row sum adds its
    columns left to right).
    """
    from ..errors import PatternError

    if n not in (1, 2, 3):
        raise PatternError(f"exact_4_t: need n in (1, 2, 3) for 4x4 blocks, got {n!r}")
    _check_matrix(scores, 4, f"exact_{n}_4_t")
    rows, cols = scores.shape
    return _codes_to_mask(_exact4_codes(scores, n), rows, cols)


def exact_2_4_t_reference(scores: torch.Tensor) -> torch.Tensor:
    """Optimal 2:4-T mask of a ``[rows, K]`` score matrix (the torch twin of the Triton kernel).

    Args:
        scores: ``[rows, K]`` floating scores (any dtype, any strides, finite; may be negative); ``rows`` and
            ``K`` multiples of 4.

    Returns:
        ``torch.bool [rows, K]`` on ``scores``' device: every aligned 4x4 block keeps exactly 2 per row and
        column with the largest kept sum; ties go to the mask keeping the lower flat indices.

    Example:
        >>> s = torch.tensor([[4., 3., 0., 0.], [3., 0., 0., 0.], [0., 0., 1., 1.], [0., 0., 1., 1.]])
        >>> exact_2_4_t_reference(s).int().tolist()
        [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    """
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


def greedy_t_reference(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The 2-approximation (greedy) n:m-T mask of a ``[rows, K]`` matrix: :mod:`nmsparse.solvers.greedy`.

    Visit each block's entries by decreasing score (ties: lower flat index) and keep one when its row and
    column hold fewer than ``n``. fp16/bf16 scores are widened to float32 first (order-preserving).

    Example:
        >>> greedy_t_reference(torch.eye(4) + 0.5, 1, 4).int().tolist()[0]
        [1, 0, 0, 0]
    """
    from ..layout import from_blocks, to_blocks
    from ..solvers.greedy import greedy_blocks

    _check_matrix(scores, m, "greedy_t")
    rows, cols = scores.shape
    s = scores.detach()
    if s.dtype in (torch.float16, torch.bfloat16):
        s = s.float()
    blocks = to_blocks(s, m).contiguous()
    return from_blocks(greedy_blocks(blocks, n), rows, cols)


def topn_reference(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Plain n:m mask (top ``n`` of every ``m`` consecutive scores along K, ties: lower index).

    Example:
        >>> topn_reference(torch.tensor([[1., 3., 3., 2.]]), 2, 4).int().tolist()
        [[0, 1, 1, 0]]
    """
    from ..errors import InputError, ShapeError
    from ..solvers.topn import topn_groups

    if not isinstance(scores, torch.Tensor) or scores.dim() != 2 or not scores.is_floating_point():
        raise InputError("topn: expected a 2-D floating [rows, K] tensor")
    if scores.shape[1] % m or scores.numel() == 0:
        raise ShapeError(f"topn: K={scores.shape[1]} is not a multiple of m={m} (or the matrix is empty)")
    s = scores.detach()
    if s.dtype in (torch.float16, torch.bfloat16):
        s = s.float()
    return topn_groups(s.reshape(-1, m), n).reshape(scores.shape)
