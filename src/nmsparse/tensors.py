"""Masks for every prunable weight of a state dict (no model needed): what ``nmsparse mask`` and the demo run."""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ._logging import progress
from .errors import ConfigError, ShapeError
from .layout import check_fits
from .pattern import NMPattern, PatternLike
from .solvers import find_mask

__all__ = ["TensorMaskResult", "StateDictMasks", "mask_state_dict"]


@dataclass(frozen=True)
class TensorMaskResult:
    """One solved tensor: name, shape, fraction of ``|w|`` kept, solve time."""

    name: str
    shape: tuple[int, ...]
    kept_magnitude: float
    seconds: float


@dataclass
class StateDictMasks:
    """Masks of a state dict, per-tensor results, and the weights that were skipped with the reason."""

    masks: dict[str, torch.Tensor]
    results: list[TensorMaskResult]
    skipped: dict[str, str]
    kept_abs_sum: float = 0.0
    total_abs_sum: float = 0.0

    @property
    def seconds(self) -> float:
        """Total solve time."""
        return sum(r.seconds for r in self.results)

    @property
    def kept_magnitude(self) -> float:
        """Fraction of ``|w|`` kept over all masked tensors together."""
        return self.kept_abs_sum / self.total_abs_sum if self.total_abs_sum else 1.0


def _selected(name: str, include: Sequence[str] | None, exclude: Sequence[str] | None) -> bool:
    if include and not any(fnmatch.fnmatchcase(name, g) for g in include):
        return False
    return not (exclude and any(fnmatch.fnmatchcase(name, g) for g in exclude))


def mask_state_dict(state_dict: Mapping[str, torch.Tensor], pattern: PatternLike, *, method: str = "auto",
                    include: Sequence[str] | None = None, exclude: Sequence[str] | None = None,
                    progress_bar: bool | None = None) -> StateDictMasks:
    """Solve a mask for every prunable weight of ``state_dict``.

    Prunable: floating 2-D or 4-D tensors whose name ends in ``weight`` (after ``include``/``exclude`` globs).
    Tensors whose shape cannot take ``pattern`` are skipped and listed with the reason.

    Raises:
        ConfigError: when no tensor can take the pattern (the message lists why for each candidate).

    Example:
        >>> import torch
        >>> sd = {"fc.weight": torch.randn(8, 16), "fc.bias": torch.randn(8), "odd.weight": torch.randn(8, 6)}
        >>> out = mask_state_dict(sd, "4:8-T", method="greedy")
        >>> list(out.masks), out.skipped["odd.weight"][:28]
        (['fc.weight'], 'the reduction dimension (in)')
    """
    pattern = NMPattern.parse(pattern)
    candidates: dict[str, torch.Tensor] = {}
    skipped: dict[str, str] = {}
    for name, tensor in state_dict.items():
        if not name.endswith("weight") or not _selected(name, include, exclude):
            continue
        if not torch.is_floating_point(tensor) or tensor.dim() not in (2, 4):
            continue
        try:
            check_fits(tensor.shape, pattern, where="")
        except ShapeError as exc:
            skipped[name] = str(exc).split("; ")[0]
            continue
        candidates[name] = tensor
    if not candidates:
        reasons = "; ".join(f"{k}: {v}" for k, v in skipped.items()) or "no 2-D or 4-D floating '*weight' tensors"
        raise ConfigError(f"nothing to prune with pattern {pattern}: {reasons}")
    out = StateDictMasks({}, [], skipped)
    for name in progress(candidates, desc=f"{pattern} masks", total=len(candidates), enabled=progress_bar,
                         unit="tensor"):
        weight = candidates[name]
        start = time.perf_counter()
        mask = find_mask(weight, pattern, method=method)
        seconds = time.perf_counter() - start
        out.masks[name] = mask
        magnitude = weight.detach().abs().double()
        total, kept = float(magnitude.sum()), float((magnitude * mask).sum())
        out.total_abs_sum += total
        out.kept_abs_sum += kept
        out.results.append(TensorMaskResult(name, tuple(weight.shape), kept / total if total else 1.0, seconds))
    return out
