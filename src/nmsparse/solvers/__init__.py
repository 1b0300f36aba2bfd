"""``find_mask``: validate a weight, take its matrix view and dispatch to a registered mask method."""

from __future__ import annotations

from typing import Literal

import torch

from ..errors import ConfigError, InputError, ShapeError
from ..layout import check_fits, from_matrix, to_matrix
from ..pattern import NMPattern, PatternLike
from . import exact as _exact
from . import greedy as _greedy
from . import topn as _topn
from ._registry import get_solver, list_methods, register_solver

__all__ = ["find_mask", "list_methods", "register_solver", "Method"]

Method = Literal["auto", "topn", "exact", "greedy", "greedy-repair"]

register_solver("topn", _topn.topn_matrix, exact=True,
                description="per-group top-n; optimal for plain n:m, refuses transposable patterns")
register_solver("exact", _exact.exact_matrix, exact=True,
                description="provably optimal transposable mask per block among masks with exactly n per row and "
                            "column (valid-block enumeration for m=4, batched min-cost flow for m>=8)")
register_solver("greedy", _greedy.greedy_matrix, exact=False,
                description="the paper's 2-approximation: at most n per row/column, >= 1/2 of the optimum")
register_solver("greedy-repair", _greedy.greedy_repair_matrix, exact=False,
                description="greedy, then short rows/columns filled to exactly n by best 3-edge swaps")

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _check_tensor(name: str, tensor: object) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise InputError(f"find_mask: {name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in _FLOAT_DTYPES:
        raise InputError(
            f"find_mask: {name} must be floating point (float32, float16, bfloat16 or float64), got "
            f"{tensor.dtype}; convert it with .float()"
        )
    if tensor.numel() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise InputError(
            f"find_mask: {name} holds {bad} non-finite value(s) (inf or NaN) out of {tensor.numel()}; "
            f"masks are only defined for finite scores: fix or replace them (e.g. torch.nan_to_num) first"
        )
    return tensor


def find_mask(weight: torch.Tensor, pattern: PatternLike, *, method: Method | str = "auto",
              scores: torch.Tensor | None = None, progress: bool | None = None) -> torch.Tensor:
    """Find an n:m or transposable n:m mask for a Linear or Conv2d weight.

    The importance of each weight is ``|weight|`` (or ``scores`` when given); the mask keeps as much of it as the
    method can. Conv2d weights ``[out, in, kh, kw]`` are masked through their matrix view ``[out, kh*kw*in]``,
    so groups run along input channels; transposable blocks span ``m`` output rows x ``m`` input columns.

    Args:
        weight: ``[out, in]`` or ``[out, in, kh, kw]`` floating tensor (fp32, fp16, bf16 or fp64), any device.
        pattern: ``"2:4"``, ``"4:8-T"``, ... or an :class:`~nmsparse.NMPattern`.
        method: ``"auto"`` (topn for plain n:m, exact for transposable), ``"topn"`` (per-group top-n, plain
            patterns only), ``"exact"`` (the optimal transposable mask among those keeping exactly ``n`` per row
            and column of every block; a mask with a few short rows can occasionally keep slightly more, which
            ``greedy`` may then find), ``"greedy"`` (the paper's 2-approximation: at most ``n`` per row and column) or
            ``"greedy-repair"`` (greedy, then filled to exactly ``n``). For plain patterns every method returns
            the optimal top-n mask.
        scores: *optional* importance of the same shape as ``weight`` that replaces ``|weight|``.
        progress: show a progress bar; ``None`` = only for long work on a terminal.

    Returns:
        ``torch.bool`` mask of ``weight``'s shape on ``weight``'s device, ``True`` = keep. Ties go to the lower
        flat index (topn and greedy); ``exact`` is deterministic and optimal.

    Raises:
        PatternError: unparseable pattern.
        ShapeError: rank other than 2 or 4, empty tensor, or a dimension that is not a multiple of ``m``.
        InputError: non-floating dtype or non-finite values.
        ConfigError: unknown method, or ``"topn"`` with a transposable pattern.

    Example:
        >>> import torch, nmsparse
        >>> w = torch.tensor([[0.1, -0.9, 0.3, 0.4], [1.0, 0.2, -0.3, 0.0]])
        >>> nmsparse.find_mask(w, "2:4").int().tolist()
        [[0, 1, 0, 1], [1, 0, 1, 0]]
    """
    pattern = NMPattern.parse(pattern)
    if not isinstance(method, str):
        raise ConfigError(f"find_mask: method must be a string, one of {list_methods()}; got {method!r}")
    weight = _check_tensor("weight", weight)
    if method == "auto":
        method = "exact" if pattern.transposable else "topn"
    spec = get_solver(method)
    if scores is None:
        importance = weight.abs()
    else:
        scores = _check_tensor("scores", scores)
        if scores.shape != weight.shape:
            raise ShapeError(
                f"find_mask: scores must have the weight's shape {tuple(weight.shape)}, got {tuple(scores.shape)}"
            )
        importance = scores.to(weight.device)
    check_fits(weight.shape, pattern)
    if importance.dtype in (torch.float16, torch.bfloat16):
        importance = importance.float()  # order-preserving; sums below are then computed in fp32 or better
    matrix = to_matrix(importance)
    if not pattern.transposable:
        mask = _topn.topn_matrix(matrix, pattern)
    elif method == "topn":
        raise ConfigError(
            f"find_mask: method 'topn' does not make transposable masks (pattern {pattern}); use 'exact', "
            f"'greedy' or 'greedy-repair', or the plain pattern '{pattern.n}:{pattern.m}'"
        )
    else:
        mask = spec.fn(matrix.contiguous(), pattern, progress)
    return from_matrix(mask, weight.shape)
