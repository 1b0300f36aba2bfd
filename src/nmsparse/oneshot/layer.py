"""SparseGPT on one layer (Frantar & Alistarh, 2023), and the reconstruction error of any pruned layer.

Everything works on a layer's *matrix view* ``W``, ``[out, in]`` (a ``Conv1D`` weight transposed), and its input
Gram matrix ``H = sum_t x_t x_t^T`` over the calibration tokens: the squared output error of any ``W'`` is
``tr((W - W') H (W - W')^T)``.

SparseGPT damps ``H`` by ``damping * mean(diag(H))``, takes the upper Cholesky factor ``U`` of ``H^-1`` and sweeps
the columns left to right in lazy blocks of ``block_size``. At each group of ``m`` columns the mask is chosen on
the saliency ``w_ij^2 / U_jj^2`` of the weights *as updated so far*, and every pruned weight's error is spread
over the columns to its right by the OBS rule. ``U`` is ``V^-1`` for the upper triangular ``V`` with
``V V^T = H`` (one Cholesky factorisation); the sweep needs only its diagonal blocks. The masks come from the
solver :func:`nmsparse.find_mask` runs (top-n; exact for ``-T``, whose ``m x m`` blocks span one group's columns,
so the out / m blocks of a group are solved jointly, fixed, and only then pruned). Its slow twin (float64, one
column at a time, explicit inverses) is the oracle of ``tests/unit/test_oneshot.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .._inputs import check_tensor
from .._logging import logger
from ..errors import InputError, ShapeError
from ..pattern import NMPattern
from ..solvers.registry import resolve

__all__ = [
    "LayerResult",
    "sparsegpt",
    "refit",
    "damping_shift",
    "refit_bytes",
    "masked_cg",
    "reconstruction_error",
    "quadratic",
]

#: How often a failed Cholesky factorisation retries with ten times the damping.
_CHOLESKY_RETRIES = 4


@dataclass
class LayerResult:
    """Output of :func:`sparsegpt`: the new matrix view (zeros at pruned positions), its mask, the damping used,
    the squared output error and the shift the damping added to ``H``'s diagonal."""

    weight: torch.Tensor
    mask: torch.Tensor
    damping: float = 0.0
    #: ``tr((W - W') H (W - W')^T)`` on the undamped Gram matrix, when the method computed it (``None``: not).
    error: float | None = None
    #: ``damping * mean(diag H)`` (dead inputs counted as 1): the sweep factorised ``H + shift * I``.
    shift: float = 0.0


def _hessian_factor(
    gram: torch.Tensor, weight: torch.Tensor, damping: float, *, where: str
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Upper triangular ``V`` with ``V V^T = H + shift * I`` (``shift = damping * mean(diag H)``), the cleaned
    weight, the damping used and ``shift``.

    A dead input (``H_jj = 0``) never reaches the output, so its weights are free: they are zeroed (the cheapest
    to prune) and ``H_jj`` becomes 1 so the factorisation stays defined. ``V`` is the lower Cholesky factor of
    ``J H J`` (``J`` reverses the order) read backwards, so ``V^-1`` is the upper Cholesky factor ``U`` of
    ``H^-1`` that SparseGPT sweeps with: one factorisation instead of a factorisation, an inverse and a second
    factorisation. A factorisation that fails (an ill-conditioned ``H`` in float32) is retried with ten times
    the damping.
    """
    values, dead = _live_diagonal(gram)
    clean = weight.masked_fill(dead, 0.0)
    used = damping
    for attempt in range(_CHOLESKY_RETRIES + 1):
        shift = damping_shift(gram, used)
        hessian = gram.flip(0, 1)
        torch.diagonal(hessian).copy_((values + shift).flip(0))
        lower, info = torch.linalg.cholesky_ex(hessian)
        del hessian  # at most two [in, in] matrices alive at once
        if int(info) == 0:
            if attempt:
                logger.warning("%s: the Hessian needed damping %.3g (asked %.3g) to factorise", where, used, damping)
            return lower.flip(0, 1), clean, used, shift
        used = used * 10 if used > 0 else 1e-6
    raise InputError(
        f"{where}: the damped Hessian is not positive definite even with damping {used / 10:.3g}; the calibration "
        f"inputs of this layer hold non-finite values or too few tokens: use more calibration samples or "
        f"dtype='float64'"
    )


def sparsegpt(
    weight: torch.Tensor,
    gram: torch.Tensor,
    pattern: NMPattern,
    *,
    damping: float = 0.01,
    block_size: int = 128,
    record: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    where: str = "sparsegpt",
) -> LayerResult:
    """SparseGPT on one ``[out, in]`` matrix with its input Gram matrix (see the module docstring).

    Computes in the dtype of ``weight`` (float32 or float64); ``gram`` is converted to it.

    Args:
        weight: ``[out, in]`` matrix view.
        gram: ``[in, in]`` sum of ``x x^T`` over calibration tokens.
        pattern: the pattern; ``-T`` patterns need ``out`` divisible by ``m``.
        damping: added to ``H``'s diagonal, relative to its mean.
        block_size: columns per lazy update (rounded down to a multiple of ``m``, at least ``m``).
        record: *optional* ``record(first_column, saliency, mask)`` called with each group's ``[out, m]``
            saliency and chosen mask (for tests).
        where: prefix of error messages.

    Returns:
        :class:`LayerResult` with the reconstructed weight (exact zeros where the mask is ``False``) and its
        squared output error ``tr((W - W') H (W - W')^T)`` on the undamped ``gram``, from the sweep's OBS losses.
    """
    if weight.dim() != 2:
        raise ShapeError(f"{where}: expected a [out, in] matrix, got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    if cols % pattern.m or (pattern.transposable and rows % pattern.m):
        raise ShapeError(f"{where}: a [{rows}, {cols}] matrix cannot take pattern {pattern}")
    if tuple(gram.shape) != (cols, cols):
        raise ShapeError(
            f"{where}: the Gram matrix must be [{cols}, {cols}] for a [{rows}, {cols}] weight, got {tuple(gram.shape)}"
        )
    check_tensor(weight, "weight", where, floating=True)
    if not bool(torch.isfinite(torch.stack(torch.aminmax(weight))).all()):  # one pass; NaN propagates
        raise InputError(f"{where}: weight holds non-finite values (NaN or inf); pruning needs finite weights")
    m = pattern.m
    step = max(m, (block_size // m) * m)
    # H = V V^T with V upper; the sweep's U (H^-1 = U^T U) is V^-1, of which it needs only the diagonal blocks:
    # the lazy update of block [i1, i2) by every block before it is (W - W')[:, :i1] V[:i1, i1:i2] V_b^-1
    # (V_b = V[i1:i2, i1:i2]), the same as the sum of the earlier blocks' Err @ U[.., i1:i2].
    factor, clean, used, shift = _hessian_factor(gram.to(weight.dtype), weight, damping, where=where)
    # The solver find_mask would run, validated once per layer; each group's saliency is finite, contiguous and
    # of the solver's dtype, so the per-group calls skip find_mask's checks.
    solve = resolve("exact" if pattern.transposable else "topn", pattern, weight.device, weight.dtype)
    # Work on transposed copies: a column of W is a contiguous row of W^T.
    w_t = clean.T.contiguous()  # [in, out]: the current weights, then the final ones (swept rows)
    del clean
    delta_t = torch.empty_like(w_t)  # (W - W')^T of the swept columns
    mask_t = torch.empty(cols, rows, dtype=torch.bool, device=weight.device)
    errs = torch.empty(step, rows, dtype=weight.dtype, device=weight.device)  # the block's err rows
    loss = 0.0  # sum of err^2 = sum of (w_i - q_i)^2 / U_ii^2: the OBS loss, tr(dW H_damped dW^T)
    for i1 in range(0, cols, step):
        i2 = min(i1 + step, cols)
        v_b = factor[i1:i2, i1:i2]
        eye = torch.eye(i2 - i1, dtype=factor.dtype, device=factor.device)
        u_b = torch.linalg.solve_triangular(v_b, eye, upper=True)  # U[i1:i2, i1:i2]
        d = torch.diagonal(u_b)
        d2 = d**2
        block = w_t[i1:i2]  # view: the block's weights, not yet reached by any update
        delta = delta_t[i1:i2]
        delta.copy_(block)
        if i1:
            lazy = factor[:i1, i1:i2].T @ delta_t[:i1]  # [b, out]
            block += torch.linalg.solve_triangular(v_b.T, lazy, upper=False)
        for i in range(i2 - i1):
            if i % m == 0:
                saliency = torch.square(block[i : i + m].T, out=block.new_empty(rows, m))  # [out, m]
                saliency /= d2[i : i + m]
                group = solve(saliency.to(solve.dtype))  # no copy unless fp16/bf16 widen
                mask_t[i1 + i : i1 + i + m] = group.T
                if record is not None:
                    record(i1 + i, saliency, group)
            col = block[i]
            q = col * mask_t[i1 + i]
            err = torch.div(col - q, d[i], out=errs[i])
            # OBS: the pruned part of column i is spread over the block's columns to its right (w_j -= err U_ij)
            block[i + 1 :].addcmul_(u_b[i, i + 1 :].unsqueeze(1), err.unsqueeze(0), value=-1)
            block[i] = q
        delta -= block
        loss += float(errs[: i2 - i1].square().sum(dtype=torch.float64))
    # undamped: tr(dW H dW^T) = tr(dW (H + shift I) dW^T) - shift ||dW||^2 (dead inputs: dW = 0 and H = 0 there)
    error = max(loss - shift * float(delta_t.square().sum(dtype=torch.float64)), 0.0)
    del delta_t, factor
    return LayerResult(w_t.T.contiguous(), mask_t.T.contiguous(), used, error, shift)


def masked_cg(
    w: torch.Tensor,
    mask: torch.Tensor,
    gram: torch.Tensor,
    rhs: torch.Tensor,
    ridge: torch.Tensor | float,
    precond: torch.Tensor,
    *,
    iterations: int,
    tol: float,
    anchor: torch.Tensor | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> int:
    """Fit the kept entries of ``w`` in place by Jacobi-preconditioned conjugate gradients; returns the steps run.

    One independent problem per row of ``w`` (``[..., out, k]``): minimise
    ``tr(W G W^T) - 2 tr(W R^T) + sum_j ridge_j ||W[.., j] - A[.., j]||^2`` over the entries where ``mask`` (0/1,
    ``w``'s dtype) is 1, with ``G = gram`` (``[..., k, k]``), ``R = rhs`` (``w``'s shape) and ``A = anchor``
    (``None``: the start, so the ridge pulls towards it). ``precond`` is ``mask / (diag(G) + ridge)``. CG lowers the
    objective at every step; a row stops once its residual norm falls below ``tol`` of its start, and all stop
    after ``iterations``. ``on_step(step, w)`` sees every iterate (AdaPrune ranks them on held-out rows).
    """
    r = rhs - w @ gram
    if anchor is not None:
        r -= ridge * (w - anchor)
    r = r * mask  # minus half the gradient, on the mask
    z = r * precond
    p = z.clone()
    rz = (r * z).sum(dim=-1, keepdim=True)
    r0 = r.square().sum(dim=-1, keepdim=True).sqrt()
    active = r0 > 0
    steps = 0
    for steps in range(1, iterations + 1):
        hp = (p @ gram + ridge * p) * mask
        php = (p * hp).sum(dim=-1, keepdim=True)
        alpha = torch.where(active & (php > 0), rz / php.clamp_min(1e-30), torch.zeros_like(php))
        w.add_(alpha * p)
        r.sub_(alpha * hp)
        z = r * precond
        rz_new = (r * z).sum(dim=-1, keepdim=True)
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(1e-30), torch.zeros_like(rz))
        p = z + beta * p
        rz = rz_new
        active = active & (r.square().sum(dim=-1, keepdim=True).sqrt() > tol * r0)
        if on_step is not None:
            on_step(steps, w)
        if not bool(active.any()):
            break
    return steps


def refit(
    dense: torch.Tensor,
    gram: torch.Tensor,
    mask: torch.Tensor,
    start: torch.Tensor | None = None,
    *,
    shift: float,
    iterations: int,
    tol: float = 1e-4,
) -> torch.Tensor:
    """A layer's kept weights re-fitted to its dense output, the mask fixed (the ``refit`` option of
    ``sparsegpt`` and ``wanda``).

    A mask method leaves the kept weights as they were (Wanda, magnitude), or as its sweep left them (SparseGPT
    freezes each column once it has passed, so the kept weights on its left never compensate the columns pruned
    after them). This minimises the damped output error ``tr((W - W') (H + shift I) (W - W')^T)`` (dead inputs:
    ``W[:, j] = 0``) over the kept entries by :func:`masked_cg` from ``start`` (one ``[out, in] @ [in, in]``
    product per iteration), so the objective never rises above the start's. SparseGPT's ``shift`` is its sweep's
    (:attr:`LayerResult.shift`): the same objective as the sweep.

    Args:
        dense: ``[out, in]`` matrix view before pruning (the target).
        gram: ``[in, in]`` input Gram matrix of the calibration tokens.
        mask: ``[out, in]`` bool mask (kept = True); never changed.
        start: the method's pruned weights (default: ``dense * mask``); their dtype is the result's.
        shift: the ridge added to ``H``'s diagonal (:func:`damping_shift`).
        iterations, tol: CG steps at most, and the relative residual at which a row stops.

    Returns:
        ``[out, in]`` weights in ``start``'s dtype, exact zeros where ``mask`` is ``False``.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> w, x = torch.randn(8, 16), torch.randn(64, 16) @ torch.randn(16, 16)
        >>> gram = x.T @ x
        >>> swept = sparsegpt(w, gram, NMPattern.parse("4:8-T"))
        >>> fitted = refit(w, gram, swept.mask, swept.weight, shift=swept.shift, iterations=25)
        >>> reconstruction_error(w, fitted, gram)[0] < reconstruction_error(w, swept.weight, gram)[0]
        True
    """
    h = gram.to(dense.dtype if start is None else start.dtype)
    values, dead = _live_diagonal(h)
    keep = mask.to(h.dtype)
    target = dense.to(h.dtype) * (~dead).to(h.dtype)
    w = (target if start is None else start.to(h.dtype)) * keep
    masked_cg(w, keep, h, target @ h, shift, keep / (values + shift), iterations=iterations, tol=tol, anchor=target)
    return w * keep


def damping_shift(gram: torch.Tensor, damping: float) -> float:
    """``damping * mean(diag H)``, a dead input (``H_jj = 0``) counted as 1: SparseGPT's damping of ``H``."""
    mean = float(_live_diagonal(gram)[0].mean())
    return damping * (mean if mean > 0 else 1.0)


def _live_diagonal(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``H``'s diagonal with a dead input (``H_jj = 0``, it never reaches the output) counted as 1, and the dead
    inputs."""
    diag = torch.diagonal(h)
    dead = diag == 0
    return torch.where(dead, torch.ones((), dtype=diag.dtype, device=diag.device), diag), dead


def refit_bytes(rows: int, cols: int, itemsize: int) -> int:
    """Working memory of :func:`refit` on a ``[rows, cols]`` layer: the Gram copy, its CG vectors and the mask."""
    return (cols * cols + 10 * rows * cols) * itemsize + rows * cols


def reconstruction_error(dense: torch.Tensor, pruned: torch.Tensor, gram: torch.Tensor) -> tuple[float, float]:
    """``(squared output error, squared dense output)`` summed over the calibration tokens of ``gram``.

    ``||X (W - W')^T||^2 = tr((W - W') H (W - W')^T)`` and ``||X W^T||^2 = tr(W H W^T)``: products in the dtype
    of ``gram`` (no float64 copy of a large Gram matrix), sums in float64.
    """
    dense = dense.to(gram.dtype)
    delta = dense - pruned.to(gram.dtype)
    return max(quadratic(delta, gram), 0.0), max(quadratic(dense, gram), 0.0)


#: Rows of the Gram matrix per product in :func:`quadratic`.
_SOLVE_BLOCK = 512


def quadratic(a: torch.Tensor, gram: torch.Tensor) -> float:
    """``tr(A H A^T)`` of a symmetric ``H`` from the blocks on and above its diagonal (half a full product's work).

    Column block ``j`` adds ``sum((A_j H_jj + 2 A_<j H_<j,j) * A_j)``; row sums in ``a``'s dtype, their total in
    float64.
    """
    cols = gram.shape[0]
    total = 0.0
    for start in range(0, cols, _SOLVE_BLOCK):
        stop = min(start + _SOLVE_BLOCK, cols)
        part = a[:, start:stop] @ gram[start:stop, start:stop]
        if start:
            part.addmm_(a[:, :start], gram[:start, start:stop], alpha=2.0)
        part *= a[:, start:stop]
        total += float(part.sum(dim=1).sum(dtype=torch.float64))
    return total
