"""How a layer's stored weight maps onto the matrix view the solvers work on, with optional zero-padding.

* ``nn.Linear`` ``[out, in]`` and ``nn.Conv2d`` ``[out, in, kh, kw]``: as :mod:`nmsparse.layout` describes.
* ``nn.Conv1d`` ``[out, in, k]``: viewed as the Conv2d ``[out, in, 1, k]``, so groups run along input channels.
* ``transformers``' ``Conv1D`` (GPT-2's linears) stores ``[in, out]``: its view is the transpose ``[out, in]``,
  so groups run along the reduction (input) dimension of the product, dim 0 of the stored weight.

Padding (``pad=True`` in :func:`nmsparse.prune_`): the matrix view ``[rows, K]`` is extended with zero-score
columns (and, for ``-T`` patterns, rows) up to multiples of ``m``; the mask is solved on the padded view and
cropped. The pattern then holds on the padded view (so every real row and column keeps at most ``n``), and no
padded entry can appear in the result.
"""

from __future__ import annotations

import torch

from ..layout import check_fits, matrix_shape
from ..pattern import NMPattern

__all__ = ["to_view", "from_view", "view_shape", "padded_shape", "pad_view", "crop_view", "mask_fits"]


def to_view(tensor: torch.Tensor, *, transposed: bool = False) -> torch.Tensor:
    """The 2-D/4-D tensor :func:`~nmsparse.find_mask` accepts for a stored weight (a view, no copy)."""
    if transposed:
        return tensor.t()
    if tensor.dim() == 3:
        return tensor.unsqueeze(2)
    return tensor


def from_view(view: torch.Tensor, shape: tuple[int, ...] | torch.Size, *, transposed: bool = False) -> torch.Tensor:
    """Inverse of :func:`to_view` for a stored weight of ``shape``."""
    if transposed:
        return view.t().contiguous()
    if len(shape) == 3:
        return view.squeeze(2)
    return view


def view_shape(shape: tuple[int, ...] | torch.Size, *, transposed: bool = False) -> tuple[int, ...]:
    """Shape of :func:`to_view` of a weight of ``shape``."""
    shape = tuple(int(s) for s in shape)
    if transposed:
        return (shape[1], shape[0])
    if len(shape) == 3:
        return (shape[0], shape[1], 1, shape[2])
    return shape


def padded_shape(shape: tuple[int, ...], pattern: NMPattern) -> tuple[int, int]:
    """``(rows, K)`` of the matrix view of a view-shaped weight, rounded up to what ``pattern`` needs."""
    rows, cols = matrix_shape(shape)
    m = pattern.m
    cols = -(-cols // m) * m
    if pattern.transposable:
        rows = -(-rows // m) * m
    return rows, cols


def pad_view(matrix: torch.Tensor, pattern: NMPattern) -> torch.Tensor:
    """Zero-pad a ``[rows, K]`` matrix to :func:`padded_shape` (zeros: finite, the lowest ``|w|``)."""
    rows, cols = padded_shape(tuple(matrix.shape), pattern)
    if (rows, cols) == tuple(matrix.shape):
        return matrix
    out = matrix.new_zeros(rows, cols)
    out[: matrix.shape[0], : matrix.shape[1]] = matrix
    return out


def crop_view(mask: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """The real ``[rows, cols]`` part of a padded matrix mask."""
    return mask[:rows, :cols].contiguous()


def mask_fits(mask: torch.Tensor, pattern: NMPattern, *, transposed: bool = False, padded: bool = False) -> bool:
    """Whether a stored-layout mask obeys ``pattern`` on its (padded, when ``padded``) matrix view."""
    from ..layout import to_matrix
    from ..metrics import is_nm_sparse

    view = to_view(mask, transposed=transposed)
    if padded:
        matrix = pad_view(to_matrix(view.to(torch.bool)), pattern)
        return bool(is_nm_sparse(matrix, pattern))
    try:
        check_fits(tuple(view.shape), pattern, where="")
    except ValueError:
        return False
    return bool(is_nm_sparse(view, pattern))
