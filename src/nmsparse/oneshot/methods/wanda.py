"""``algorithm="wanda"`` (Sun et al., 2023): keep the largest ``|w_ij| * ||x_j||_2``; no weight update (unless
``refit``).

``||x_j||_2 = sqrt(H_jj)``, the diagonal of the input Gram matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...config import ConfigBase, Interval, config_field
from ..layer import damping_shift, refit, refit_bytes
from . import Layer, LayerSolution, _default_solve_bytes, register_method

#: The ridge of Wanda's ``refit``, relative to ``mean(diag H)``: SparseGPT's default damping.
REFIT_DAMPING = 0.01


@dataclass(frozen=True, kw_only=True)
class WandaOptions(ConfigBase):
    """Settings of Wanda.

    Attributes:
        refit: conjugate-gradient steps that re-fit the kept weights to the dense output, Wanda's mask fixed
            (:func:`nmsparse.oneshot.layer.refit`, ridge ``REFIT_DAMPING * mean(diag H)``); 0 (the default):
            Wanda as published, no weight update. It costs SparseGPT's memory (the Gram is kept either way) and
            recovers most of what the mask loses (docs/oneshot.md).
    """

    refit: int = config_field(
        0,
        help="sparsegpt, wanda: CG steps re-fitting the kept weights to the dense output, mask fixed (0: off)",
        metavar="N",
    )

    _constraints = {"refit": [Interval(int, 0, None, closed="left")]}


def solve(layer: Layer) -> LayerSolution:
    grams = layer.stats.gram
    masks = layer.masks([w.abs() * g.diagonal().clamp_min(0).sqrt().to(w.dtype) for w, g in zip(layer.weights, grams)])
    if not layer.options.refit:
        return LayerSolution([w * m for w, m in zip(layer.weights, masks)], masks)
    fitted = [
        refit(w, g, m, shift=damping_shift(g, REFIT_DAMPING), iterations=layer.options.refit)
        for w, m, g in zip(layer.weights, masks, grams)
    ]
    return LayerSolution(fitted, masks)


def solve_bytes(rows: int, cols: int, itemsize: int, options: WandaOptions) -> int:
    """The masked copy of the weight; with ``refit``, the re-fit's Gram copy and CG vectors."""
    plain = _default_solve_bytes(rows, cols, itemsize, options)
    return max(plain, refit_bytes(rows, cols, itemsize)) if options.refit else plain


register_method(
    "wanda", solve, options=WandaOptions, statistics="gram", solve_bytes=solve_bytes, permute_scores="wanda"
)
