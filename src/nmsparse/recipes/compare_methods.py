"""Time and score mask methods on a set of weights: the engine of ``nmsparse demo`` and the solver benchmark."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from nmsparse.layout import fits
from nmsparse.metrics import nm_counts
from nmsparse.pattern import NMPattern, PatternLike
from nmsparse.solvers import find_mask

from .shapes import resnet50_weight_shapes

__all__ = ["MethodResult", "random_weights", "resnet50_weights", "run_method"]


@dataclass(frozen=True)
class MethodResult:
    """One method on one pattern over a set of weights."""

    pattern: str
    method: str
    tensors: int
    groups: int  # m x m blocks for transposable patterns, groups of m otherwise
    kept_magnitude: float  # fraction of |w| kept over all tensors
    valid: bool  # at most n per group / block row and column
    exact_n: bool  # exactly n everywhere
    seconds: float


def random_weights(
    shapes: Sequence[tuple[str, tuple[int, ...]]], *, seed: int = 0, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Gaussian weights (Kaiming-like scale) of the given shapes, reproducible from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes:
        fan_in = math.prod(shape[1:])
        out[name] = (torch.randn(shape, generator=generator) * math.sqrt(2.0 / fan_in)).to(device)
    return out


def resnet50_weights(*, seed: int = 0, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Random weights of every ResNet-50 conv and fc layer (25.5M weights, built in code)."""
    return random_weights(resnet50_weight_shapes(), seed=seed, device=device)


def run_method(
    weights: Mapping[str, torch.Tensor], pattern: PatternLike, method: str, *, backend: str = "auto"
) -> MethodResult:
    """Solve ``pattern`` with ``method`` (and ``backend``) for every weight that can take it; time the solves only."""
    pattern = NMPattern.parse(pattern)
    fitting = {k: w for k, w in weights.items() if fits(w.shape, pattern)}
    kept = total = seconds = 0.0
    groups = 0
    valid = exact_n = True
    for weight in fitting.values():
        if weight.is_cuda:
            torch.cuda.synchronize(weight.device)
        start = time.perf_counter()
        mask = find_mask(weight, pattern, method=method, backend=backend)
        if weight.is_cuda:
            torch.cuda.synchronize(weight.device)
        seconds += time.perf_counter() - start
        magnitude = weight.abs().double()
        kept += float((magnitude * mask).sum())
        total += float(magnitude.sum())
        rows, cols = nm_counts(mask, pattern)
        groups += rows.shape[0]
        counts = rows if cols is None else torch.cat([rows, cols])
        valid &= bool((counts <= pattern.n).all())
        exact_n &= bool((counts == pattern.n).all())
    return MethodResult(
        str(pattern), method, len(fitting), groups, kept / total if total else 1.0, valid, exact_n, seconds
    )
