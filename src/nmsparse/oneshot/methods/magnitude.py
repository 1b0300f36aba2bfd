"""``algorithm="magnitude"``: keep the largest ``|w|`` (calibration optional); no weight update."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import ConfigBase
from . import Layer, LayerSolution, register_method


@dataclass(frozen=True, kw_only=True)
class MagnitudeOptions(ConfigBase):
    """Magnitude pruning has no options."""


def solve(layer: Layer) -> LayerSolution:
    masks = layer.masks([w.abs() for w in layer.weights])
    return LayerSolution([w * m for w, m in zip(layer.weights, masks)], masks)


register_method("magnitude", solve, options=MagnitudeOptions, statistics="gram", needs_calibration=False)
