"""``algorithm="sparsegpt"`` (Frantar & Alistarh, 2023): OBS reconstruction with a damped Hessian, the mask chosen
group by group during the sweep (the math: :func:`nmsparse.oneshot.layer.sparsegpt`)."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import ConfigBase, Interval, config_field
from ...errors import ConfigError
from ..layer import refit, refit_bytes, sparsegpt
from . import Layer, LayerSolution, register_method


@dataclass(frozen=True, kw_only=True)
class SparseGPTOptions(ConfigBase):
    """Settings of SparseGPT.

    Attributes:
        damping: ``lambda`` of ``H + lambda I``, as a fraction of ``mean(diag(H))``.
        block_size: lazy-update block, in columns (rounded down to a multiple of ``m``).
        refit: conjugate-gradient steps that re-fit the kept weights to the dense output after the sweep, its
            mask fixed (:func:`nmsparse.oneshot.layer.refit`, on the sweep's damped objective); 0 (the default):
            SparseGPT's own weights, as the reference implementation. 25 recovers most of what the sweep leaves
            (docs/oneshot.md).
    """

    damping: float = config_field(0.01, help="sparsegpt: damping of H + lambda*I, relative to mean(diag(H))")
    block_size: int = config_field(128, help="sparsegpt: lazy-update block, in columns")
    refit: int = config_field(
        0,
        help="sparsegpt, wanda: CG steps re-fitting the kept weights to the dense output, mask fixed (0: off)",
        metavar="N",
    )

    _constraints = {
        "damping": [Interval(float, 0, None, closed="left")],
        "block_size": [Interval(int, 1, None, closed="left")],
        "refit": [Interval(int, 0, None, closed="left")],
    }


def solve(layer: Layer) -> LayerSolution:
    if layer.solver != ("exact" if layer.pattern.transposable else "topn"):
        raise ConfigError(
            f"{layer.where}: sparsegpt chooses each group's mask inside its sweep (top-n, or exact for "
            f"-T patterns); method={layer.solver!r} does not apply: leave method='auto'"
        )
    options, perm = layer.options, layer.columns
    back = None if perm is None else perm.argsort()  # the pattern's column order back to the weights'
    weights, masks, damping, error = [], [], 0.0, 0.0
    for w, gram in zip(layer.weights, layer.stats.gram):
        if perm is not None:  # a conv: sweep the columns in the pattern's order (input channels innermost)
            w, gram = w[:, perm], gram[perm][:, perm]
        result = sparsegpt(
            w, gram, layer.pattern, damping=options.damping, block_size=options.block_size, where=layer.where
        )
        new, mask = result.weight, result.mask
        if options.refit:
            new = refit(w, gram, mask, new, shift=result.shift, iterations=options.refit)
        if back is not None:
            new, mask = new[:, back], mask[:, back]
        weights.append(new)
        masks.append(mask)
        damping = max(damping, result.damping)
        error += result.error or 0.0
    # with refit, the sweep's error is not the re-fitted weights': the engine measures it
    return LayerSolution(weights, masks, info={"damping": damping}, error=None if options.refit else error)


def solve_bytes(rows: int, cols: int, itemsize: int, options: SparseGPTOptions) -> int:
    """Weight copies, mask and the Hessian factors of one solve; with ``refit``, the re-fit's ``[out, in]`` CG
    vectors (it runs after the sweep has freed its own)."""
    sweep = (3 * cols * cols + 4 * rows * cols) * itemsize + rows * cols
    return max(sweep, refit_bytes(rows, cols, itemsize)) if options.refit else sweep


register_method(
    "sparsegpt", solve, options=SparseGPTOptions, statistics="gram", solve_bytes=solve_bytes, permute_scores="sparsegpt"
)
