"""Mask checks and quality metrics: is a tensor n:m (transposable) sparse, how much magnitude a mask keeps."""

from __future__ import annotations

import math

import torch

from ._inputs import check_tensor
from .errors import InputError, MaskMismatchError
from .layout import check_fits, to_blocks, to_matrix
from .pattern import NMPattern, PatternLike

__all__ = ["is_nm_sparse", "retained_magnitude", "nm_counts"]


def nm_counts(tensor: torch.Tensor, pattern: PatternLike) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Non-zeros per group (plain) or per block row and column (transposable).

    Returns:
        ``(per_group_or_block_row, per_block_column)``: for a plain pattern, counts per group of ``m`` and
        ``None``; for a transposable pattern, ``[B, m]`` row counts and ``[B, m]`` column counts of each block.
    """
    pattern = NMPattern.parse(pattern)
    tensor = check_tensor(tensor, "tensor", "is_nm_sparse")
    check_fits(tensor.shape, pattern, where="is_nm_sparse")
    nonzero = to_matrix(tensor != 0)
    if not pattern.transposable:
        return nonzero.reshape(-1, pattern.m).sum(dim=1), None
    blocks = to_blocks(nonzero, pattern.m)
    return blocks.sum(dim=2), blocks.sum(dim=1)


def is_nm_sparse(tensor: torch.Tensor, pattern: PatternLike) -> bool:
    """Whether ``tensor`` (a bool mask or a weight: non-zeros count as kept) obeys ``pattern``.

    Plain ``n:m``: at most ``n`` non-zeros in every group of ``m`` along the reduction dimension.
    Transposable: at most ``n`` in every row and every column of every aligned ``m x m`` block.

    Raises:
        ShapeError: when ``tensor``'s shape cannot take the pattern at all.
        InputError: ``tensor`` is not a dense tensor with data (lists, numpy arrays, meta or sparse tensors).

    Example:
        >>> import torch, nmsparse
        >>> nmsparse.is_nm_sparse(torch.tensor([[1.0, 0.0, 2.0, 0.0]]), "2:4")
        True
    """
    pattern = NMPattern.parse(pattern)
    rows, cols = nm_counts(tensor, pattern)
    ok = bool((rows <= pattern.n).all())
    if cols is not None:
        ok = ok and bool((cols <= pattern.n).all())
    return ok


def retained_magnitude(weight: torch.Tensor, mask: torch.Tensor) -> float:
    """Fraction of ``|weight|`` kept by ``mask`` (1.0 for an all-zero weight); finite for every finite weight.

    Raises:
        InputError: ``weight`` or ``mask`` is not a dense tensor with data (lists, meta or sparse tensors), or
            ``weight`` holds non-finite values.
        MaskMismatchError: the shapes differ.

    Example:
        >>> import torch, nmsparse
        >>> nmsparse.retained_magnitude(torch.tensor([3.0, -1.0]), torch.tensor([True, False]))
        0.75
    """
    weight = check_tensor(weight, "weight", "retained_magnitude")
    mask = check_tensor(mask, "mask", "retained_magnitude")
    if weight.shape != mask.shape:
        raise MaskMismatchError(
            f"retained_magnitude: mask shape {tuple(mask.shape)} does not match weight shape {tuple(weight.shape)}"
        )
    magnitude = weight.detach().abs().double()
    peak = float(magnitude.max()) if magnitude.numel() else 0.0
    if peak == 0.0:
        return 1.0
    if not math.isfinite(peak):
        raise InputError(
            "retained_magnitude: weight holds non-finite values; the kept fraction is only defined for finite "
            "weights (fix them, e.g. torch.nan_to_num, first)"
        )
    # Divide by the largest magnitude first: sums of values near 1e308 would overflow (inf / inf = NaN), and
    # the ratio is the same.
    magnitude = magnitude / peak
    total = float(magnitude.sum())
    return float((magnitude * mask.to(device=magnitude.device, dtype=torch.bool)).sum()) / total
