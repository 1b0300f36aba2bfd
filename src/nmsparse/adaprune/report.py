"""Reports: what AdaPrune did to each layer, and which layers it left dense and why."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from .config import AdaPruneConfig

__all__ = ["AdaPruneLayerReport", "AdaPruneReport"]


@dataclass(frozen=True)
class AdaPruneLayerReport:
    """What AdaPrune did to one layer. Errors are mean squared errors per output value over every
    calibration row (token or position) against the target output.

    Attributes:
        name: qualified module name.
        kind: module class name (``"Linear"``, ``"Conv2d"``).
        shape: weight shape.
        pattern: the pattern, e.g. ``"4:8-T"``.
        rows: calibration rows (tokens / output positions) in the statistics.
        stored_rows: rows kept for mini-batch steps (``0`` with full-batch fitting).
        target_power: mean squared target output (divide an error by it for a relative error).
        error_dense: error of the unpruned layer on its recorded input (``0`` unless earlier layers were
            pruned first and the target is the dense model's output).
        error_before: error right after masking (with absorb-mean when on), before optimisation.
        error_after: error of the weights left in the model; never above ``error_before``.
        best_iteration: step whose weights were kept (``0`` = the masked starting point).
        iterations: steps run.
        seconds: wall time for this layer (recording and optimisation).
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    pattern: str
    rows: int
    stored_rows: int
    target_power: float
    error_dense: float
    error_before: float
    error_after: float
    best_iteration: int
    iterations: int
    seconds: float

    @property
    def relative_before(self) -> float:
        """``error_before / target_power``."""
        return self.error_before / self.target_power if self.target_power > 0 else 0.0

    @property
    def relative_after(self) -> float:
        """``error_after / target_power``."""
        return self.error_after / self.target_power if self.target_power > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Fields plus the relative errors, JSON-ready."""
        out = asdict(self)
        out["shape"] = list(self.shape)
        out["relative_before"] = self.relative_before
        out["relative_after"] = self.relative_after
        return out


@dataclass(frozen=True)
class AdaPruneReport:
    """Result of :func:`~nmsparse.adaprune_`: the pruned layers in processing order, and every Linear/Conv2d
    left dense with the reason.

    Iterating (``for r in report``), ``len(report)`` and ``report[i]`` go over the pruned layers' reports.

    Attributes:
        config: the settings used.
        layers: one :class:`AdaPruneLayerReport` per pruned layer, in processing (execution) order.
        skipped: qualified module name -> why it stays dense (not selected by include/exclude/keep_first_last,
            shape does not fit the pattern, or never ran on the calibration data).
        seconds: wall time of the whole call.
    """

    config: AdaPruneConfig
    layers: tuple[AdaPruneLayerReport, ...]
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def pattern(self) -> str:
        """The pattern, e.g. ``"4:8-T"``."""
        return self.config.pattern

    @property
    def pruned(self) -> list[str]:
        """Names of the pruned layers, in processing order."""
        return [r.name for r in self.layers]

    def __iter__(self) -> Iterator[AdaPruneLayerReport]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> AdaPruneLayerReport:
        return self.layers[index]

    def describe(self) -> str:
        """One line for the totals, then one line per layer left dense with its reason."""
        lines = [f"{len(self.layers)} layer(s) pruned to {self.pattern}, {len(self.skipped)} left dense"]
        lines += [f"  dense: {name}: {reason}" for name, reason in self.skipped.items()]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: config, per-layer reports, skipped layers with reasons, seconds."""
        return {"config": self.config.to_dict(), "pattern": self.pattern, "pruned": self.pruned,
                "skipped": dict(self.skipped), "layers": [r.as_dict() for r in self.layers],
                "seconds": self.seconds}
