"""Matrix view of a weight, and its groups and blocks.

* Linear ``[out, in]`` is used as is.
* Conv2d ``[out, in, kh, kw]`` is permuted to ``[out, kh, kw, in]`` and flattened to ``[out, K]`` with
  ``K = kh * kw * in``, so groups run along input channels (NHWC, what sparse conv kernels reduce over).

Plain ``n:m`` groups are ``m`` consecutive columns of one row. Transposable blocks are aligned ``m x m`` tiles
(``m`` output rows x ``m`` columns).
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import ShapeError
from .pattern import NMPattern

__all__ = [
    "to_matrix",
    "from_matrix",
    "matrix_shape",
    "to_groups",
    "to_blocks",
    "from_blocks",
    "check_fits",
    "fits",
    "is_transposed_layer",
]


def to_matrix(tensor: torch.Tensor) -> torch.Tensor:
    """Return the ``[rows, K]`` matrix view of a 2-D or 4-D weight (a copy only for 4-D).

    Example:
        >>> to_matrix(torch.zeros(8, 3, 2, 2)).shape
        torch.Size([8, 12])
    """
    if tensor.dim() == 2:
        return tensor
    if tensor.dim() == 4:
        out = tensor.shape[0]
        return tensor.permute(0, 2, 3, 1).reshape(out, -1)
    raise ShapeError(
        f"expected a 2-D Linear weight [out, in] or a 4-D Conv2d weight [out, in, kh, kw], got "
        f"{tensor.dim()}-D shape {tuple(tensor.shape)}; reshape it to one of those first"
    )


def from_matrix(matrix: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`to_matrix` for a weight of ``shape``.

    Example:
        >>> w = torch.randn(8, 3, 2, 2)
        >>> torch.equal(from_matrix(to_matrix(w), w.shape), w)
        True
    """
    if len(shape) == 2:
        return matrix.reshape(shape)
    out, cin, kh, kw = shape
    return matrix.reshape(out, kh, kw, cin).permute(0, 3, 1, 2).contiguous()


def matrix_shape(shape: torch.Size | tuple[int, ...]) -> tuple[int, int]:
    """``(rows, K)`` of the matrix view of a weight of ``shape``.

    Example:
        >>> matrix_shape((64, 3, 7, 7))
        (64, 147)
    """
    rows = int(shape[0])
    cols = 1
    for size in shape[1:]:
        cols *= int(size)
    return rows, cols


def fits(shape: torch.Size | tuple[int, ...], pattern: NMPattern) -> bool:
    """Whether a weight of ``shape`` can take ``pattern`` (rank 2 or 4, sizes multiples of m).

    Example:
        >>> fits((64, 3, 7, 7), NMPattern.parse("2:4")), fits((64, 64), NMPattern.parse("4:8-T"))
        (False, True)
    """
    try:
        check_fits(shape, pattern)
    except ShapeError:
        return False
    return True


def check_fits(shape: torch.Size | tuple[int, ...], pattern: NMPattern, *, where: str = "find_mask") -> None:
    """Raise :class:`ShapeError` unless a weight of ``shape`` can take ``pattern`` (``where`` prefixes messages).

    Example:
        >>> check_fits((6, 8), NMPattern.parse("4:8-T"), where="demo")
        Traceback (most recent call last):
        ...
        nmsparse.errors.ShapeError: demo: the output dimension has size 6, not a multiple of m=8, ...
    """
    where = f"{where}: " if where else ""
    if len(shape) not in (2, 4):
        raise ShapeError(
            f"{where}expected a 2-D Linear weight [out, in] or a 4-D Conv2d weight [out, in, kh, kw], got "
            f"{len(shape)}-D shape {tuple(shape)}; reshape it to one of those first"
        )
    if any(int(s) == 0 for s in shape):
        raise ShapeError(f"{where}got an empty tensor of shape {tuple(shape)}; there is nothing to mask")
    rows, cols = matrix_shape(shape)
    m = pattern.m
    what = "in*kh*kw" if len(shape) == 4 else "in"
    if cols % m:
        raise ShapeError(
            f"{where}the reduction dimension ({what}) has size {cols}, not a multiple of m={m} for pattern "
            f"{pattern}; pad it to a multiple of {m} or leave this layer dense"
        )
    if pattern.transposable and rows % m:
        raise ShapeError(
            f"{where}the output dimension has size {rows}, not a multiple of m={m}, so it cannot be tiled "
            f"into {m}x{m} blocks for pattern {pattern}; use the plain pattern '{pattern.n}:{m}' or leave this "
            f"layer dense"
        )


def to_groups(matrix: torch.Tensor, m: int) -> torch.Tensor:
    """``[rows, K]`` -> ``[rows * K / m, m]``: one row per group of ``m`` consecutive columns.

    Example:
        >>> to_groups(torch.arange(8).reshape(1, 8), 4).tolist()
        [[0, 1, 2, 3], [4, 5, 6, 7]]
    """
    return matrix.reshape(-1, m)


def to_blocks(matrix: torch.Tensor, m: int) -> torch.Tensor:
    """``[rows, K]`` -> ``[rows/m * K/m, m, m]``: aligned ``m x m`` blocks, block-row major.

    Example:
        >>> to_blocks(torch.arange(8).reshape(2, 4), 2)[1].tolist()
        [[2, 3], [6, 7]]
    """
    rows, cols = matrix.shape
    # (rows/m, m, K/m, m) -> (rows/m, K/m, m, m)
    return matrix.reshape(rows // m, m, cols // m, m).permute(0, 2, 1, 3).reshape(-1, m, m)


def from_blocks(blocks: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of :func:`to_blocks`.

    Example:
        >>> x = torch.arange(32).reshape(4, 8)
        >>> torch.equal(from_blocks(to_blocks(x, 4), 4, 8), x)
        True
    """
    m = blocks.shape[-1]
    return blocks.reshape(rows // m, cols // m, m, m).permute(0, 2, 1, 3).reshape(rows, cols)


def is_transposed_layer(module: torch.nn.Module) -> bool:
    """Whether ``module`` is a ``transformers`` ``Conv1D``: a linear layer whose weight is stored ``[in, out]``.

    Example:
        >>> import torch
        >>> is_transposed_layer(torch.nn.Linear(4, 4))
        False
    """
    # parametrized modules are instances of a generated subclass, so look along the MRO
    if not any(cls.__name__ == "Conv1D" for cls in type(module).__mro__) or not hasattr(module, "nf"):
        return False
    weight = getattr(module, "weight", None)
    nf: Any = module.nf
    return isinstance(weight, torch.Tensor) and weight.dim() == 2 and int(weight.shape[1]) == int(nf)
