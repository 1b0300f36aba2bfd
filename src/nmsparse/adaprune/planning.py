"""Planning: which layers are pruned (and why the others are not), in which order, recorded in which passes,
and how the memory budget is shared between statistics, stored rows and recorded targets."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError
from ..pattern import NMPattern
from ..prune.select import _select, require_selected
from .config import AdaPruneConfig
from .recording import LayerView, make_view

__all__ = ["Budget", "select", "plan_units", "keep_fraction", "full_need"]


@dataclass(frozen=True)
class Budget:
    """The memory budget of one run and what it implies.

    Attributes:
        config: the run's settings.
        pattern: the parsed pattern.
        work: bytes for the statistics and stored rows of the unit being fitted.
        targets: bytes for the dense model's outputs recorded ahead (sequential, ``target="model"``).
        samples: calibration samples (dim 0 of each batch, summed), to turn ``batch_size`` into rows.
    """

    config: AdaPruneConfig
    pattern: NMPattern
    work: int
    targets: int
    samples: int

    @property
    def store(self) -> bool:
        """Whether rows are stored for mini-batch steps."""
        return (self.config.optimizer == "adam" and self.config.batch_size is not None
                and self.config.iterations > 0)

    @classmethod
    def of(cls, config: AdaPruneConfig, samples: int) -> Budget:
        """With ``target="model"`` (sequential), half the budget holds the dense model's recorded outputs."""
        total = config.memory_bytes
        cached = config.sequential and config.target == "model"
        work = total // 2 if cached else total
        return cls(config=config, pattern=config.nm_pattern, work=work, targets=total - work, samples=samples)

    def check_fits(self, layers: list[LayerView]) -> None:
        """Refuse a layer whose statistics alone exceed the working budget."""
        cached = self.targets > 0
        for layer in layers:
            if layer.stats_bytes() > self.work:
                raise ConfigError(
                    f"adaprune_: layer {layer.name!r} needs {layer.stats_bytes() / 2**20:.1f} MiB for its "
                    f"statistics but memory_budget allows {self.work / 2**20:.1f} MiB for them"
                    + (" (the other half holds recorded targets)" if cached else "")
                    + "; raise memory_budget or exclude the layer"
                )


def select(model: nn.Module, config: AdaPruneConfig) -> tuple[dict[str, LayerView], dict[str, str]]:
    """The layers to prune (as :class:`LayerView`, model order) and every other Linear/Conv2d with the reason
    it stays dense.

    Raises:
        ConfigError: no layer of the model can take the pattern (each candidate listed with its reason).
    """
    pattern = config.nm_pattern
    selection, _ = _select(model, pattern, include=config.include, exclude=config.exclude,
                           keep_first_last=config.keep_first_last, module_types=(nn.Linear, nn.Conv2d))
    require_selected(selection, pattern, where="adaprune_")
    views = {name: make_view(name, module) for name, module in selection.selected.items()}
    return views, dict(selection.skipped)


def full_need(layer: LayerView, budget: Budget) -> int:
    """Bytes of a layer's statistics plus all its rows when stored."""
    return layer.stats_bytes() + (sum(layer.rows) * layer.row_bytes() if budget.store else 0)


def plan_units(units: list[list[LayerView]], budget: Budget, *, sequential: bool) -> list[list[LayerView]]:
    """Layers recorded together in one pass, each unit within the memory budget.

    Sequential: sibling units (same input tensor), split where their statistics and rows would not fit.
    Parallel: consecutive layers packed into passes while their full needs fit.
    """
    source = units if sequential else [[layer for unit in units for layer in unit]]
    plan: list[list[LayerView]] = []
    for unit in source:
        used = budget.work + 1
        for layer in unit:
            need = full_need(layer, budget)
            if used + need > budget.work:
                plan.append([])
                used = 0
            plan[-1].append(layer)
            used += need
    return plan


def keep_fraction(layer: LayerView, share: int, store: bool) -> float:
    """Fraction of rows a layer may store in ``share`` bytes next to its statistics."""
    if not store:
        return 1.0
    need = sum(layer.rows) * layer.row_bytes()
    room = share - layer.stats_bytes()
    return 1.0 if need <= room else max(room, 0) / need
