"""Settings and reports of :func:`nmsparse.prune_oneshot_`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .._validation import ConfigBase, Interval, Options, SequenceOf, config_field

__all__ = ["OneShotConfig", "OneShotLayerReport", "OneShotReport", "DEFAULT_MAX_MEMORY_MB"]

#: Default working-memory budget of one-shot pruning (MiB).
DEFAULT_MAX_MEMORY_MB = 4096.0


@dataclass(frozen=True, kw_only=True)
class OneShotConfig(ConfigBase):
    """Settings of :func:`nmsparse.prune_oneshot_` (the method and pattern are arguments of the verb).

    Attributes:
        damping: SparseGPT's damping ``lambda`` of ``H + lambda I``, as a fraction of ``mean(diag(H))``.
        block_size: SparseGPT's lazy-update block, in columns (rounded down to a multiple of ``m``).
        sequential: block ``k`` is calibrated on the outputs of the already pruned blocks before it
            (``False``: every block sees the dense model's activations).
        include: fnmatch globs of module names; only matching linears are pruned.
        exclude: fnmatch globs of module names kept dense.
        max_memory_mb: budget for what one-shot pruning holds at once (calibration activations of one block's
            input and output, the statistics of one block, one layer's solve), in MiB; checked before the model
            changes.
        dtype: floating type of the statistics and the solve ("float32" or "float64").
        adaprune_iterations: conjugate-gradient iterations of the AdaPrune fit per layer (``method="adaprune"``).

    Example:
        >>> from nmsparse.oneshot import OneShotConfig
        >>> OneShotConfig(damping=0.05).to_dict()["damping"]
        0.05
        >>> OneShotConfig(block_size=0)
        Traceback (most recent call last):
        ...
        nmsparse.errors.ConfigError: OneShotConfig: block_size must be an int in [1, inf); got 0
    """

    damping: float = config_field(0.01, help="SparseGPT damping of H + lambda*I, relative to mean(diag(H))")
    block_size: int = config_field(128, help="SparseGPT lazy-update block, in columns")
    sequential: bool = config_field(True, help="calibrate each decoder block on the pruned blocks' outputs")
    include: tuple[str, ...] | None = config_field(None, help="only prune modules matching these globs",
                                                  metavar="GLOB")
    exclude: tuple[str, ...] | None = config_field(None, help="keep modules matching these globs dense",
                                                  metavar="GLOB")
    max_memory_mb: float = config_field(DEFAULT_MAX_MEMORY_MB,
                                        help="working-memory budget in MiB (activations, statistics, one solve)",
                                        metavar="MIB")
    dtype: str = config_field("float32", help="dtype of the statistics and the solve")
    adaprune_iterations: int = config_field(50, help="AdaPrune fit iterations per layer (method adaprune)")

    _constraints = {
        "damping": [Interval(float, 0, None, closed="left")],
        "block_size": [Interval(int, 1, None, closed="left")],
        "sequential": [bool],
        "include": [SequenceOf(str), None],
        "exclude": [SequenceOf(str), None],
        "max_memory_mb": [Interval(float, 0, None, closed="neither")],
        "dtype": [Options({"float32", "float64"})],
        "adaprune_iterations": [Interval(int, 0, None, closed="left")],
    }


@dataclass(frozen=True)
class OneShotLayerReport:
    """What one-shot pruning did to one layer.

    Attributes:
        name: qualified module name.
        kind: module class (``"Linear"``, ``"Conv1D"``).
        shape: matrix view ``(out, in)``.
        block: index of the decoder block it belongs to.
        tokens: calibration tokens in its statistics (0 without calibration).
        relative_error: ``||X (W - W')^T|| / ||X W^T||`` (Frobenius norms, not squared) on its calibration
            inputs (NaN without them).
        damping: SparseGPT damping actually used (0 for other methods).
        seconds: wall time of the solve.
    """

    name: str
    kind: str
    shape: tuple[int, int]
    block: int
    tokens: int
    relative_error: float
    damping: float
    seconds: float


@dataclass
class OneShotReport:
    """Result of :func:`nmsparse.prune_oneshot_`.

    Attributes:
        method, pattern: what was run.
        config: the settings (``OneShotConfig.to_dict()``).
        layers: one :class:`OneShotLayerReport` per pruned layer, in model order.
        skipped: module name -> why it stays dense.
        blocks: decoder blocks processed (1 when the model has no repeated blocks).
        block_seconds: wall time per block (statistics, solves and the forward passes).
        seconds: total wall time.
        memory_estimate_mb: working memory planned (the figure checked against the budget).
        peak_tracked_mb: largest working memory actually held (activations, statistics, solve), in MiB.
        max_memory_mb: the budget.
    """

    method: str
    pattern: str
    config: dict[str, Any]
    layers: list[OneShotLayerReport] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    blocks: int = 0
    block_seconds: list[float] = field(default_factory=list)
    seconds: float = 0.0
    memory_estimate_mb: float = 0.0
    peak_tracked_mb: float = 0.0
    max_memory_mb: float = 0.0

    @property
    def mean_relative_error(self) -> float:
        """Mean of the layers' relative reconstruction errors (NaN without calibration)."""
        values = [r.relative_error for r in self.layers if not math.isnan(r.relative_error)]
        return sum(values) / len(values) if values else math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        out = asdict(self)
        out["layers"] = [asdict(r) | {"shape": list(r.shape)} for r in self.layers]
        out["mean_relative_error"] = self.mean_relative_error
        return out

    def describe(self) -> str:
        """A table: one line per layer, then the totals."""
        lines = [f"{'layer':<44} {'shape':>11} {'block':>5} {'tokens':>7} {'rel.err':>8} {'s':>6}"]
        for r in self.layers:
            lines.append(f"{r.name:<44} {r.shape[0]:>5}x{r.shape[1]:<5} {r.block:>5} {r.tokens:>7} "
                         f"{r.relative_error:>8.4f} {r.seconds:>6.2f}")
        lines.append(f"{self.method} {self.pattern}: {len(self.layers)} layer(s) in {self.blocks} block(s), "
                     f"{len(self.skipped)} skipped, {self.seconds:.1f} s, working memory {self.peak_tracked_mb:.0f} "
                     f"MiB of {self.max_memory_mb:.0f} MiB")
        lines += [f"  - {name}: {reason}" for name, reason in self.skipped.items()]
        return "\n".join(lines)
