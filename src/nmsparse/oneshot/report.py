"""The report of :func:`nmsparse.prune_oneshot_` and :func:`nmsparse.adaprune_`: each layer's result, the layers
left dense and why, the memory planned and held, and the pruned model."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from ..permute import PermuteReport

__all__ = ["OneShotLayerReport", "OneShotReport"]

_MIB = float(1 << 20)


@dataclass(frozen=True)
class OneShotLayerReport:
    """What one-shot calibration did to one layer.

    Attributes:
        name, kind, pattern: qualified module name, module class (``"Linear"``, ``"Conv1D"``, ``"Conv2d"``), pattern.
        shape: matrix view ``(out, in)`` (a conv: ``(out, in/groups * kh * kw)``).
        block: index of its repeated block (0 when the model is one block).
        tokens: calibration rows (tokens, or output positions of a conv) in its statistics (0 without data).
        relative_error: ``||Y - Y'|| / ||Y||`` on its calibration inputs (``Y``: the dense layer's output, or the
            dense model's for ``adaprune``); NaN without calibration.
        damping: SparseGPT's damping actually used (0 for other algorithms).
        seconds: wall time of its solve (and, for layer-wise algorithms, its recording).
        error_dense, error_before, error_after: mean squared error per output value against the target of the
            dense weights, the masked start and the result; best_iteration, iterations: fit step kept and steps
            run; stored_rows: rows stored for Adam mini-batches; target_power: mean squared target value
            (``adaprune``; NaN or 0 for the others).
    """

    name: str
    kind: str
    shape: tuple[int, int]
    block: int
    tokens: int
    relative_error: float
    damping: float = 0.0
    seconds: float = 0.0
    error_dense: float = math.nan
    error_before: float = math.nan
    error_after: float = math.nan
    best_iteration: int = 0
    iterations: int = 0
    stored_rows: int = 0
    target_power: float = math.nan
    pattern: str = ""

    def _relative(self, error: float) -> float:
        return error / self.target_power if self.target_power > 0 else 0.0

    rows = property(lambda self: self.tokens, doc="``tokens`` (AdaPrune's name).")
    relative_before = property(lambda self: self._relative(self.error_before), doc="``error_before / target_power``.")
    relative_after = property(lambda self: self._relative(self.error_after), doc="``error_after / target_power``.")

    def as_dict(self) -> dict[str, Any]:
        """Fields plus the relative errors, JSON-ready."""
        return asdict(self) | {
            "shape": list(self.shape),
            "relative_before": self.relative_before,
            "relative_after": self.relative_after,
        }


@dataclass
class OneShotReport:
    """Result of :func:`nmsparse.prune_oneshot_`; iterating, ``len`` and ``[i]`` go over the pruned layers.

    Attributes:
        model: the pruned model (the same object, changed in place).
        algorithm, pattern, config: what was run (``OneShotConfig.to_dict()``, options resolved).
        layers: one :class:`OneShotLayerReport` per pruned layer, in processing order.
        skipped: module name -> why it stays dense.
        blocks, block_seconds, seconds: repeated blocks processed (1 when none), wall time per block and in all.
        memory_budget, memory_estimate, peak_tracked: the budget, the working memory planned (checked before the
            model changes) and the most actually held, in bytes.
        permutation: what ``config.permute`` did first (:class:`~nmsparse.permute.PermuteReport`), or ``None``.
    """

    model: nn.Module
    algorithm: str
    pattern: str
    config: dict[str, Any]
    layers: list[OneShotLayerReport] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    blocks: int = 0
    block_seconds: list[float] = field(default_factory=list)
    seconds: float = 0.0
    memory_budget: int = 0
    memory_estimate: int = 0
    peak_tracked: int = 0
    permutation: PermuteReport | None = None

    method = property(lambda self: self.algorithm, doc="``algorithm`` (its old name).")
    max_memory_mb = property(lambda self: self.memory_budget / _MIB, doc="``memory_budget`` in MiB.")
    memory_estimate_mb = property(lambda self: self.memory_estimate / _MIB, doc="``memory_estimate`` in MiB.")
    peak_tracked_mb = property(lambda self: self.peak_tracked / _MIB, doc="``peak_tracked`` in MiB.")

    @property
    def pruned(self) -> list[str]:
        """Names of the pruned layers, in processing order."""
        return [r.name for r in self.layers]

    def __iter__(self) -> Iterator[OneShotLayerReport]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> OneShotLayerReport:
        return self.layers[index]

    @property
    def mean_relative_error(self) -> float:
        """Mean of the layers' relative errors (NaN without calibration)."""
        values = [r.relative_error for r in self.layers if not math.isnan(r.relative_error)]
        return sum(values) / len(values) if values else math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (everything but the model)."""
        return {k: v for k, v in vars(self).items() if k not in ("model", "layers", "permutation")} | {
            "permutation": None if self.permutation is None else self.permutation.to_dict(),
            "method": self.algorithm,
            "pruned": self.pruned,
            "layers": [r.as_dict() for r in self.layers],
            "mean_relative_error": self.mean_relative_error,
            "max_memory_mb": self.max_memory_mb,
            "memory_estimate_mb": self.memory_estimate_mb,
            "peak_tracked_mb": self.peak_tracked_mb,
        }

    as_dict = to_dict

    def describe(self) -> str:
        """A table (one line per layer), the totals, then every layer left dense with its reason."""
        lines = [f"{'layer':<44} {'shape':>11} {'block':>5} {'tokens':>7} {'rel.err':>8} {'s':>6}"]
        lines += [
            f"{r.name:<44} {r.shape[0]:>5}x{r.shape[1]:<5} {r.block:>5} {r.tokens:>7} "
            f"{r.relative_error:>8.4f} {r.seconds:>6.2f}"
            for r in self.layers
        ]
        if self.permutation is not None:  # before the totals line: the skipped layers stay last
            lines.append(self.permutation.summary().splitlines()[0])
        lines.append(
            f"{self.algorithm} {self.pattern}: {len(self.layers)} layer(s) pruned to {self.pattern}, "
            f"{len(self.skipped)} left dense, {self.blocks} block(s), {self.seconds:.1f} s, working memory "
            f"{self.peak_tracked_mb:.0f} MiB of {self.max_memory_mb:.0f} MiB"
        )
        lines += [f"  dense: {name}: {reason}" for name, reason in self.skipped.items()]
        return "\n".join(lines)
