"""``warmup``: compile or load every solver's kernels on tiny inputs, before any timed work."""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch

from ..pattern import NMPattern, PatternLike
from ._threads import wait_builds
from .registry import list_solvers

__all__ = ["warmup", "DEFAULT_WARMUP_PATTERNS"]

#: One plain and one transposable pattern per block size that has compiled code paths.
DEFAULT_WARMUP_PATTERNS = ("2:4", "2:4-T", "4:8-T", "8:16-T")


def warmup(
    patterns: Iterable[PatternLike] | None = None,
    methods: Iterable[str] | None = None,
    *,
    device: str | torch.device = "cpu",
    dtypes: Iterable[torch.dtype] = (torch.float32,),
) -> dict[str, float]:
    """Run every registered solver that can take each pattern once on a tiny input, so that compiled kernels
    (numba: compiled, or loaded from its on-disk cache; GPU backends: JIT-compiled) are ready before timed
    work, such as the first mask refresh of a training run.

    Args:
        patterns: patterns to prepare (default: :data:`DEFAULT_WARMUP_PATTERNS`).
        methods: method names (default: every registered method).
        device: the device the masks will be computed on.
        dtypes: score dtypes to prepare (numba compiles one version per dtype; fp16 and bf16 weights are solved
            in float32, the default; add ``torch.float64`` for float64 weights).

    Returns:
        ``{"method/backend pattern dtype": seconds}`` for every solver run; the first entries of a fresh process
        carry the compile (or cache-load) time.

    Cost: numba compiles each kernel once per machine (``cache=True`` keeps the result on disk, next to the
    package or in numba's cache directory); a fresh process then only loads it. ``benchmarks/README.md`` has
    measured figures.

    Example:
        >>> times = warmup(["2:4-T"], ["greedy"])
        >>> "greedy/torch 2:4-T float32" in times and "greedy/numba 2:4-T float32" in times
        True
    """
    from . import find_mask  # the package imports this module

    wanted = None if methods is None else set(methods)
    device_type = torch.device(device).type
    times: dict[str, float] = {}
    for spec_pattern in DEFAULT_WARMUP_PATTERNS if patterns is None else patterns:
        pattern = NMPattern.parse(spec_pattern)
        side = pattern.m
        for spec in list_solvers():
            if wanted is not None and spec.name not in wanted:
                continue
            for dtype in dtypes:
                if spec.why_not(pattern, device_type, dtype) is not None:
                    continue
                weight = torch.linspace(-1.0, 1.0, side * side, dtype=dtype).reshape(side, side).to(device)
                start = time.perf_counter()
                find_mask(weight, pattern, method=spec.name, backend=spec.backend, progress=False)
                if weight.device.type == "cuda":
                    torch.cuda.synchronize(weight.device)
                if spec.backend == "numba":  # a first call answers, then compiles in the background: wait
                    wait_builds()
                times[f"{spec.label} {pattern} {str(dtype).removeprefix('torch.')}"] = time.perf_counter() - start
    return times
