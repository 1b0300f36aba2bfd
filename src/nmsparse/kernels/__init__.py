"""GPU mask kernels (Triton) beside pure-torch twins, a capability probe and their solver registrations.

Entry points (``scores``/``weight``: a 2-D ``[rows, K]`` matrix, any strides, fp32/fp16/bf16/fp64, finite):

* :func:`exact_2_4_t` / :func:`exact_2_4_t_masked`: the optimal 2:4-T mask in one pass over W (the mask
  refresh of 2:4-T training); the masked variant also writes ``where(mask, W, 0)``.
* :func:`exact_n_4_t`: optimal n:4-T for n = 1, 2, 3 (same kernel family).
* :func:`exact_nm_t`: optimal n:m-T for any supported ``m`` on the input's device (m = 4: the kernels above;
  m >= 8: the batched min-cost flow of :mod:`nmsparse.kernels.exact_flow`, Triton for m = 8, 16, torch ops on
  CPU and CUDA alike).
* :func:`greedy_nm_t`: the greedy 2-approximation n:m-T (Triton for m in 4, 8, 16, 32).
* :func:`topn_nm`: plain n:m (per-group top-n).

``backend``: ``"auto"`` (Triton for CUDA tensors when triton is importable and the device can run it, else
torch), ``"torch"`` (the twins in :mod:`nmsparse.kernels.reference`, any device) or ``"triton"`` (raises
:class:`~nmsparse.errors.BackendUnavailableError` with the one-line reason when it cannot run: no triton, a
CPU tensor without ``TRITON_INTERPRET=1``, ...). Every Triton kernel returns the mask of its torch twin bit for
bit; ties go to the lower flat index everywhere (exact: the mask keeping the lower flat indices).

Importing this package imports neither triton nor initialises CUDA; the Triton kernels load on first use.
:func:`register_kernels` adds the Triton backends (and the on-device exact flow) to
:func:`nmsparse.find_mask`'s registry.
"""

from __future__ import annotations

from typing import Any

import torch

from .._inputs import check_tensor
from ..errors import BackendUnavailableError, ConfigError, PatternError, ShapeError
from . import reference as _ref
from ._capability import (
    Capabilities,
    capabilities,
    cuda_capability,
    cusparselt_reason,
    has_cusparselt,
    has_triton,
    triton_installed,
    triton_reason,
    triton_runnable,
)

__all__ = [
    "exact_2_4_t",
    "exact_2_4_t_masked",
    "exact_n_4_t",
    "exact_nm_t",
    "greedy_nm_t",
    "topn_nm",
    "register_kernels",
    "resolve_backend",
    "has_triton",
    "triton_reason",
    "triton_runnable",
    "cuda_capability",
    "has_cusparselt",
    "cusparselt_reason",
    "capabilities",
    "Capabilities",
]

_GREEDY_TRITON_MS = (4, 8, 16, 32)
_TOPN_TRITON_MAX_M = 64
_FLOW_TRITON_MS = (8, 16)


def resolve_backend(backend: str, tensor: torch.Tensor, *, where: str, triton_ok: str | None = None) -> str:
    """``"torch"`` or ``"triton"`` for ``tensor`` (see the module docstring); ``triton_ok``: why this request
    has no Triton kernel (then ``"auto"`` gives torch and ``"triton"`` raises).

    Raises:
        ConfigError: a backend name other than ``"auto"``, ``"torch"``, ``"triton"``.
        BackendUnavailableError: ``"triton"`` that cannot run here (the message says why in one line).

    Example:
        >>> resolve_backend("auto", torch.zeros(4, 4), where="demo")
        'torch'
    """
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


def _check(scores: torch.Tensor, m: int, where: str, *, transposable: bool, check_finite: bool) -> None:
    check_tensor(scores, "scores", where, floating=True)
    if scores.dim() != 2:
        raise ShapeError(f"{where}: expected a 2-D [rows, K] matrix, got shape {tuple(scores.shape)}; take the "
                         f"matrix view first (nmsparse.layout.to_matrix)")
    rows, cols = scores.shape
    if rows == 0 or cols == 0 or cols % m or (transposable and rows % m):
        need = "rows and K" if transposable else "K"
        raise ShapeError(f"{where}: need a non-empty matrix with {need} multiples of {m}, got "
                         f"{tuple(scores.shape)}; pad it or leave this tensor dense")
    if check_finite:
        check_tensor(scores, "scores", where, finite=True)


def _scale_blocks(scores: torch.Tensor, m: int) -> torch.Tensor:
    """``scores`` with every aligned ``m x m`` block scaled by a power of two (exact) so its largest |value| is in
    [0.5, 1): sums of a block's values can then neither overflow nor lose subnormal digits."""
    from ..layout import from_blocks, to_blocks
    from .exact_flow import _scale

    rows, cols = scores.shape
    return from_blocks(_scale(to_blocks(scores.detach(), m)), rows, cols)


def _check_n(n: int, m: int, where: str) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or isinstance(m, bool) or not isinstance(m, int) \
            or not 1 <= n < m:
        raise PatternError(f"{where}: need ints 1 <= n < m, got n={n!r}, m={m!r}")


def exact_n_4_t(scores: torch.Tensor, n: int = 2, *, absolute: bool = False, backend: str = "auto",
                check_finite: bool = True) -> torch.Tensor:
    """Optimal n:4-T mask (exactly ``n`` per row and column of every aligned 4x4 block, largest kept sum).

    Args:
        scores: ``[rows, K]`` importance (e.g. ``|W|``), rows and K multiples of 4.
        n: 1, 2 or 3.
        absolute: score ``|scores|`` (pass ``W`` itself: the kernel reads it once, no ``W.abs()`` pass).
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.
        check_finite: raise on inf/NaN (one reduction; pass False in hot loops with known-finite scores).

    Returns:
        ``torch.bool [rows, K]`` on ``scores``' device; ties go to the mask keeping the lower flat indices
        (the order of :func:`nmsparse.solvers.enumerate.valid_block_masks`). float64 scores are first scaled
        per block by a power of two (exact), so values near the float64 limits stay optimal.

    Example:
        >>> s = torch.tensor([[4., 3., 0., 0.], [3., 0., 0., 0.], [0., 0., 1., 1.], [0., 0., 1., 1.]])
        >>> exact_n_4_t(s, 2).int().tolist()
        [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    """
    where = f"exact_{n}_4_t"
    if n not in (1, 2, 3) or isinstance(n, bool):
        raise PatternError(f"exact_n_4_t: need n in (1, 2, 3) for 4x4 blocks, got {n!r}")
    _check(scores, 4, where, transposable=True, check_finite=check_finite)
    if scores.dtype == torch.float64:  # sums of fp64 extremes could overflow or round subnormals: scale blocks
        scores = _scale_blocks(scores.abs() if absolute else scores, 4)
        absolute = False
    if resolve_backend(backend, scores, where=where) == "triton":
        from .triton_kernels import exact4_triton

        return exact4_triton(scores.detach(), n, absolute=absolute)
    return _ref.exact_4_t_reference(scores.abs() if absolute else scores, n)


def exact_2_4_t(scores: torch.Tensor, *, absolute: bool = False, backend: str = "auto",
                check_finite: bool = True) -> torch.Tensor:
    """Optimal 2:4-T mask of a ``[rows, K]`` score matrix, one pass (:func:`exact_n_4_t` with ``n = 2``).

    This is the mask refresh of 2:4-T training: ``exact_2_4_t(W, absolute=True)`` reads W once (or use
    :func:`exact_2_4_t_masked`, which also returns the masked W).

    Example:
        >>> mask = exact_2_4_t(torch.rand(8, 16))
        >>> mask.shape, int(mask.sum())
        (torch.Size([8, 16]), 64)
    """
    return exact_n_4_t(scores, 2, absolute=absolute, backend=backend, check_finite=check_finite)


def exact_2_4_t_masked(weight: torch.Tensor, *, backend: str = "auto",
                       check_finite: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The optimal 2:4-T mask of ``|weight|`` and the masked weight, from one read of ``weight``.

    Returns:
        ``(mask, masked)``: ``mask`` bool ``[rows, K]`` (as :func:`exact_2_4_t` of ``weight.abs()``), ``masked``
        a new contiguous tensor of ``weight``'s dtype equal to ``torch.where(mask, weight, 0)`` (pruned = +0).

    Example:
        >>> w = torch.randn(8, 8)
        >>> mask, masked = exact_2_4_t_masked(w)
        >>> torch.equal(masked, torch.where(mask, w, 0.0))
        True
    """
    where = "exact_2_4_t_masked"
    _check(weight, 4, where, transposable=True, check_finite=check_finite)
    if resolve_backend(backend, weight, where=where) == "triton":
        from .triton_kernels import exact4_triton

        w = weight.detach()
        out = torch.empty(w.shape, dtype=w.dtype, device=w.device)
        return exact4_triton(w, 2, absolute=True, out=out), out
    return _ref.exact_2_4_t_masked_reference(weight)


def greedy_nm_t(scores: torch.Tensor, n: int, m: int, *, absolute: bool = False, backend: str = "auto",
                check_finite: bool = True) -> torch.Tensor:
    """Greedy (2-approximation) n:m-T mask: per block, visit entries by decreasing score (ties: lower flat
    index) and keep one while its row and column hold fewer than ``n``.

    Bit-equal to :func:`nmsparse.solvers.greedy.greedy_blocks` (the torch backend). Triton: ``m`` in 4, 8, 16, 32.
    ``absolute``: score ``|scores|`` (the kernel reads ``W`` once).

    Example:
        >>> greedy_nm_t(torch.eye(4) + 0.5, 1, 4).int().tolist()[1]
        [0, 1, 0, 0]
    """
    where = f"greedy_{n}_{m}_t"
    _check_n(n, m, where)
    _check(scores, m, where, transposable=True, check_finite=check_finite)
    no = None if m in _GREEDY_TRITON_MS else f"the Triton greedy kernel takes m in {_GREEDY_TRITON_MS}, got {m}"
    if resolve_backend(backend, scores, where=where, triton_ok=no) == "triton":
        from .triton_kernels import greedy_t_triton

        return greedy_t_triton(scores.detach(), n, m, absolute=absolute)
    return _ref.greedy_t_reference(scores.abs() if absolute else scores, n, m)


def topn_nm(scores: torch.Tensor, n: int, m: int, *, absolute: bool = False, backend: str = "auto",
            check_finite: bool = True) -> torch.Tensor:
    """Plain n:m mask: the top ``n`` of every ``m`` consecutive scores along K (ties: lower index).

    Bit-equal to :func:`nmsparse.solvers.topn.topn_groups`. Triton: ``m <= 64``. ``absolute``: of ``|scores|``.

    Example:
        >>> topn_nm(torch.tensor([[1., 3., 3., 2.]]), 2, 4).int().tolist()
        [[0, 1, 1, 0]]
    """
    where = f"topn_{n}_{m}"
    _check_n(n, m, where)
    _check(scores, m, where, transposable=False, check_finite=check_finite)
    no = None if m <= _TOPN_TRITON_MAX_M else f"the Triton top-n kernel takes m <= {_TOPN_TRITON_MAX_M}, got {m}"
    if resolve_backend(backend, scores, where=where, triton_ok=no) == "triton":
        from .triton_kernels import topn_triton

        return topn_triton(scores.detach(), n, m, absolute=absolute)
    return _ref.topn_reference(scores.abs() if absolute else scores, n, m)


def exact_nm_t(scores: torch.Tensor, n: int, m: int, *, absolute: bool = False, backend: str = "auto",
               check_finite: bool = True) -> torch.Tensor:
    """Optimal n:m-T mask (exactly ``n`` per row and column of every block) on ``scores``' device.

    ``m = 4``: :func:`exact_n_4_t` (Triton or torch). ``m >= 8``: the batched min-cost flow of
    :mod:`nmsparse.kernels.exact_flow`: its Triton kernel for ``m`` in 8, 16 (bit-equal to the torch one), the
    torch ops otherwise (CPU or CUDA, the same mask). Its optimum equals the CPU (numba) solver's.

    Example:
        >>> mask = exact_nm_t(torch.rand(16, 16), 4, 8)
        >>> int(mask.sum())
        128
    """
    where = f"exact_{n}_{m}_t"
    _check_n(n, m, where)
    if m == 4:
        return exact_n_4_t(scores, n, absolute=absolute, backend=backend, check_finite=check_finite)
    _check(scores, m, where, transposable=True, check_finite=check_finite)
    no = None if m in _FLOW_TRITON_MS else (f"the Triton exact flow takes m in {_FLOW_TRITON_MS}, got m={m} (the "
                                            f"torch flow runs on the device: backend='torch')")
    if resolve_backend(backend, scores, where=where, triton_ok=no) == "triton":
        from .triton_kernels import flow_t_triton

        return flow_t_triton(scores.detach(), n, m, absolute=absolute)
    from ..layout import from_blocks, to_blocks
    from .exact_flow import flow_blocks_torch

    rows, cols = scores.shape
    source = scores.detach().abs() if absolute else scores.detach()
    return from_blocks(flow_blocks_torch(to_blocks(source, m).contiguous(), n), rows, cols)


_REGISTERED = False
_REGISTERED_INTERPRET = False


def register_kernels() -> list[str]:
    """Register the Triton backends (``backend="triton"``) and the on-device exact flow with the solver
    registry of :func:`nmsparse.find_mask`. Idempotent; returns the labels registered by this call.

    Registered: ``topn/triton`` (plain), ``exact/triton`` (m = 4, 8, 16), ``greedy/triton`` (m in 4, 8, 16, 32), all
    for CUDA tensors (and CPU tensors when ``TRITON_INTERPRET=1`` at registration), available when triton
    imports; and ``exact/torch-flow`` (m >= 8, any device: the batched torch min-cost flow, which keeps the
    work on the GPU instead of copying blocks to the CPU for numba; priority below exact/numba, so ``auto``
    takes it only where neither Triton nor numba can run).

    Example:
        >>> labels = register_kernels()
        >>> isinstance(labels, list)
        True
    """
    global _REGISTERED, _REGISTERED_INTERPRET
    from ..solvers import register_solver
    from ._capability import triton_interpret

    # Registered once, again only if TRITON_INTERPRET was switched on since (a test session that imported
    # nmsparse first): then the Triton backends are re-registered for CPU tensors too.
    if _REGISTERED and (_REGISTERED_INTERPRET or not triton_interpret()):
        return []

    devices = {"cuda", "cpu"} if triton_interpret() else {"cuda"}
    dtypes = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

    def topn_solver(scores: torch.Tensor, pattern, progress=None):  # noqa: ANN001, ANN202
        return topn_nm(scores, pattern.n, pattern.m, backend="triton", check_finite=False)

    def exact_solver(scores: torch.Tensor, pattern, progress=None):  # noqa: ANN001, ANN202
        return exact_nm_t(scores, pattern.n, pattern.m, backend="triton", check_finite=False)

    def greedy_solver(scores: torch.Tensor, pattern, progress=None):  # noqa: ANN001, ANN202
        return greedy_nm_t(scores, pattern.n, pattern.m, backend="triton", check_finite=False)

    def flow_solver(scores: torch.Tensor, pattern, progress=None):  # noqa: ANN001, ANN202
        return exact_nm_t(scores, pattern.n, pattern.m, backend="torch", check_finite=False)

    labels = []
    specs: list[tuple[str, Any, dict[str, Any]]] = [
        ("topn", topn_solver, dict(plain=True, ms=set(range(2, _TOPN_TRITON_MAX_M + 1)), exact=True,
                                   exactly_n=True, description="per-group top-n, Triton (bit-equal to topn/torch)")),
        ("exact", exact_solver, dict(transposable=True, ms={4, *_FLOW_TRITON_MS}, exact=True, exactly_n=True,
                                     description="optimal n:m-T in Triton: m=4 one pass scoring every valid 4x4 "
                                                 "mask in float64, m=8/16 a min-cost flow in registers (both "
                                                 "bit-equal to their torch twins)")),
        ("greedy", greedy_solver, dict(transposable=True, ms=set(_GREEDY_TRITON_MS),
                                       description="greedy 2-approximation, Triton, one block's scores in "
                                                   "registers (bit-equal to greedy/torch)")),
    ]
    # Under the interpreter (CPU tests) the kernels stay reachable with backend="triton" but "auto" never prefers
    # them: interpreted Triton is orders of magnitude slower than the CPU solvers.
    priority = -10 if triton_interpret() else 20
    for name, fn, kwargs in specs:
        register_solver(name, fn, backend="triton", devices=devices, dtypes=dtypes, priority=priority,
                        available=triton_installed, replace=True, **kwargs)
        labels.append(f"{name}/triton")
    register_solver("exact", flow_solver, backend="torch-flow", transposable=True, ms={8, 16, 32}, exact=True,
                    exactly_n=True, priority=5, replace=True,
                    description="optimal n:m-T by a batched min-cost flow in torch ops, on the GPU (same optimum "
                                "as exact/numba)")
    labels.append("exact/torch-flow")
    _REGISTERED = True
    _REGISTERED_INTERPRET = triton_interpret()
    return labels
