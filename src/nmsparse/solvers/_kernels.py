"""The GPU kernels of :mod:`nmsparse.kernels` as registered solvers, so ``find_mask(backend="auto")`` sees them.

Registered: ``topn/triton`` (plain), ``exact/triton`` (m = 4, 8, 16), ``greedy/triton`` (m in 4, 8, 16, 32), all
for CUDA tensors (and CPU tensors when ``TRITON_INTERPRET=1`` at registration), available where triton is
installed and the device can run it; and ``exact/torch-flow`` (m >= 8, any device: the batched torch min-cost
flow, which keeps the work on the GPU instead of copying blocks to the CPU for numba; priority below
exact/numba, so ``auto`` takes it only where neither Triton nor numba can run). Importing this module loads
neither triton nor CUDA: the Triton wrappers are imported when a Triton solver first runs.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import kernels
from ..errors import BackendUnavailableError, ConfigError
from ..kernels import cuda_capability, triton_installed, triton_interpret
from ..pattern import NMPattern
from .registry import register_solver, resolve

__all__ = ["register_gpu_solvers"]

_GREEDY_TRITON_MS = (4, 8, 16, 32)
_TOPN_TRITON_MAX_M = 64
_FLOW_TRITON_MS = (8, 16)
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

_REGISTERED = False
_REGISTERED_INTERPRET = False


def _triton_available() -> bool:
    """triton is installed, and either runs interpreted (tests) or has a CUDA device of capability 7.0+."""
    if not triton_installed():
        return False
    if triton_interpret():
        return True
    capability = cuda_capability()
    return capability is not None and capability >= (7, 0)


def _topn_triton(scores: torch.Tensor, pattern: NMPattern, progress: bool | None = None) -> torch.Tensor:
    from ..kernels.triton_kernels import topn_triton

    return topn_triton(scores.detach(), pattern.n, pattern.m)


def _greedy_triton(scores: torch.Tensor, pattern: NMPattern, progress: bool | None = None) -> torch.Tensor:
    from ..kernels.triton_kernels import greedy_t_triton

    return greedy_t_triton(scores.detach(), pattern.n, pattern.m)


def _exact_triton(scores: torch.Tensor, pattern: NMPattern, progress: bool | None = None) -> torch.Tensor:
    from ..kernels.triton_kernels import exact4_triton, flow_t_triton
    from ..layout import from_blocks, to_blocks

    scores = scores.detach()
    if pattern.m != 4:
        return flow_t_triton(scores, pattern.n, pattern.m)
    if scores.dtype == torch.float64:  # the twin's per-block power-of-two scaling: fp64 extremes stay optimal
        rows, cols = scores.shape
        scores = from_blocks(kernels.scale_blocks(to_blocks(scores, 4)), rows, cols)
    return exact4_triton(scores, pattern.n, absolute=False)


def register_gpu_solvers() -> list[str]:
    """Register the GPU solvers (idempotent); returns the labels registered by this call.

    Registered once, again only if ``TRITON_INTERPRET`` was switched on since (a test session that imported
    nmsparse first): then the Triton backends are re-registered for CPU tensors too.
    """
    global _REGISTERED, _REGISTERED_INTERPRET
    if _REGISTERED and (_REGISTERED_INTERPRET or not triton_interpret()):
        return []
    devices = {"cuda", "cpu"} if triton_interpret() else {"cuda"}
    specs: list[tuple[str, Any, dict[str, Any]]] = [
        (
            "topn",
            _topn_triton,
            dict(
                plain=True,
                ms=set(range(2, _TOPN_TRITON_MAX_M + 1)),
                exact=True,
                exactly_n=True,
                description="per-group top-n, Triton (bit-equal to topn/torch)",
            ),
        ),
        (
            "exact",
            _exact_triton,
            dict(
                transposable=True,
                ms={4, *_FLOW_TRITON_MS},
                exact=True,
                exactly_n=True,
                description="optimal n:m-T in Triton: m=4 one pass scoring every valid 4x4 "
                "mask in float64, m=8/16 a min-cost flow in registers (both "
                "bit-equal to their torch twins)",
            ),
        ),
        (
            "greedy",
            _greedy_triton,
            dict(
                transposable=True,
                ms=set(_GREEDY_TRITON_MS),
                description="greedy 2-approximation, Triton, one block's scores in "
                "registers (bit-equal to greedy/torch)",
            ),
        ),
    ]
    # Under the interpreter (CPU tests) the kernels stay reachable with backend="triton" but "auto" never prefers
    # them: interpreted Triton is orders of magnitude slower than the CPU solvers.
    priority = -10 if triton_interpret() else 20
    labels = []
    for name, fn, kwargs in specs:
        register_solver(
            name,
            fn,
            backend="triton",
            devices=devices,
            dtypes=_DTYPES,
            priority=priority,
            available=_triton_available,
            replace=True,
            **kwargs,
        )
        labels.append(f"{name}/triton")
    register_solver(
        "exact",
        kernels.flow_matrix_torch,
        backend="torch-flow",
        transposable=True,
        ms={8, 16, 32},
        exact=True,
        exactly_n=True,
        priority=5,
        replace=True,
        description="optimal n:m-T by a batched min-cost flow in torch ops, on the GPU (same optimum as exact/numba)",
    )
    labels.append("exact/torch-flow")
    _REGISTERED = True
    _REGISTERED_INTERPRET = triton_interpret()
    return labels


def _kernel_alias(
    method: str, scores: torch.Tensor, n: int, m: int, transposable: bool, absolute: bool, backend: str
) -> torch.Tensor:
    """The deprecated ``nmsparse.kernels.<fn>(backend=...)`` through ``find_mask``: their ``"torch"`` is the
    torch backend of the method (``torch-flow`` for exact with m >= 8), their ``"auto"`` Triton for CUDA tensors
    where it can run, else torch."""
    from . import find_mask

    if backend not in ("auto", "torch", "triton"):
        raise ConfigError(f"nmsparse.kernels: backend must be 'auto', 'torch' or 'triton', got {backend!r}")
    pattern = NMPattern(n, m, transposable)
    torch_backend = "torch-flow" if method == "exact" and m > 4 else "torch"
    if backend == "auto":
        backend = torch_backend
        if isinstance(scores, torch.Tensor) and scores.device.type == "cuda":
            try:
                resolve(method, pattern, scores.device, scores.dtype, backend="triton")
                backend = "triton"
            except BackendUnavailableError:
                pass
    elif backend == "torch":
        backend = torch_backend
    importance = scores.detach().abs() if absolute and isinstance(scores, torch.Tensor) else scores
    return find_mask(scores, pattern, method=method, backend=backend, scores=importance)


register_gpu_solvers()
kernels._REGISTRY_CALL = _kernel_alias
kernels._REGISTRY_REFRESH = register_gpu_solvers
