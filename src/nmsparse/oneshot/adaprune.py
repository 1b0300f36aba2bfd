"""``method="adaprune"`` of :func:`nmsparse.prune_oneshot_`: nmsparse's AdaPrune fit, one layer at a time.

The mask keeps the largest ``|w| * ||x||`` (exact transposable solver for ``-T``); then the kept weights are
fitted to the layer's own dense output on its calibration input with the mask fixed, by
:func:`nmsparse.adaprune.fitting.fit_layer` (conjugate gradients on the exact quadratic, absorb-mean start, best
iterate kept). The statistics it needs follow from the input Gram matrix ``H`` alone: with target ``Y = X W^T``,
``G = H``, ``C = X^T Y = H W^T`` and ``sum(Y^2) = tr(W H W^T)``.
"""

from __future__ import annotations

import torch

from ..pattern import NMPattern
from .layer import LayerResult, saliency_mask

__all__ = ["fit"]


def fit(weight: torch.Tensor, gram: torch.Tensor, pattern: NMPattern, *, tokens: int, iterations: int,
        where: str = "prune_oneshot_") -> LayerResult:
    """Mask ``weight`` (``[out, in]``) by ``|w| * ||x||`` and fit its kept weights on the Gram matrix ``gram``."""
    from ..adaprune.config import AdaPruneConfig
    from ..adaprune.fitting import fit_layer
    from ..adaprune.statistics import LayerStatistics

    rows, cols = weight.shape
    norms = torch.diagonal(gram).clamp_min(0).sqrt().to(weight.dtype)
    mask = saliency_mask(weight, weight.abs() * norms.unsqueeze(0), pattern)
    g = gram.double()
    w = weight.double()
    stats = LayerStatistics(cols, rows, bias=False, device=weight.device, name=where)
    stats.gram[0] = g
    stats.cross[0] = g @ w.T
    stats.yy = ((w @ g) * w).sum()
    stats.rows = max(int(tokens), 1)
    config = AdaPruneConfig(pattern=str(pattern), iterations=iterations)
    result = fit_layer(weight.float(), mask, stats, config)
    fitted = (result.weight.to(weight.dtype) * mask).reshape(rows, cols)
    return LayerResult(fitted, mask)
