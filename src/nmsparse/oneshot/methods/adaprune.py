"""``algorithm="adaprune"`` (Hubara et al., NeurIPS 2021): mask, then fit the kept weights to a target output.

Per layer, in execution order: its input ``X`` and target ``Y`` (by default the dense model's output of the layer,
else the layer's own dense output) are folded into exact float64 ``G = [X 1]^T [X 1]``, ``C = [X 1]^T Y`` and
``sum(Y^2)`` (:class:`LayerStatistics`); the mask keeps the largest ``|w|`` (or ``|w| * ||x||``), with *absorb
mean*; then the exact calibration MSE is minimised over the kept weights and bias, mask fixed, by conjugate
gradients (default) or the paper's Adam (:func:`fit_layer`). Targets from the *dense model* with inputs from the
pruned one (``target="model"``, ``sequential=True``) let each layer correct the layers before it: MiniLM 4:8-T,
0.884 mean cosine to the dense embeddings on held-out sentences, against 0.863 with each layer's own dense output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ...config import ConfigBase, Interval, Options, config_field
from ...errors import InputError, ShapeError
from ...layout import from_matrix, to_matrix
from ..layer import masked_cg
from . import Layer, LayerSolution, register_method

__all__ = ["AdaPruneOptions", "LayerStatistics", "FitResult", "fit_layer", "absorb_mean"]


@dataclass(frozen=True, kw_only=True)
class AdaPruneOptions(ConfigBase):
    """Settings of AdaPrune's per-layer step (defaults: those of :func:`nmsparse.adaprune_`)."""

    scores: Literal["magnitude", "activation"] = config_field(
        "magnitude",
        help="mask importance: |w|, or |w| * ||x|| of the input column on the calibration data",
        group="fit",
    )
    optimizer: Literal["cg", "adam"] = config_field(
        "cg",
        help="per-layer fit with the mask fixed: cg (conjugate gradients on the exact quadratic) or adam (the paper)",
        group="fit",
    )
    iterations: int = config_field(
        50,
        help="steps per layer: CG iterations (stops early once converged) or Adam steps (the paper: 1000); "
        "0: masks with absorb-mean only",
        metavar="N",
        group="fit",
    )
    damping: float = config_field(
        0.1,
        help="cg: ridge pull towards the masked start, relative to each input's power (regularises the fit "
        "to a small calibration set)",
        metavar="X",
        group="fit",
    )
    batch_size: int | None = config_field(
        None,
        help="adam: calibration samples per step (the paper: 50); none: exact full-batch steps",
        metavar="N",
        group="fit",
    )
    lr: float = config_field(1e-3, help="adam: learning rate of the weights", metavar="X", group="fit")
    bias_lr: float = config_field(1e-2, help="adam: learning rate of the bias", metavar="X", group="fit")
    absorb_mean: bool = config_field(
        True, help="share each group's pruned sum among its kept weights before fitting", group="fit"
    )
    validation: float = config_field(
        0.0, help="share of calibration rows held out to pick the best iterate (0: all rows)", metavar="X", group="fit"
    )
    target: Literal["model", "layer"] = config_field(
        "model",
        help="sequential target: the dense model's output of the layer (keeps a dense copy of the "
        "block) or the layer's own dense output on its pruned-path input",
        group="recording",
    )
    seed: int = config_field(0, help="seed of row subsets and mini-batch order", metavar="N", group="recording")

    _constraints = {
        "scores": [Options({"magnitude", "activation"})],
        "optimizer": [Options({"cg", "adam"})],
        "iterations": [Interval(int, 0, None, closed="left")],
        "damping": [Interval(float, 0, None, closed="left")],
        "batch_size": [None, Interval(int, 1, None, closed="left")],
        "lr": [Interval(float, 0, None, closed="left")],
        "bias_lr": [Interval(float, 0, None, closed="left")],
        "absorb_mean": [bool],
        "validation": [Interval(float, 0, 1, closed="left")],
        "target": [Options({"model", "layer"})],
        "seed": [Interval(int, 0, None, closed="left")],
    }

    @property
    def stores_rows(self) -> bool:
        """Whether rows are stored for Adam mini-batch steps."""
        return self.optimizer == "adam" and self.batch_size is not None and self.iterations > 0


def _fold(gram: torch.Tensor, cross: torch.Tensor, x_rows: torch.Tensor, y_rows: torch.Tensor) -> None:
    """``gram += X^T X`` and ``cross += X^T Y`` per group, of ``[R, g, w]`` and ``[R, g, o]`` rows."""
    xt, yt = x_rows.transpose(0, 1), y_rows.transpose(0, 1)  # [g, R, w], [g, R, o]
    gram += (xt.transpose(1, 2) @ xt).double()
    cross += (xt.transpose(1, 2) @ yt).double()


class LayerStatistics:
    """Running ``G = sum [x 1]^T [x 1]``, ``C = sum [x 1]^T y``, ``sum y^2`` and the row count, per group, in
    float64; optionally a held-out share of rows and a seeded random subset of rows for mini-batch steps.

    Args:
        in_features, out_features: inputs ``K`` (a conv: ``in/groups * kh * kw``) and outputs per group.
        bias: whether the layer has a bias (adds the column of ones).
        groups: independent row maps (grouped convs); ``1`` for a Linear. device: where the statistics live.
        capacity, keep_fraction: rows to store for mini-batch steps (``0``: none) and the share of each batch's
            rows stored (a seeded random subset when below 1).
        validation: share of rows held out (also in the totals; never stored). seed: of the row subsets.
        name: layer name for messages.

    Example:
        >>> import torch
        >>> from nmsparse.oneshot.methods.adaprune import LayerStatistics
        >>> x = torch.randn(100, 8); y = x @ torch.randn(8, 4)
        >>> stats = LayerStatistics(8, 4, bias=False)
        >>> stats.add(x, y)
        >>> stats.rows, tuple(stats.gram.shape)
        (100, (1, 8, 8))
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool,
        groups: int = 1,
        device: torch.device | str | None = None,
        capacity: int = 0,
        keep_fraction: float = 1.0,
        validation: float = 0.0,
        seed: int = 0,
        name: str = "layer",
    ) -> None:
        self.name, self.validation, self.keep_fraction, self.seed = name, validation, keep_fraction, seed
        self.k, self.out, self.groups, self.bias = int(in_features), int(out_features), int(groups), bool(bias)
        g, w, o = self.groups, self.width, self.out
        self.gram = torch.zeros(g, w, w, dtype=torch.float64, device=device)
        self.cross = torch.zeros(g, w, o, dtype=torch.float64, device=device)
        self.yy = torch.zeros((), dtype=torch.float64, device=device)
        # held-out rows (a seeded random share ``validation``), also in the totals above
        self.gram_val = torch.zeros_like(self.gram) if validation > 0 else None
        self.cross_val = torch.zeros_like(self.cross) if validation > 0 else None
        self.rows = self.rows_val = self._chunk = self._filled = 0
        # stored rows for mini-batch steps, preallocated so they never exceed their share of the memory budget
        self._x = torch.empty(capacity, g, w, dtype=torch.float32, device=device) if capacity > 0 else None
        self._y = torch.empty(capacity, g, o, dtype=torch.float32, device=device) if capacity > 0 else None

    @property
    def width(self) -> int:
        """Columns of the augmented input ``[X 1]``."""
        return self.k + int(self.bias)

    def add(self, x_rows: torch.Tensor, y_rows: torch.Tensor) -> None:
        """Fold rows in: ``x_rows`` ``[R, K]`` or ``[R, groups, K]``, ``y_rows`` ``[R, out]`` or
        ``[R, groups, out]`` (float32 or float64)."""
        if self.groups == 1:
            x_rows, y_rows = (r.unsqueeze(1) if r.dim() == 2 else r for r in (x_rows, y_rows))
        if x_rows.shape[0] != y_rows.shape[0]:
            raise InputError(
                f"adaprune_: layer {self.name!r} produced {y_rows.shape[0]} output rows for "
                f"{x_rows.shape[0]} input rows; the model's forward is not deterministic in shape"
            )
        if tuple(x_rows.shape[1:]) != (self.groups, self.k) or tuple(y_rows.shape[1:]) != (self.groups, self.out):
            raise ShapeError(
                f"LayerStatistics.add: expected rows [R, {self.groups}, {self.k}] and [R, {self.groups}, "
                f"{self.out}], got {list(x_rows.shape)} and {list(y_rows.shape)}"
            )
        if x_rows.shape[0] == 0:
            return
        if self.bias:
            x_rows = torch.cat([x_rows, x_rows.new_ones(x_rows.shape[0], x_rows.shape[1], 1)], dim=2)
        _fold(self.gram, self.cross, x_rows, y_rows)
        self.yy += y_rows.double().square().sum()
        self.rows += int(x_rows.shape[0])
        if self.gram_val is not None and self.cross_val is not None:
            generator = torch.Generator().manual_seed(self.seed * 1_000_033 + self._chunk)
            held = (torch.rand(x_rows.shape[0], generator=generator) < self.validation).to(x_rows.device)
            _fold(self.gram_val, self.cross_val, x_rows[held], y_rows[held])
            self.rows_val += int(held.sum())
            x_rows, y_rows = x_rows[~held], y_rows[~held]  # mini-batch steps never see held-out rows
        if self._x is not None and self._y is not None:
            count = int(x_rows.shape[0])
            keep = min(int(count * min(self.keep_fraction, 1.0)), self._x.shape[0] - self._filled)
            if keep < count:
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self._chunk)
                index = torch.randperm(count, generator=generator)[:keep].to(x_rows.device)
                x_rows, y_rows = x_rows[index], y_rows[index]
            self._x[self._filled : self._filled + keep] = x_rows
            self._y[self._filled : self._filled + keep] = y_rows
            self._filled += keep
        self._chunk += 1

    def stored(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The stored ``[R, g, w]`` input rows and ``[R, g, o]`` target rows (``None`` when none)."""
        if self._x is None or self._y is None or self._filled == 0:
            return None
        return self._x[: self._filled], self._y[: self._filled]

    def error(self, w_aug: torch.Tensor) -> float:
        """Exact MSE per output value of augmented weights ``[groups, out, width]`` over every row."""
        w = w_aug.double()
        total = ((w @ self.gram) * w).sum() - 2.0 * (w * self.cross.transpose(1, 2)).sum() + self.yy
        return max(float(total), 0.0) / (max(self.rows, 1) * self.groups * self.out)

    @property
    def target_power(self) -> float:
        """Mean squared target value (divide an error by it for a relative error)."""
        return float(self.yy) / max(self.rows * self.groups * self.out, 1)


#: With mini-batches or a held-out share, the selection error is evaluated every this many steps and at the last.
EVAL_EVERY = 10
#: CG stops a row once its residual norm falls below this share of its start.
_CG_TOL = 1e-4


def absorb_mean(weight: torch.Tensor, mask: torch.Tensor, m: int) -> torch.Tensor:
    """``weight * mask`` with each group's pruned sum shared equally among its kept weights."""
    matrix = to_matrix(weight)  # a conv's is a copy: made once
    w, k = matrix.reshape(-1, m), to_matrix(mask).reshape(-1, m).to(matrix.dtype)
    pruned_sum = (w * (1 - k)).sum(dim=1, keepdim=True)
    shifted = (w + pruned_sum / k.sum(dim=1, keepdim=True).clamp_min(1)) * k
    return from_matrix(shifted.reshape(matrix.shape), weight.shape)


@dataclass
class FitResult:
    """Outcome of fitting one layer: ``w_aug`` (fitted ``[groups, out, K (+1 for the bias)]``, float32, zero where
    masked), the exact MSE of the masked start (``error_before``) and of ``w_aug`` (``error_after``, never above
    it), the step kept (``best_iteration``, 0 = the start) and the steps run."""

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
    """``(held_out, gram_fit, cross_fit, gram_sel, cross_sel)``, per row, float32, ``cross`` as ``[g, o, w]``: with
    a held-out share, gradients use the other rows and iterates are ranked on the held-out ones; otherwise both
    are every row."""

    def per_row(gram: torch.Tensor, cross: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (gram / rows).float(), (cross / rows).transpose(1, 2).float().contiguous()

    if stats.gram_val is not None and stats.cross_val is not None and 0 < stats.rows_val < stats.rows:
        fit = per_row(stats.gram - stats.gram_val, stats.cross - stats.cross_val, stats.rows - stats.rows_val)
        return True, *fit, *per_row(stats.gram_val, stats.cross_val, stats.rows_val)
    fit = per_row(stats.gram, stats.cross, stats.rows)
    return False, *fit, *fit


def _optimise(
    stats: LayerStatistics, start: torch.Tensor, mask_aug: torch.Tensor, config: Any, batch_rows: int | None, seed: int
) -> FitResult:
    """``config.optimizer`` on the masked augmented weights ``[g, o, w]`` from ``start``, keeping the best iterate.

    ``"cg"``: Jacobi-preconditioned conjugate gradients (``d = diag(G)``, bias column 1), one problem per output
    row, on ``tr(W G W^T) - 2 tr(W C) + damping * sum_j d_j ||W[:, j] - start[:, j]||^2`` over the kept entries;
    rows stop once their residual norm falls below ``_CG_TOL`` of its start. CG decreases the objective monotonically,
    so the last iterate is kept, unless a held-out share picks one (checked every step).

    ``"adam"``: full batch (``batch_rows=None``), the exact gradient ``2 (W G - C^T) / (rows * outputs)``;
    mini-batch, gradients on ``batch_rows`` stored rows. Iterates are ranked by their exact error on every row
    (full batch: every step, for free; mini-batch: every ``EVAL_EVERY`` steps) or on the held-out rows (every
    ``EVAL_EVERY`` steps; gradients then use the other rows).

    ``G`` and ``C`` are the fit rows' statistics per row. The result is never worse than ``start`` by the exact
    float64 error over all rows.
    """
    error_start = stats.error(start)
    if config.iterations == 0 or stats.rows == 0:
        return _finish(stats, start, start, 0, 0, error_start)
    held_out, gram_fit, cross_fit, gram_sel, cross_sel = _selection(stats)
    mask_f = mask_aug.to(start.dtype)

    def rank(w: torch.Tensor, product: torch.Tensor | None = None) -> float:
        # selection error * outputs - yy / rows: enough to rank iterates
        product = w @ gram_sel if product is None else product
        return float(((product - 2.0 * cross_sel) * w).sum())

    w = start.clone()
    if config.optimizer == "cg":
        diag = torch.diagonal(gram_fit, dim1=1, dim2=2).clamp_min(0)  # [g, w]
        if stats.bias:
            diag[:, -1] = 1.0
        scale = diag.mean(dim=1, keepdim=True).clamp_min(1e-30)  # [g, 1]
        diag = torch.where(diag > 0, diag, scale * 1e-6)  # dead inputs: a tiny positive curvature
        ridge = (config.damping * diag).unsqueeze(1)  # [g, 1, w]
        precond = (1.0 / (diag * (1.0 + config.damping))).unsqueeze(1) * mask_f  # [g, o, w], zero off the mask
        best_w, best_rank, best_it = w.clone(), rank(w) if held_out else math.inf, 0

        def keep_best(step: int, current: torch.Tensor) -> None:
            nonlocal best_w, best_rank, best_it
            if (value := rank(current)) < best_rank:
                best_w, best_rank, best_it = current.clone(), value, step

        steps = masked_cg(
            w,
            mask_f,
            gram_fit,
            cross_fit,
            ridge,
            precond,
            iterations=config.iterations,
            tol=_CG_TOL,
            on_step=keep_best if held_out else None,
        )
        if not held_out:
            best_w, best_it = w, steps
        return _finish(stats, start, best_w * mask_f, best_it, steps, error_start)
    outputs = stats.groups * stats.out
    stored = stats.stored() if batch_rows is not None else None
    every = 1 if stored is None and not held_out else EVAL_EVERY
    lr_cols = torch.full((stats.width,), config.lr, dtype=start.dtype, device=start.device)
    if stats.bias:
        lr_cols[-1] = config.bias_lr
    generator = torch.Generator().manual_seed(seed)
    perm: torch.Tensor | None = None
    cursor = 0
    exp_avg, exp_sq = torch.zeros_like(w), torch.zeros_like(w)
    beta1, beta2, eps = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults
    best_w, best_rank, best_it = w.clone(), math.inf, 0
    for step in range(1, config.iterations + 1):
        product = w @ gram_fit if stored is None else None
        if (step - 1) % every == 0 and (current := rank(w, None if held_out else product)) < best_rank:
            best_w, best_rank, best_it = w.clone(), current, step - 1
        if product is not None:
            grad = (product - cross_fit) * (2.0 / outputs)
        else:
            assert stored is not None and batch_rows is not None
            x_all, y_all = stored
            if perm is None or cursor + batch_rows > perm.numel():
                perm, cursor = torch.randperm(x_all.shape[0], generator=generator).to(x_all.device), 0
            index = perm[cursor : cursor + batch_rows]
            cursor += batch_rows
            xb, yb = x_all[index].transpose(0, 1), y_all[index].transpose(0, 1)  # [g, r, w], [g, r, o]
            resid = xb @ w.transpose(1, 2) - yb  # [g, r, o]
            grad = (resid.transpose(1, 2) @ xb) * (2.0 / (outputs * xb.shape[1]))
        grad.mul_(mask_f)
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        exp_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (exp_sq / (1 - beta2**step)).sqrt_().add_(eps)
        w.sub_(exp_avg / denom * (lr_cols / (1 - beta1**step)))
        w.mul_(mask_f)
    if rank(w) < best_rank:
        best_w, best_it = w, config.iterations
    return _finish(stats, start, best_w, best_it, config.iterations, error_start)


def _finish(
    stats: LayerStatistics, start: torch.Tensor, best_w: torch.Tensor, best_it: int, iterations: int, error_start: float
) -> FitResult:
    error_best = stats.error(best_w)
    if error_best > error_start:  # float32 ranking noise near the start, or a held-out pick: keep the start
        best_w, error_best, best_it = start.clone(), error_start, 0
    return FitResult(best_w, error_start, error_best, best_it, iterations, in_features=stats.k, has_bias=stats.bias)


def _augment(weight: torch.Tensor, bias: torch.Tensor | None, stats: LayerStatistics) -> torch.Tensor:
    natural = weight.reshape(stats.groups, stats.out, stats.k)
    if bias is None:
        return natural.contiguous()
    return torch.cat([natural, bias.reshape(stats.groups, stats.out, 1)], dim=2).contiguous()


def fit_layer(
    weight: torch.Tensor,
    mask: torch.Tensor,
    stats: LayerStatistics,
    config: Any,
    *,
    bias: torch.Tensor | None = None,
    batch_rows: int | None = None,
    seed: int = 0,
    m: int | None = None,
) -> FitResult:
    """Fit one layer's kept weights (and bias) to its calibration targets with the mask fixed.

    From ``weight * mask`` (with absorb-mean when ``config.absorb_mean``), ``config.optimizer`` (``"cg"`` or
    ``"adam"``) runs ``config.iterations`` steps on the exact objective of ``stats``; the best iterate is returned,
    never worse than the start.

    Args:
        weight: dense weight, ``[out, in]`` for a Linear (a conv: its weight, with ``stats.groups`` groups).
        mask: boolean mask of the weight's shape (kept = True); never changed.
        stats: the layer's :class:`~nmsparse.adaprune.LayerStatistics` (``bias=True`` iff ``bias`` is given).
        config: an :class:`AdaPruneOptions` (``optimizer``, ``iterations``, ``damping``, ``lr``, ``bias_lr``,
            ``absorb_mean``), or an :class:`~nmsparse.adaprune.AdaPruneConfig`, whose pattern gives ``m``.
        bias: the dense bias (``[out]``), fitted too; ``None`` for a layer without one.
        batch_rows, seed: Adam only: stored rows per mini-batch step (``None``: exact full-batch steps), and
            the seed of the mini-batch order.
        m: group size for absorb-mean (default: ``config.nm_pattern.m``).

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
        raise ShapeError(f"fit_layer: mask shape {tuple(mask.shape)} differs from weight shape {tuple(weight.shape)}")
    if weight.numel() != stats.groups * stats.out * stats.k:
        raise ShapeError(
            f"fit_layer: weight {tuple(weight.shape)} does not match statistics of "
            f"{stats.groups} group(s) x {stats.out} outputs x {stats.k} inputs"
        )
    if (bias is not None) != stats.bias:
        raise ShapeError(
            "fit_layer: pass bias exactly when the statistics were built with bias=True "
            f"(statistics: bias={stats.bias}, bias given: {bias is not None})"
        )
    if bias is not None and bias.numel() != stats.groups * stats.out:
        raise ShapeError(f"fit_layer: bias has {bias.numel()} values for {stats.groups * stats.out} outputs")
    weight = weight.detach().float()
    bias = bias.detach().float() if bias is not None else None
    mask = mask.to(device=weight.device, dtype=torch.bool)
    group = m if m is not None else config.nm_pattern.m
    start = absorb_mean(weight, mask, group) if config.absorb_mean else weight * mask
    mask_aug = _augment(mask.to(weight.dtype), None if bias is None else torch.ones_like(bias), stats)
    return _optimise(stats, _augment(start, bias, stats), mask_aug, config, batch_rows, seed)


def make_statistics(view: Any, room: int, options: AdaPruneOptions, seed: int, device: torch.device) -> LayerStatistics:
    """Statistics of one layer (``view``: its ``k``, ``out``, ``groups``, ``bias``, ``rows`` and ``name``); with Adam
    mini-batches, as many of its ``rows`` stored as fit in ``room`` bytes."""
    capacity, fraction, rows = 0, 1.0, view.rows
    if options.stores_rows:
        fraction = min(1.0, max(room, 0) / max(rows * 4 * view.groups * (view.k + int(view.bias) + view.out), 1))
        capacity = int(rows * fraction)
    return LayerStatistics(
        view.k,
        view.out,
        bias=view.bias,
        groups=view.groups,
        device=device,
        capacity=capacity,
        keep_fraction=fraction,
        validation=options.validation,
        seed=seed,
        name=view.name,
    )


def statistics_bytes(k: int, out: int, groups: int, bias: bool) -> int:
    """Bytes of one layer's float64 statistics."""
    width = k + int(bias)
    return 8 * groups * (width * width + width * out + 1)


def solve(layer: Layer) -> LayerSolution:
    options: AdaPruneOptions = layer.options
    stats: LayerStatistics = layer.stats
    module_weight = layer.module.weight
    assert isinstance(module_weight, torch.Tensor)
    shape = tuple(module_weight.shape) if module_weight.dim() == 4 else (-1, stats.k)
    weight = torch.cat(layer.weights).float().reshape(shape)  # a conv as stored: absorb-mean groups by layout
    natural = weight.reshape(stats.groups, stats.out, stats.k)
    score = natural.abs()
    if options.scores == "activation":
        norms = torch.diagonal(stats.gram, dim1=1, dim2=2)[:, : stats.k].clamp_min(0).sqrt().float()  # [g, k]
        score = score * norms.unsqueeze(1)
    mask = torch.cat(layer.masks(list(score))).reshape(shape)
    error_dense = stats.error(_augment(natural, layer.bias, stats))
    batch_rows, stored = None, stats.stored()
    if options.optimizer == "adam" and options.batch_size is not None and stored is not None:
        kept = stored[0].shape[0]
        batch_rows = max(1, min(kept, round(options.batch_size * kept / max(layer.samples, 1))))
    seed = options.seed * 104729 + layer.index
    fit = fit_layer(weight, mask, stats, options, bias=layer.bias, batch_rows=batch_rows, seed=seed, m=layer.pattern.m)
    masks = mask.reshape(stats.groups, stats.out, stats.k)
    info = {
        "error_dense": error_dense,
        "error_before": fit.error_before,
        "error_after": fit.error_after,
        "best_iteration": fit.best_iteration,
        "iterations": fit.iterations,
        "target_power": stats.target_power,
        "stored_rows": 0 if stored is None else int(stored[0].shape[0]),
        "relative_error": math.sqrt(fit.error_after / stats.target_power) if stats.target_power > 0 else 0.0,
    }
    return LayerSolution(list((fit.w_aug[:, :, : stats.k] * masks).unbind(0)), list(masks.unbind(0)), fit.bias, info)


register_method(
    "adaprune",
    solve,
    options=AdaPruneOptions,
    statistics="targets",
    layerwise=True,
    solve_bytes=lambda rows, cols, itemsize, options: 4 * (cols * cols + 8 * rows * cols),
    dense_targets=lambda options: options.target == "model",
    make_statistics=make_statistics,
    statistics_bytes=statistics_bytes,
    permute_scores="wanda",
)
