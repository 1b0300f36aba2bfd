"""``algorithm="wanda"`` (Sun et al., 2023): keep the largest ``|w_ij| * ||x_j||_2``; no weight update.

``||x_j||_2 = sqrt(H_jj)``, the diagonal of the input Gram matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...config import ConfigBase
from . import Layer, LayerSolution, register_method


@dataclass(frozen=True, kw_only=True)
class WandaOptions(ConfigBase):
    """Wanda has no options."""


def solve(layer: Layer) -> LayerSolution:
    scores = []
    for w, gram in zip(layer.weights, layer.stats.gram):
        norms = gram.diagonal().clamp_min(0).sqrt().to(w.dtype)
        scores.append(w.abs() * norms.unsqueeze(0))
    masks = layer.masks(scores)
    return LayerSolution([w * m for w, m in zip(layer.weights, masks)], masks)


register_method("wanda", solve, options=WandaOptions, statistics="gram")
