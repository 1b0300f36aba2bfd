"""AdaPrune's former entry point, kept for one release: :func:`adaprune_` is a thin wrapper over the one-shot
engine with ``algorithm="adaprune"`` (:func:`nmsparse.prune_oneshot_`, :mod:`nmsparse.oneshot.methods.adaprune`).

New code calls ``prune_oneshot_(model, calibration, pattern, algorithm="adaprune", config=OneShotConfig(...))``;
:class:`AdaPruneConfig` maps one to one onto :class:`~nmsparse.oneshot.OneShotConfig` plus the AdaPrune options.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..config import PatternString, config_field
from ..errors import ConfigError
from ..nn.batchnorm import recalibrate_batchnorm_
from ..oneshot.config import OneShotConfig, check_permute, normalise_fields, parse_memory, solver_for
from ..oneshot.engine import prune_oneshot_
from ..oneshot.methods.adaprune import AdaPruneOptions, FitResult, LayerStatistics, fit_layer
from ..oneshot.report import OneShotLayerReport, OneShotReport
from ..pattern import NMPattern

__all__ = [
    "adaprune_",
    "AdaPruneConfig",
    "AdaPruneReport",
    "AdaPruneLayerReport",
    "LayerStatistics",
    "fit_layer",
    "FitResult",
    "recalibrate_batchnorm_",
    "parse_memory",
    "DEFAULT_MEMORY_BUDGET",
]

#: Default memory budget of :func:`adaprune_` (``prune_oneshot_``'s is ``"4GiB"``).
DEFAULT_MEMORY_BUDGET = "1GiB"

AdaPruneReport = OneShotReport
AdaPruneLayerReport = OneShotLayerReport


@dataclass(frozen=True, kw_only=True)
class AdaPruneConfig(AdaPruneOptions):
    """Settings of :func:`adaprune_`: the pattern, the engine's settings (as in
    :class:`~nmsparse.oneshot.OneShotConfig`, checked by the same constraints) and the AdaPrune options.

    Example:
        >>> from nmsparse.adaprune import AdaPruneConfig
        >>> config = AdaPruneConfig(pattern="4:8-T", scores="activation")
        >>> config.optimizer, config.iterations, config.keep_first_last
        ('cg', 50, False)
        >>> AdaPruneConfig.from_dict(config.to_dict()) == config
        True
    """

    pattern: str = config_field(help='the n:m or n:m-T pattern, e.g. "2:4", "4:8-T"', metavar="N:M")
    method: str = config_field("auto", help="mask solver of find_mask (auto: top-n for plain, exact for -T)")
    include: tuple[str, ...] | None = config_field(None, help="only prune modules matching these globs")
    exclude: tuple[str, ...] | None = config_field(None, help="keep modules matching these globs dense")
    keep_first_last: bool = config_field(False, help="keep the first and last prunable layers dense (the paper)")
    sequential: bool = config_field(
        True,
        help="record each layer's input with its earlier layers pruned (no: the "
        "paper's parallel version, all inputs dense)",
    )
    memory_budget: str = config_field(DEFAULT_MEMORY_BUDGET, help="working memory held at once, e.g. 512MiB")
    ignore_padding: bool = config_field(True, help="leave padding tokens out of the statistics")
    recalibrate_bn: bool = config_field(True, help="re-estimate batch-norm statistics afterwards")
    permute: bool = config_field(False, help="permute the model's free channels first (nmsparse.permute_)")
    permute_scores: str | None = config_field(
        None, help="saliency of the permutation search: magnitude, wanda, sparsegpt (none: wanda)"
    )
    permute_residual: bool = config_field(False, help="with permute: also permute the residual stream")

    # the engine settings are checked as OneShotConfig checks them (its other entries name no field here)
    _constraints = {**OneShotConfig._constraints, **AdaPruneOptions._constraints, "pattern": [PatternString()]}

    def __post_init__(self) -> None:
        normalise_fields(self)
        super().__post_init__()
        object.__setattr__(self, "pattern", str(NMPattern.parse(self.pattern)))

    def _check(self) -> None:
        solver_for(self.nm_pattern, self.method, "AdaPruneConfig")
        check_permute(self, "AdaPruneConfig")

    @property
    def nm_pattern(self) -> NMPattern:
        """The parsed pattern."""
        return NMPattern.parse(self.pattern)

    @property
    def memory_bytes(self) -> int:
        """``memory_budget`` in bytes."""
        return parse_memory(self.memory_budget)

    def oneshot(self) -> OneShotConfig:
        """The equivalent :class:`~nmsparse.oneshot.OneShotConfig` (``algorithm="adaprune"``)."""
        options = {name: getattr(self, name) for name in AdaPruneOptions.field_names()}
        engine = set(self.field_names()) - set(options)
        shared = {k: getattr(self, k) for k in OneShotConfig.field_names() if k in engine}
        return OneShotConfig(algorithm="adaprune", options=options, prune_outside_blocks=True, **shared)


def adaprune_(
    model: nn.Module, calibration: Iterable[Any], config: AdaPruneConfig | str, *, progress: bool | None = None
) -> OneShotReport:
    """Prune ``model`` in place with AdaPrune; ``prune_oneshot_(..., algorithm="adaprune")`` (kept for one release).

    Every selected Linear, ``Conv1D`` and Conv2d layer is masked (``scores``, absorb-mean) and its kept weights
    and bias fitted to the dense model's output of the layer on its calibration input from the already pruned
    model, with the mask fixed (conjugate gradients or Adam, best iterate kept); batch-norm statistics are then
    re-estimated. See :func:`nmsparse.prune_oneshot_` and :mod:`nmsparse.oneshot.methods.adaprune`.

    Args:
        model: the trained model; pruned in place.
        calibration: iterable of batches (``model(**batch)`` for a mapping, ``model(*batch)`` for a tuple or
            list, ``model(batch)`` otherwise).
        config: an :class:`AdaPruneConfig`, or just a pattern (``"2:4"``, ``"4:8-T"``) for the defaults.
        progress: progress bar; ``None`` = only on a terminal.

    Returns:
        The engine's :class:`~nmsparse.oneshot.OneShotReport` (iterate over it for the layers; ``.model``).

    Example:
        >>> import torch, nmsparse
        >>> from nmsparse.adaprune import AdaPruneConfig
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
        >>> data = [torch.randn(64, 16) for _ in range(4)]
        >>> report = nmsparse.adaprune_(model, data, AdaPruneConfig(pattern="2:4"))
        >>> report.pruned, all(r.error_after <= r.error_before for r in report)
        (['0', '2'], True)
    """
    if isinstance(config, str):
        config = AdaPruneConfig(pattern=config)
    if not isinstance(config, AdaPruneConfig):
        raise ConfigError(
            f"adaprune_: config must be an AdaPruneConfig or a pattern string such as '2:4', got "
            f"{type(config).__name__}"
        )
    report = prune_oneshot_(model, calibration, config.pattern, config=config.oneshot(), progress=progress)
    report.config = config.to_dict() | {"algorithm": "adaprune"}
    return report
