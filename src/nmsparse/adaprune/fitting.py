"""Fitting: one layer's weights under a fixed mask, from its exact statistics, keeping the best iterate.

The objective is the layer's exact calibration MSE ``(tr(W G W^T) - 2 tr(W C) + sum(Y^2)) / (R * out)`` over the
kept weights ``W`` (and the bias), from :class:`~nmsparse.adaprune.LayerStatistics`. Two optimisers:

* ``"cg"`` (default): preconditioned conjugate gradients on that quadratic, one independent problem per output
  row (rows do not interact: the mask only removes coordinates), with a ridge pull towards the masked start
  (``damping`` times the mean input power, per coordinate scaled by the input power ``diag(G)``). Each step costs
  one ``W @ G`` product, and a few tens of steps reach what hundreds of Adam steps do.
* ``"adam"``: the paper's Adam, on the exact full-batch gradient (``batch_size=None``) or on mini-batches of
  stored rows; the best iterate by the exact error is kept.

Either way the returned weights are never worse than the masked start by the exact float64 error over every row.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import ShapeError
from ..layout import from_matrix, to_matrix
from .config import AdaPruneConfig
from .statistics import LayerStatistics

__all__ = ["FitResult", "fit_layer", "absorb_mean", "survivor_scores", "optimise_adam", "optimise_cg"]

_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8
#: With mini-batches or a held-out share, the selection error is evaluated every this many steps and at the last.
EVAL_EVERY = 10


def absorb_mean(weight: torch.Tensor, mask: torch.Tensor, m: int) -> torch.Tensor:
    """``weight * mask`` with each group's pruned sum shared equally among its kept weights."""
    w = to_matrix(weight).reshape(-1, m)
    k = to_matrix(mask).reshape(-1, m).to(w.dtype)
    kept = k.sum(dim=1, keepdim=True)
    pruned_sum = (w * (1 - k)).sum(dim=1, keepdim=True)
    shifted = (w + pruned_sum / kept.clamp_min(1)) * k
    return from_matrix(shifted.reshape(to_matrix(weight).shape), weight.shape)


def survivor_scores(weight: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Scores in which every non-zero weight outranks every zero one (conversion of sparse models)."""
    alive = weight != 0
    if bool(alive.all()):
        return scores
    return scores + alive.to(scores.dtype) * (scores.max() + 1.0)



@dataclass
class FitResult:
    """Outcome of fitting one layer.

    Attributes:
        w_aug: fitted augmented weights ``[groups, out, K (+1 for the bias)]``, float32, zero where masked.
        error_before: exact MSE of the masked start (after absorb-mean when on).
        error_after: exact MSE of ``w_aug``; never above ``error_before``.
        best_iteration: step whose weights were kept (``0`` = the masked start).
        iterations: steps run.
        in_features: ``K`` per group (for :attr:`weight`).
        has_bias: whether ``w_aug`` carries a bias column.
    """

    w_aug: torch.Tensor
    error_before: float
    error_after: float
    best_iteration: int
    iterations: int

    in_features: int = 0
    has_bias: bool = False

    @property
    def weight(self) -> torch.Tensor:
        """The fitted weight as ``[groups * out, K]`` (a Linear's ``[out, in]``)."""
        return self.w_aug[:, :, : self.in_features].reshape(-1, self.in_features)

    @property
    def bias(self) -> torch.Tensor | None:
        """The fitted bias ``[groups * out]``, or ``None`` when the layer has none."""
        return self.w_aug[:, :, self.in_features].reshape(-1) if self.has_bias else None


def _selection(stats: LayerStatistics) -> tuple[bool, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised (fit, selection) statistics: with a held-out share, gradients use the other rows and iterates
    are ranked on the held-out ones; otherwise both are every row. Returns ``(held_out, gram_fit, cross_fit,
    gram_sel, cross_sel)`` in float32, ``cross`` as ``[g, o, w]``."""
    rows = stats.rows
    held_out = stats.gram_val is not None and stats.cross_val is not None and 0 < stats.rows_val < rows
    if held_out:
        assert stats.gram_val is not None and stats.cross_val is not None
        fit_rows = rows - stats.rows_val
        gram_fit = ((stats.gram - stats.gram_val) / fit_rows).float()
        cross_fit = ((stats.cross - stats.cross_val) / fit_rows).transpose(1, 2).float().contiguous()
        gram_sel = (stats.gram_val / stats.rows_val).float()
        cross_sel = (stats.cross_val / stats.rows_val).transpose(1, 2).float().contiguous()
    else:
        gram_fit = gram_sel = (stats.gram / rows).float()
        cross_fit = cross_sel = (stats.cross / rows).transpose(1, 2).float().contiguous()  # [g, o, w]
    return held_out, gram_fit, cross_fit, gram_sel, cross_sel


def _finish(stats: LayerStatistics, start: torch.Tensor, best_w: torch.Tensor, best_it: int, iterations: int,
            error_start: float) -> FitResult:
    error_best = stats.error(best_w)
    if error_best > error_start:  # float32 ranking noise near the start, or a held-out pick: keep the start
        return FitResult(start.clone(), error_start, error_start, 0, iterations, in_features=stats.k,
                         has_bias=stats.bias)
    return FitResult(best_w, error_start, error_best, best_it, iterations, in_features=stats.k,
                     has_bias=stats.bias)


def optimise_adam(stats: LayerStatistics, start: torch.Tensor, mask_aug: torch.Tensor, *, iterations: int,
                  batch_rows: int | None, lr: float, bias_lr: float, seed: int,
                  tick: Callable[[], None] | None = None) -> FitResult:
    """Adam on the masked augmented weights ``[g, o, w]`` from ``start``, keeping the best iterate.

    Full batch (``batch_rows=None``): the exact gradient ``2 (W G - C^T) / (rows * outputs)`` from the
    statistics. Mini-batch: gradients on ``batch_rows`` stored rows. Iterates are ranked by their exact error on
    every calibration row (full batch: every step, for free; mini-batch: every ``EVAL_EVERY`` steps) or, with a
    validation share, on the held-out rows only (every ``EVAL_EVERY`` steps; gradients then use the other
    rows). The returned weights are never worse than ``start`` by the exact float64 error over all rows.
    """
    outputs = stats.groups * stats.out
    error_start = stats.error(start)
    if iterations == 0 or stats.rows == 0:
        return _finish(stats, start, start, 0, 0, error_start)
    held_out, gram_fit, cross_fit, gram_sel, cross_sel = _selection(stats)
    stored = stats.stored() if batch_rows is not None else None
    every = 1 if stored is None and not held_out else EVAL_EVERY
    mask_f = mask_aug.to(start.dtype)
    lr_cols = torch.full((stats.width,), lr, dtype=start.dtype, device=start.device)
    if stats.bias:
        lr_cols[-1] = bias_lr
    generator = torch.Generator().manual_seed(seed)
    perm: torch.Tensor | None = None
    cursor = 0

    def rank(w: torch.Tensor, product: torch.Tensor | None = None) -> float:
        # selection error * outputs - yy / rows: enough to rank iterates
        if product is None:
            product = w @ gram_sel
        return float(((product - 2.0 * cross_sel) * w).sum())

    w = start.clone()
    exp_avg = torch.zeros_like(w)
    exp_sq = torch.zeros_like(w)
    beta1, beta2 = _ADAM_BETAS
    best_w, best_rank, best_it = w.clone(), math.inf, 0
    for step in range(1, iterations + 1):
        evaluate = (step - 1) % every == 0
        if stored is None:
            product = w @ gram_fit
            if evaluate:
                current = rank(w, None if held_out else product)
                if current < best_rank:
                    best_w, best_rank, best_it = w.clone(), current, step - 1
            grad = (product - cross_fit) * (2.0 / outputs)
        else:
            assert batch_rows is not None
            if evaluate:
                current = rank(w)
                if current < best_rank:
                    best_w, best_rank, best_it = w.clone(), current, step - 1
            x_all, y_all = stored
            if perm is None or cursor + batch_rows > perm.numel():
                perm = torch.randperm(x_all.shape[0], generator=generator).to(x_all.device)
                cursor = 0
            index = perm[cursor:cursor + batch_rows]
            cursor += batch_rows
            xb, yb = x_all[index].transpose(0, 1), y_all[index].transpose(0, 1)  # [g, r, w], [g, r, o]
            resid = xb @ w.transpose(1, 2) - yb  # [g, r, o]
            grad = (resid.transpose(1, 2) @ xb) * (2.0 / (outputs * xb.shape[1]))
        grad.mul_(mask_f)
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        exp_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (exp_sq / (1 - beta2**step)).sqrt_().add_(_ADAM_EPS)
        w.sub_(exp_avg / denom * (lr_cols / (1 - beta1**step)))
        w.mul_(mask_f)
        if tick is not None:
            tick()
    if rank(w) < best_rank:
        best_w, best_it = w, iterations
    return _finish(stats, start, best_w, best_it, iterations, error_start)


def optimise_cg(stats: LayerStatistics, start: torch.Tensor, mask_aug: torch.Tensor, *, iterations: int,
                damping: float, tol: float = 1e-4, tick: Callable[[], None] | None = None) -> FitResult:
    """Preconditioned conjugate gradients on the masked quadratic, one problem per output row, from ``start``.

    Minimises ``tr(W G W^T) - 2 tr(W C) + lam * sum_j d_j ||W[:, j] - start[:, j]||^2`` over the kept entries,
    with ``G`` and ``C`` the (fit-row) statistics normalised per row, ``d = diag(G)`` (bias column: 1) and
    ``lam = damping``; Jacobi-preconditioned (``d``). Rows stop once their residual norm falls below ``tol`` times
    its start. With a held-out share, the best iterate is picked on the held-out rows (checked every step);
    otherwise CG decreases the objective monotonically and the last iterate is kept. Never worse than ``start``
    by the exact float64 error over all rows.
    """
    error_start = stats.error(start)
    if iterations == 0 or stats.rows == 0:
        return _finish(stats, start, start, 0, 0, error_start)
    held_out, gram_fit, cross_fit, gram_sel, cross_sel = _selection(stats)
    mask_f = mask_aug.to(start.dtype)
    diag = torch.diagonal(gram_fit, dim1=1, dim2=2).clamp_min(0)  # [g, w]
    if stats.bias:
        diag = diag.clone()
        diag[:, -1] = 1.0
    scale = diag.mean(dim=1, keepdim=True).clamp_min(1e-30)  # [g, 1]
    diag = torch.where(diag > 0, diag, scale * 1e-6)  # dead inputs: a tiny positive curvature
    ridge = (damping * diag).unsqueeze(1)  # [g, 1, w]
    precond = (1.0 / (diag * (1.0 + damping))).unsqueeze(1) * mask_f  # [g, o, w], zero off the mask

    def hess(p: torch.Tensor) -> torch.Tensor:
        return (p @ gram_fit + ridge * p) * mask_f

    w = start.clone()
    r = (cross_fit - w @ gram_fit) * mask_f  # minus half the gradient (the ridge term is 0 at the start)
    z = r * precond
    p = z.clone()
    rz = (r * z).sum(dim=2, keepdim=True)  # [g, o, 1]
    r0 = r.square().sum(dim=2, keepdim=True).sqrt()
    active = r0 > 0

    def rank(v: torch.Tensor) -> float:
        return float(((v @ gram_sel - 2.0 * cross_sel) * v).sum())

    best_w, best_rank, best_it = w.clone(), rank(w) if held_out else math.inf, 0
    steps = 0
    for step in range(1, iterations + 1):
        steps = step
        hp = hess(p)
        php = (p * hp).sum(dim=2, keepdim=True)
        alpha = torch.where(active & (php > 0), rz / php.clamp_min(1e-30), torch.zeros_like(php))
        w.add_(alpha * p)
        r.sub_(alpha * hp)
        z = r * precond
        rz_new = (r * z).sum(dim=2, keepdim=True)
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(1e-30), torch.zeros_like(rz))
        p = z + beta * p
        rz = rz_new
        active = active & (r.square().sum(dim=2, keepdim=True).sqrt() > tol * r0)
        if held_out:
            current = rank(w)
            if current < best_rank:
                best_w, best_rank, best_it = w.clone(), current, step
        if tick is not None:
            tick()
        if not bool(active.any()):
            break
    if not held_out:
        best_w, best_it = w, steps
    return _finish(stats, start, best_w * mask_f, best_it, steps, error_start)


def _augment(weight: torch.Tensor, bias: torch.Tensor | None, stats: LayerStatistics) -> torch.Tensor:
    natural = weight.reshape(stats.groups, stats.out, stats.k)
    if bias is None:
        return natural.contiguous()
    return torch.cat([natural, bias.reshape(stats.groups, stats.out, 1)], dim=2).contiguous()


def fit_layer(weight: torch.Tensor, mask: torch.Tensor, stats: LayerStatistics, config: AdaPruneConfig, *,
              bias: torch.Tensor | None = None, batch_rows: int | None = None, seed: int = 0,
              tick: Callable[[], None] | None = None) -> FitResult:
    """Fit one layer's kept weights (and bias) to its calibration targets with the mask fixed.

    The start is ``weight * mask``, with absorb-mean when ``config.absorb_mean`` (each group of ``m``
    shares its pruned sum among its kept weights); then ``config.optimizer`` (``"cg"``: conjugate gradients,
    ``"adam"``: Adam) runs ``config.iterations`` steps on the exact objective of ``stats``, and the best iterate
    is returned, never worse than the start.

    This is AdaPrune's per-layer step on its own, for callers that record their own statistics (e.g. one-shot
    pruning of language models, one decoder block at a time): for a Linear ``y = x W^T + b`` and the layer's own
    dense output as the target, fold ``stats.add(x, torch.nn.functional.linear(x, W, b))`` over the calibration
    rows, choose the mask, and call this.

    Args:
        weight: dense weight, ``[out, in]`` for a Linear (a conv: its weight, with ``stats.groups`` groups).
        mask: boolean mask of the weight's shape (kept = True); never changed.
        stats: the layer's :class:`~nmsparse.adaprune.LayerStatistics` (``bias=True`` iff ``bias`` is given).
        config: settings used: ``optimizer``, ``iterations``, ``damping``, ``lr``, ``bias_lr``, ``absorb_mean``
            and the pattern's ``m`` (for absorb-mean).
        bias: the dense bias (``[out]``), fitted too; ``None`` for a layer without one.
        batch_rows: Adam only: stored rows per mini-batch step (``None``: exact full-batch steps).
        seed: Adam mini-batch order.
        tick: called once per step (progress bars).

    Returns:
        A :class:`FitResult`: ``.weight`` (``[out, in]``, zero where masked), ``.bias``, ``.error_before`` and
        ``.error_after`` (exact MSE per output value over every row), ``.best_iteration``, ``.iterations``.

    Raises:
        ShapeError: weight, mask, bias and statistics disagree.

    Example:
        >>> import torch
        >>> from nmsparse import find_mask
        >>> from nmsparse.adaprune import AdaPruneConfig, LayerStatistics, fit_layer
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> layer = torch.nn.Linear(16, 8)
        >>> x = torch.randn(256, 16)
        >>> stats = LayerStatistics(16, 8, bias=True)
        >>> stats.add(x, layer(x).detach())
        >>> mask = find_mask(layer.weight.detach(), "2:4")
        >>> fit = fit_layer(layer.weight.detach(), mask, stats, AdaPruneConfig(pattern="2:4"),
        ...                 bias=layer.bias.detach())
        >>> fit.error_after < fit.error_before, bool((fit.weight[~mask] == 0).all())
        (True, True)
    """
    if tuple(mask.shape) != tuple(weight.shape):
        raise ShapeError(f"fit_layer: mask shape {tuple(mask.shape)} differs from weight shape "
                         f"{tuple(weight.shape)}")
    if weight.numel() != stats.groups * stats.out * stats.k:
        raise ShapeError(f"fit_layer: weight {tuple(weight.shape)} does not match statistics of "
                         f"{stats.groups} group(s) x {stats.out} outputs x {stats.k} inputs")
    if (bias is not None) != stats.bias:
        raise ShapeError("fit_layer: pass bias exactly when the statistics were built with bias=True "
                         f"(statistics: bias={stats.bias}, bias given: {bias is not None})")
    if bias is not None and bias.numel() != stats.groups * stats.out:
        raise ShapeError(f"fit_layer: bias has {bias.numel()} values for {stats.groups * stats.out} outputs")
    weight = weight.detach().float()
    bias = bias.detach().float() if bias is not None else None
    mask = mask.to(device=weight.device, dtype=torch.bool)
    start = absorb_mean(weight, mask, config.nm_pattern.m) if config.absorb_mean else weight * mask
    ones = torch.ones_like(bias) if bias is not None else None
    mask_aug = _augment(mask.to(weight.dtype), ones, stats)
    start_aug = _augment(start, bias, stats)
    if config.optimizer == "cg":
        return optimise_cg(stats, start_aug, mask_aug, iterations=config.iterations, damping=config.damping,
                           tick=tick)
    return optimise_adam(stats, start_aug, mask_aug, iterations=config.iterations, batch_rows=batch_rows,
                         lr=config.lr, bias_lr=config.bias_lr, seed=seed, tick=tick)
