"""``find_mask``: validate a weight once, pick a registered solver, run it on the matrix view, check the result.

Every method, plain top-n included, is a registration in :mod:`nmsparse.solvers.registry` (the only
dispatcher); the built-in ones are registered below. See that module for ``register_solver``'s contract.
"""

from __future__ import annotations

from typing import Literal

import torch

from .._inputs import check_tensor
from ..errors import ConfigError, ShapeError, SolverError
from ..layout import check_fits, from_matrix, to_blocks, to_matrix
from ..pattern import NMPattern, PatternLike
from . import exact as _exact
from . import greedy as _greedy
from . import topn as _topn
from ._warmup import warmup
from .registry import (
    SolverSpec,
    available_backends,
    list_methods,
    list_solvers,
    normalize_method,
    numba_available,
    register_solver,
    registered_solver,
    resolve,
    select_solver,
    unregister_solver,
)

__all__ = [
    "find_mask",
    "list_methods",
    "list_solvers",
    "available_backends",
    "register_solver",
    "unregister_solver",
    "registered_solver",
    "SolverSpec",
    "resolve",
    "warmup",
    "Method",
    "Backend",
]

Method = Literal["auto", "topn", "exact", "greedy", "greedy-repair"]
Backend = Literal["auto", "torch", "numba", "python", "triton", "torch-flow"]


def _greedy_numba(repair: bool):  # noqa: ANN202 - a MatrixSolver
    def solve(scores: torch.Tensor, pattern: NMPattern, progress: bool | None = None) -> torch.Tensor:
        from . import greedy_cpu  # imports numba: only when this backend runs

        fn = greedy_cpu.greedy_repair_numba_matrix if repair else greedy_cpu.greedy_numba_matrix
        return fn(scores, pattern, progress)

    return solve


register_solver(
    "topn",
    _topn.topn_matrix,
    plain=True,
    exact=True,
    exactly_n=True,
    description="per-group top-n; optimal for plain n:m (ties: lower index)",
)
register_solver(
    "exact",
    _exact.enumerate_matrix,
    transposable=True,
    ms={4},
    exact=True,
    exactly_n=True,
    description="optimal mask per 4x4 block among those with exactly n per row and column: scores "
    "every valid block mask (24/90/24), on the input's device",
)
register_solver(
    "exact",
    _exact.flow_matrix_numba,
    backend="numba",
    transposable=True,
    ms={8, 16, 32},
    exact=True,
    exactly_n=True,
    priority=10,
    available=numba_available,
    description="optimal mask per block with exactly n per row and column: batched min-cost flow "
    "compiled with numba, solved on the CPU in float64",
)
register_solver(
    "exact",
    _exact.flow_matrix_python,
    backend="python",
    transposable=True,
    ms={8, 16, 32},
    exact=True,
    exactly_n=True,
    priority=-10,
    description="the min-cost flow of exact/numba run by the Python interpreter (thousands of times "
    "slower; used when numba is missing)",
)
register_solver(
    "greedy",
    _greedy.greedy_matrix,
    transposable=True,
    description="the paper's 2-approximation, vectorised torch: at most n per row/column, >= 1/2 of the optimum",
)
register_solver(
    "greedy",
    _greedy_numba(False),
    backend="numba",
    transposable=True,
    devices={"cpu"},
    priority=10,
    available=numba_available,
    description="greedy compiled with numba (bit-equal to greedy/torch)",
)
register_solver(
    "greedy-repair",
    _greedy.greedy_repair_matrix,
    transposable=True,
    exactly_n=True,
    description="greedy, then short rows/columns filled to exactly n by best 3-edge swaps",
)
register_solver(
    "greedy-repair",
    _greedy_numba(True),
    backend="numba",
    transposable=True,
    exactly_n=True,
    devices={"cpu"},
    priority=10,
    available=numba_available,
    description="greedy-repair with the numba greedy (bit-equal to greedy-repair/torch)",
)


# GPU backends (``nmsparse.kernels``: Triton kernels, the on-device exact flow) join the registry here, so
# ``backend="auto"`` sees them; importing them loads neither triton nor CUDA.
from . import _kernels  # noqa: E402, F401


def _check_result(spec: SolverSpec, mask: object, scores: torch.Tensor, pattern: NMPattern) -> torch.Tensor:
    """Raise SolverError unless ``mask`` is a bool mask of ``scores``' shape and device obeying ``pattern``."""
    where = f"find_mask: solver {spec.label} returned"
    bug = f"this is a bug in {spec.label}; pick another backend or method meanwhile"
    if not isinstance(mask, torch.Tensor):
        raise SolverError(f"{where} a {type(mask).__name__}, not a torch.Tensor; {bug}")
    if mask.dtype != torch.bool:
        raise SolverError(f"{where} dtype {mask.dtype}, expected torch.bool; {bug}")
    if tuple(mask.shape) != tuple(scores.shape):
        raise SolverError(f"{where} shape {tuple(mask.shape)}, expected {tuple(scores.shape)}; {bug}")
    if mask.device != scores.device:
        raise SolverError(f"{where} a mask on {mask.device}, expected {scores.device}; {bug}")
    n, m = pattern.n, pattern.m
    rows, cols = mask.shape
    # Fast pass without copies: counts per block row / column / group on a view of the mask.
    if pattern.transposable:
        view = mask.view(rows // m, m, cols // m, m)
        fast = [view.sum(dim=3, dtype=torch.int32), view.sum(dim=1, dtype=torch.int32)]
    else:
        fast = [mask.view(-1, m).sum(dim=1, dtype=torch.int32)]
    if all(bool((c == n).all() if spec.exactly_n else (c <= n).all()) for c in fast):
        return mask
    if pattern.transposable:
        blocks = to_blocks(mask, m)
        counts = {"row": blocks.sum(dim=2), "column": blocks.sum(dim=1)}  # (B, m) each
    else:
        counts = {"group": mask.reshape(-1, m).sum(dim=1)}
    rule = "exactly" if spec.exactly_n else "at most"
    for what, count in counts.items():
        bad = count != n if spec.exactly_n else count > n
        if bool(bad.any()):
            first = int(bad.reshape(-1).nonzero()[0])
            where_bad = (
                f"block {first // m}, {what} {first % m}"
                if pattern.transposable
                else f"group {first} (row {first * m // scores.shape[1]})"
            )
            raise SolverError(
                f"{where} an invalid {pattern} mask: {int(bad.sum())} {what}(s) break '{rule} {n} of {m}' "
                f"(first: {where_bad} keeps {int(count.reshape(-1)[first])}); {bug}"
            )
    return mask


def find_mask(
    weight: torch.Tensor,
    pattern: PatternLike,
    *,
    method: Method | str = "auto",
    backend: Backend | str = "auto",
    scores: torch.Tensor | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """Find an n:m or transposable n:m mask for a Linear, Conv1d or Conv2d weight.

    The importance of each weight is ``|weight|`` (or ``scores`` when given); the mask keeps as much of it as the
    method can. Conv2d weights ``[out, in, kh, kw]`` are masked through their matrix view ``[out, kh*kw*in]``,
    so groups run along input channels (Conv1d weights ``[out, in, k]`` as the Conv2d ``[out, in, 1, k]``);
    transposable blocks span ``m`` output rows x ``m`` input columns.

    The method and backend select a registered solver (:func:`list_solvers`); its result is checked (dtype,
    shape, device, pattern) before it is returned.

    Args:
        weight: ``[out, in]``, ``[out, in, k]`` or ``[out, in, kh, kw]`` floating tensor (fp32, fp16, bf16 or
            fp64), any device.
        pattern: ``"2:4"``, ``"4:8-T"``, ... or an :class:`~nmsparse.NMPattern`.
        method: ``"auto"`` (topn for plain n:m, exact for transposable), ``"topn"`` (per-group top-n, plain
            patterns only), ``"exact"`` (the optimal transposable mask among those keeping exactly ``n`` per row
            and column of every block; a mask with a few short rows can occasionally keep slightly more, which
            ``greedy`` may then find), ``"greedy"`` (the paper's 2-approximation: at most ``n`` per row and column) or
            ``"greedy-repair"`` (greedy, then filled to exactly ``n``), or any registered method. For plain
            patterns a method without a plain solver uses ``"topn"`` (every rule above reduces to per-group
            top-n when only groups are constrained), so every built-in method returns the optimal top-n mask.
        backend: ``"auto"`` (the best registered backend that can run on ``weight``'s device: the compiled
            ``"numba"`` kernels on the CPU, ``"torch"`` elsewhere, GPU kernels where registered) or a backend
            name from :func:`available_backends`.
        scores: *optional* importance of the same shape as ``weight`` that replaces ``|weight|``.
        progress: show a progress bar; ``None`` = only for long work on a terminal.

    Returns:
        ``torch.bool`` mask of ``weight``'s shape on ``weight``'s device, ``True`` = keep. Ties go to the lower
        flat index (topn and greedy); ``exact`` is deterministic and optimal.

    Raises:
        PatternError: unparseable pattern.
        ShapeError: rank other than 2, 3 or 4, empty tensor, or a dimension that is not a multiple of ``m``.
        InputError: not a dense floating tensor with data (lists, meta or sparse tensors), non-finite values.
        ConfigError: unknown method or backend, or ``"topn"`` with a transposable pattern.
        BackendUnavailableError: the explicit ``backend`` cannot run this request (the message lists those
            that can).
        SolverError: the solver returned a result that breaks its contract (a bug in that solver).

    Example:
        >>> import torch, nmsparse
        >>> w = torch.tensor([[0.1, -0.9, 0.3, 0.4], [1.0, 0.2, -0.3, 0.0]])
        >>> nmsparse.find_mask(w, "2:4").int().tolist()
        [[0, 1, 0, 1], [1, 0, 1, 0]]
    """
    pattern = NMPattern.parse(pattern)
    if not isinstance(method, str):
        raise ConfigError(f"find_mask: method must be a string, one of {list_methods()}; got {method!r}")
    if not isinstance(backend, str):
        raise ConfigError(
            f"find_mask: backend must be a string, 'auto' or one of {available_backends()}; got {backend!r}"
        )
    weight = check_tensor(weight, "weight", "find_mask", floating=True, finite=True)
    if weight.dim() == 3:  # nn.Conv1d [out, in, k]: the Conv2d [out, in, 1, k] (groups along input channels)
        if isinstance(scores, torch.Tensor) and scores.dim() == 3:
            scores = scores.unsqueeze(2)
        return find_mask(
            weight.unsqueeze(2), pattern, method=method, backend=backend, scores=scores, progress=progress
        ).squeeze(2)
    method = normalize_method(method, pattern)
    if scores is None:
        importance = weight.detach().abs()
    else:
        scores = check_tensor(scores, "scores", "find_mask", floating=True, finite=True)
        if scores.shape != weight.shape:
            raise ShapeError(
                f"find_mask: scores must have the weight's shape {tuple(weight.shape)}, got {tuple(scores.shape)}"
            )
        importance = scores.detach().to(weight.device)
    check_fits(weight.shape, pattern)
    spec = select_solver(method, backend, pattern, weight.device.type, importance.dtype)
    score_dtype = spec.score_dtype(importance.dtype)
    assert score_dtype is not None  # select_solver checked it
    matrix = to_matrix(importance).to(score_dtype).contiguous()
    mask = _check_result(spec, spec.fn(matrix, pattern, progress), matrix, pattern)
    return from_matrix(mask, weight.shape)
