"""GPU mask kernels (Triton) beside their pure-torch twins, the batched torch min-cost flow and a capability probe.

This package holds plain functions; it never dispatches. The solver registry (:mod:`nmsparse.solvers`) registers
them and picks one per request (``find_mask(w, pattern, method=..., backend=...)``), after one validation:

* Triton, in :mod:`nmsparse.kernels.triton_kernels` (imports triton: loaded on first use only):
  ``exact4_triton`` (exact n:4-T in one pass over W, optionally writing the masked W), ``flow_t_triton`` (exact
  n:m-T for m = 8, 16), ``greedy_t_triton`` (greedy n:m-T, m in 4, 8, 16, 32), ``topn_triton`` (plain n:m).
* Their torch twins: :func:`nmsparse.kernels.reference.exact_enum_blocks` (exact, blocks of side <= 4: also the
  ``exact/torch`` solver), :func:`nmsparse.kernels.exact_flow.flow_blocks_torch` (exact, m >= 8, any device: the
  ``exact/torch-flow`` solver); greedy and top-n are twins of :mod:`nmsparse.solvers.greedy` and
  :mod:`nmsparse.solvers.topn`. Every Triton kernel returns the mask of its twin bit for bit; ties go to the lower
  flat index everywhere (exact: the mask keeping the lower flat indices).
* What this process can run: :func:`capabilities`, :func:`triton_runnable`, :func:`has_cusparselt`, ...

Importing this package imports neither triton nor initialises CUDA.

Deprecated (kept for one release, see CHANGELOG.md): ``exact_2_4_t``, ``exact_2_4_t_masked``, ``exact_n_4_t``,
``exact_nm_t``, ``greedy_nm_t``, ``topn_nm`` (each with its own ``backend=``), ``resolve_backend`` and
``register_kernels``. They warn and forward to the solver registry: use :func:`nmsparse.find_mask` (or
:func:`nmsparse.solvers.registry.resolve` for an unchecked per-block solver).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from . import reference
from ._capability import (
    Capabilities,
    capabilities,
    cuda_capability,
    cusparselt_reason,
    has_cusparselt,
    has_triton,
    triton_installed,
    triton_interpret,
    triton_reason,
    triton_runnable,
)
from ._scaling import scale_blocks
from .exact_flow import flow_blocks_torch, flow_matrix_torch
from .reference import exact_4_t_reference, exact_enum_blocks

__all__ = [
    "reference",
    "exact_enum_blocks",
    "exact_4_t_reference",
    "flow_blocks_torch",
    "flow_matrix_torch",
    "scale_blocks",
    "has_triton",
    "triton_installed",
    "triton_interpret",
    "triton_reason",
    "triton_runnable",
    "cuda_capability",
    "has_cusparselt",
    "cusparselt_reason",
    "capabilities",
    "Capabilities",
]

# ------------------------------------------------------------------------- deprecated aliases (one release)

#: Set by :mod:`nmsparse.solvers` when it registers these kernels: ``(name, scores, n, m, transposable, absolute,
#: backend) -> mask`` through the registry. The kernels package never imports the solvers (no import cycle).
_REGISTRY_CALL: Callable[..., torch.Tensor] | None = None
#: Set likewise: registers the GPU solvers again (after ``TRITON_INTERPRET`` changed) and returns their labels.
_REGISTRY_REFRESH: Callable[[], list[str]] | None = None


def _deprecated(name: str, instead: str) -> None:
    warnings.warn(
        f"nmsparse.kernels.{name} is deprecated and will be removed in the next release; use {instead}",
        DeprecationWarning,
        stacklevel=3,
    )


def _forward(
    method: str, scores: torch.Tensor, n: int, m: int, transposable: bool, absolute: bool, backend: str
) -> torch.Tensor:
    if _REGISTRY_CALL is None:  # pragma: no cover - nmsparse/__init__ imports the solvers first
        raise RuntimeError("nmsparse.kernels: the solver registry is not loaded; import nmsparse first")
    return _REGISTRY_CALL(method, scores, n, m, transposable, absolute, backend)


def exact_n_4_t(
    scores: torch.Tensor, n: int = 2, *, absolute: bool = False, backend: str = "auto", check_finite: bool = True
) -> torch.Tensor:
    """Deprecated: ``find_mask(scores, f"{n}:4-T", method="exact", scores=...)`` (optimal n:4-T mask)."""
    _deprecated("exact_n_4_t", f"nmsparse.find_mask(w, '{n}:4-T', method='exact', backend=...)")
    return _forward("exact", scores, n, 4, True, absolute, backend)


def exact_2_4_t(
    scores: torch.Tensor, *, absolute: bool = False, backend: str = "auto", check_finite: bool = True
) -> torch.Tensor:
    """Deprecated: ``find_mask(w, "2:4-T", method="exact")`` (optimal 2:4-T mask of ``scores`` or ``|scores|``)."""
    _deprecated("exact_2_4_t", "nmsparse.find_mask(w, '2:4-T', method='exact', backend=...)")
    return _forward("exact", scores, 2, 4, True, absolute, backend)


def exact_2_4_t_masked(
    weight: torch.Tensor, *, backend: str = "auto", check_finite: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deprecated: the optimal 2:4-T mask of ``|weight|`` and ``torch.where(mask, weight, 0)``."""
    _deprecated("exact_2_4_t_masked", "nmsparse.find_mask(w, '2:4-T', method='exact') and torch.where")
    mask = _forward("exact", weight, 2, 4, True, True, backend)
    zero = torch.zeros((), dtype=weight.dtype, device=weight.device)
    return mask, torch.where(mask, weight.detach(), zero).contiguous()


def exact_nm_t(
    scores: torch.Tensor, n: int, m: int, *, absolute: bool = False, backend: str = "auto", check_finite: bool = True
) -> torch.Tensor:
    """Deprecated: ``find_mask(w, f"{n}:{m}-T", method="exact")`` (optimal n:m-T mask on the input's device)."""
    _deprecated("exact_nm_t", f"nmsparse.find_mask(w, '{n}:{m}-T', method='exact', backend=...)")
    return _forward("exact", scores, n, m, True, absolute, backend)


def greedy_nm_t(
    scores: torch.Tensor, n: int, m: int, *, absolute: bool = False, backend: str = "auto", check_finite: bool = True
) -> torch.Tensor:
    """Deprecated: ``find_mask(w, f"{n}:{m}-T", method="greedy")`` (the greedy 2-approximation)."""
    _deprecated("greedy_nm_t", f"nmsparse.find_mask(w, '{n}:{m}-T', method='greedy', backend=...)")
    return _forward("greedy", scores, n, m, True, absolute, backend)


def topn_nm(
    scores: torch.Tensor, n: int, m: int, *, absolute: bool = False, backend: str = "auto", check_finite: bool = True
) -> torch.Tensor:
    """Deprecated: ``find_mask(w, f"{n}:{m}", method="topn")`` (plain n:m, per-group top-n)."""
    _deprecated("topn_nm", f"nmsparse.find_mask(w, '{n}:{m}', method='topn', backend=...)")
    return _forward("topn", scores, n, m, False, absolute, backend)


def resolve_backend(backend: str, tensor: torch.Tensor, *, where: str, triton_ok: str | None = None) -> str:
    """Deprecated: the solver registry picks the backend (``nmsparse.solvers.registry.resolve``).

    ``"torch"`` or ``"triton"`` for ``tensor``: ``"auto"`` gives Triton for CUDA tensors where it can run.
    """
    _deprecated("resolve_backend", "nmsparse.solvers.registry.resolve(method, pattern, device, backend=...)")
    from ..errors import BackendUnavailableError, ConfigError

    if backend == "torch":
        return "torch"
    if backend not in ("auto", "triton"):
        raise ConfigError(f"{where}: backend must be 'auto', 'torch' or 'triton', got {backend!r}")
    reason = triton_ok or triton_runnable(tensor.device)
    if backend == "auto":
        return "triton" if reason is None and tensor.device.type == "cuda" else "torch"
    if reason is not None:
        raise BackendUnavailableError(f"{where}: backend 'triton' cannot run here: {reason}")
    return "triton"


def register_kernels() -> list[str]:
    """Deprecated: :mod:`nmsparse.solvers` registers the GPU kernels itself when it is imported.

    Registers them again when ``TRITON_INTERPRET`` was switched on since (for tests); returns the labels
    registered by this call.
    """
    _deprecated("register_kernels", "nothing: importing nmsparse registers the GPU kernels")
    if _REGISTRY_REFRESH is None:  # pragma: no cover - nmsparse/__init__ imports the solvers first
        return []
    return _REGISTRY_REFRESH()
