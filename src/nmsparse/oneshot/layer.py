"""One layer of one-shot pruning: calibration statistics, saliency, masks and the SparseGPT reconstruction.

Every function here works on the *matrix view* ``W`` of a layer, ``[out, in]`` (an ``nn.Linear`` weight as is, a
``transformers`` ``Conv1D`` weight transposed), and on the layer's input Gram matrix ``H = sum_t x_t x_t^T``
(``[in, in]``, summed over every calibration token ``t``). ``H`` is all a linear layer's calibration data
contributes: the squared output error of any weight ``W'`` is ``tr((W - W') H (W - W')^T)``.

Methods:

* ``magnitude``: keep the largest ``|w|``; no update.
* ``wanda`` (Sun et al., 2023): keep the largest ``|w_ij| * ||x_j||_2`` (``||x_j||_2 = sqrt(H_jj)``); no update.
* ``sparsegpt`` (Frantar & Alistarh, 2023): damp ``H`` by ``damping * mean(diag(H))``, take the upper Cholesky
  factor ``U`` of ``H^-1`` and sweep the columns left to right in lazy blocks of ``block_size``. When the sweep
  reaches a group of ``m`` columns, the group's mask is chosen on the saliency ``w_ij^2 / U_jj^2`` of the weights
  *as updated so far* (``U_jj^2`` is the ``[H_F^-1]_jj`` of the columns ``F`` not yet pruned), and every pruned
  weight's error is spread over the columns to its right by the OBS rule.

Masks are always chosen by :func:`nmsparse.find_mask`: per-row top-n for plain patterns, and the exact
transposable solver (``method="exact"``) for ``-T`` patterns. A transposable ``m x m`` block spans ``m`` rows and
the ``m`` columns of one group, so SparseGPT's group-at-a-time sweep carries over unchanged: the masks of the
``out / m`` blocks of the group are solved jointly and exactly on the group's saliency, fixed, and only then are
the group's columns pruned and the error propagated. Magnitude and Wanda solve the whole matrix at once.

:func:`sparsegpt_reference` is the slow twin of :func:`sparsegpt`: float64, one column at a time, the OBS update
from an explicit inverse of the remaining columns' Hessian, no Cholesky factor and no lazy blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .._logging import logger
from ..errors import InputError, ShapeError
from ..pattern import NMPattern
from ..solvers import find_mask

__all__ = [
    "METHODS",
    "LayerResult",
    "prune_matrix",
    "sparsegpt",
    "sparsegpt_reference",
    "saliency_mask",
    "reconstruction_error",
    "gram_update_",
]

#: One-shot methods of :func:`nmsparse.prune_oneshot_`.
METHODS = ("sparsegpt", "wanda", "magnitude", "adaprune")

#: How often a failed Cholesky factorisation retries with ten times the damping.
_CHOLESKY_RETRIES = 4


@dataclass
class LayerResult:
    """Output of :func:`prune_matrix`: the new matrix view (zeros at pruned positions) and its mask."""

    weight: torch.Tensor
    mask: torch.Tensor
    damping: float = 0.0


def gram_update_(gram: torch.Tensor, x: torch.Tensor) -> int:
    """Add ``x^T x`` of the rows of ``x`` (``[..., in]``, flattened to tokens) to ``gram`` in place.

    Returns:
        The number of rows (tokens) added.
    """
    rows = x.reshape(-1, x.shape[-1]).to(gram.dtype)
    gram.addmm_(rows.T, rows)
    return int(rows.shape[0])


def _solver_method(pattern: NMPattern) -> str:
    return "exact" if pattern.transposable else "topn"


def saliency_mask(weight: torch.Tensor, saliency: torch.Tensor, pattern: NMPattern) -> torch.Tensor:
    """Mask of a ``[rows, cols]`` matrix keeping the most ``saliency``: top-n per group, or exact ``-T`` blocks."""
    return find_mask(weight, pattern, method=_solver_method(pattern), scores=saliency, progress=False)


def _check_shapes(weight: torch.Tensor, gram: torch.Tensor | None, pattern: NMPattern, where: str) -> None:
    if weight.dim() != 2:
        raise ShapeError(f"{where}: expected a [out, in] matrix, got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    if cols % pattern.m or (pattern.transposable and rows % pattern.m):
        raise ShapeError(f"{where}: a [{rows}, {cols}] matrix cannot take pattern {pattern}")
    if gram is not None and tuple(gram.shape) != (cols, cols):
        raise ShapeError(f"{where}: the Gram matrix must be [{cols}, {cols}] for a [{rows}, {cols}] weight, got "
                         f"{tuple(gram.shape)}")


def _damped(gram: torch.Tensor, weight: torch.Tensor, damping: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(H + damping * mean(diag H) * I, W)`` with dead inputs (``H_jj = 0``) given ``H_jj = 1`` and ``W_:j = 0``.

    A dead input never reaches the output, so its weights are free: they are zeroed, which makes them the cheapest
    to prune, and their Hessian row becomes the identity's so the factorisation stays defined.
    """
    hessian = gram.clone()
    weight = weight.clone()
    diag = torch.diagonal(hessian)
    dead = diag == 0
    if bool(dead.any()):
        diag[dead] = 1.0
        weight[:, dead] = 0.0
    mean = float(diag.mean())
    diag += damping * (mean if mean > 0 else 1.0)
    return hessian, weight


def _inverse_cholesky(gram: torch.Tensor, weight: torch.Tensor, damping: float, *,
                      where: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Upper Cholesky factor ``U`` of ``(damped H)^-1``, the cleaned weight and the damping used.

    A factorisation that fails (an ill-conditioned ``H`` in float32) is retried with ten times the damping.
    """
    used = damping
    for attempt in range(_CHOLESKY_RETRIES + 1):
        hessian, clean = _damped(gram, weight, used)
        lower, info = torch.linalg.cholesky_ex(hessian)
        del hessian  # at most two [in, in] matrices alive at once
        if int(info) == 0:
            inverse = torch.cholesky_inverse(lower)
            del lower
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            del inverse
            if int(info) == 0:
                if attempt:
                    logger.warning("%s: the Hessian needed damping %.3g (asked %.3g) to factorise", where, used,
                                   damping)
                return upper, clean, used
        used = used * 10 if used > 0 else 1e-6
    raise InputError(
        f"{where}: the damped Hessian is not positive definite even with damping {used / 10:.3g}; the calibration "
        f"inputs of this layer hold non-finite values or too few tokens: use more calibration samples or "
        f"dtype='float64'"
    )


def sparsegpt(weight: torch.Tensor, gram: torch.Tensor, pattern: NMPattern, *, damping: float = 0.01,
              block_size: int = 128, record: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
              where: str = "sparsegpt") -> LayerResult:
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
        :class:`LayerResult` with the reconstructed weight (exact zeros where the mask is ``False``).
    """
    _check_shapes(weight, gram, pattern, where)
    rows, cols = weight.shape
    m = pattern.m
    step = max(m, (block_size // m) * m)
    upper, w, used = _inverse_cholesky(gram.to(weight.dtype), weight, damping, where=where)
    mask = torch.zeros(rows, cols, dtype=torch.bool, device=weight.device)
    for i1 in range(0, cols, step):
        i2 = min(i1 + step, cols)
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        u1 = upper[i1:i2, i1:i2]
        d = torch.diagonal(u1)
        m1 = torch.zeros_like(w1, dtype=torch.bool)
        for i in range(i2 - i1):
            if i % m == 0:
                saliency = w1[:, i:i + m] ** 2 / d[i:i + m] ** 2
                group = saliency_mask(w1[:, i:i + m], saliency, pattern)
                m1[:, i:i + m] = group
                if record is not None:
                    record(i1 + i, saliency, group)
            col = w1[:, i]
            q = col * m1[:, i]
            q1[:, i] = q
            err = (col - q) / d[i]
            w1[:, i:] -= err.unsqueeze(1) * u1[i, i:].unsqueeze(0)
            err1[:, i] = err
        w[:, i1:i2] = q1
        mask[:, i1:i2] = m1
        w[:, i2:] -= err1 @ upper[i1:i2, i2:]
    return LayerResult(w, mask, used)


def sparsegpt_reference(weight: torch.Tensor, gram: torch.Tensor, pattern: NMPattern, *,
                        damping: float = 0.01) -> LayerResult:
    """Slow, plain twin of :func:`sparsegpt` (float64, one column at a time, explicit inverses).

    For column ``j`` (columns ``F = j, j+1, ...`` not yet pruned) it forms ``G = (H_FF)^-1`` explicitly. When
    ``j`` starts a group of ``m`` columns, the group's mask is chosen on the saliency ``w_k^2 / [(H_{k:,k:})^-1]_00``
    of the current weights; then the pruned part of column ``j`` is removed and the remaining columns get the OBS
    update ``w_F -= (w_j - q_j) / G_00 * G_0,:``. Use on small layers only (cost ``O(in^4)``).
    """
    _check_shapes(weight, gram, pattern, "sparsegpt_reference")
    rows, cols = weight.shape
    m = pattern.m
    hessian, w = _damped(gram.double(), weight.double(), damping)
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    for j in range(cols):
        if j % m == 0:
            d2 = torch.stack([torch.linalg.inv(hessian[k:, k:])[0, 0] for k in range(j, j + m)])
            saliency = w[:, j:j + m] ** 2 / d2
            mask[:, j:j + m] = saliency_mask(w[:, j:j + m], saliency, pattern)
        inverse = torch.linalg.inv(hessian[j:, j:])
        q = w[:, j] * mask[:, j]
        w[:, j:] -= ((w[:, j] - q) / inverse[0, 0]).unsqueeze(1) * inverse[0].unsqueeze(0)
        w[:, j] = q
    return LayerResult(w, mask, damping)


def prune_matrix(method: str, weight: torch.Tensor, gram: torch.Tensor | None, pattern: NMPattern, *,
                 damping: float = 0.01, block_size: int = 128, where: str = "prune_oneshot_") -> LayerResult:
    """Prune one ``[out, in]`` matrix by ``method`` (``"magnitude"``, ``"wanda"`` or ``"sparsegpt"``)."""
    _check_shapes(weight, gram, pattern, where)
    if method == "magnitude":
        mask = saliency_mask(weight, weight.abs(), pattern)
        return LayerResult(weight * mask, mask)
    if gram is None:
        raise InputError(f"{where}: method {method!r} needs calibration statistics")
    if method == "wanda":
        norms = torch.diagonal(gram).clamp_min(0).sqrt().to(weight.dtype)
        mask = saliency_mask(weight, weight.abs() * norms.unsqueeze(0), pattern)
        return LayerResult(weight * mask, mask)
    if method == "sparsegpt":
        return sparsegpt(weight, gram, pattern, damping=damping, block_size=block_size, where=where)
    raise InputError(f"{where}: prune_matrix does not handle method {method!r}")


def reconstruction_error(dense: torch.Tensor, pruned: torch.Tensor, gram: torch.Tensor) -> tuple[float, float]:
    """``(squared output error, squared dense output)`` summed over the calibration tokens of ``gram``.

    ``||X (W - W')^T||^2 = tr((W - W') H (W - W')^T)`` and ``||X W^T||^2 = tr(W H W^T)``: products in the dtype
    of ``gram`` (no float64 copy of a large Gram matrix), sums in float64.
    """
    dense = dense.to(gram.dtype)
    delta = dense - pruned.to(gram.dtype)
    error = float(((delta @ gram) * delta).sum(dtype=torch.float64))
    power = float(((dense @ gram) * dense).sum(dtype=torch.float64))
    return max(error, 0.0), max(power, 0.0)
