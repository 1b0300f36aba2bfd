"""The verb: :func:`adaprune_` records, masks and fits every selected layer in execution order."""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from .._calibration import batch_samples, materialise, model_device, to_device, token_mask
from .._logging import logger, progress_enabled
from ..errors import ConfigError
from ..nn.batchnorm import recalibrate_batchnorm_
from ..pattern import NMPattern
from ..prune.static import _nm_mask, apply_mask_, layer_mask, remove_mask_
from .config import AdaPruneConfig
from .fitting import FitResult, fit_layer, survivor_scores
from .planning import Budget, full_need, keep_fraction, plan_units, select
from .recording import LayerView, Recorder, TargetCache, collect, probe, run_until_recorded
from .report import AdaPruneLayerReport, AdaPruneReport
from .statistics import LayerStatistics

__all__ = ["adaprune_"]


def _fold_existing_masks(module: nn.Module) -> None:
    """Make ``module.weight`` a plain parameter: bake in an nmsparse mask or a ``torch.nn.utils.prune`` mask.

    The weight becomes what the layer computes with, ``original * mask`` (also for a straight-through mask:
    the pruned weights are dead from here on); the new mask is then chosen preferring the surviving (non-zero)
    weights.
    """
    if _nm_mask(module) is not None:
        remove_mask_(module, leave_masked=True)
    if hasattr(module, "weight_orig") and hasattr(module, "weight_mask"):
        torch_prune.remove(module, "weight")


class _Bars:
    """An outer bar over layers and an inner bar over one layer's Adam steps (tqdm, only when enabled)."""

    def __init__(self, enabled: bool, total: int, desc: str) -> None:
        self.enabled = enabled
        self.outer: Any = None
        self.inner: Any = None
        if enabled:
            import sys

            from tqdm.auto import tqdm

            self._tqdm = tqdm
            self._file = sys.stderr
            self.outer = tqdm(total=total, desc=desc, unit="layer", file=sys.stderr, dynamic_ncols=True)

    def start_layer(self, name: str, iterations: int) -> Callable[[], None] | None:
        if not self.enabled:
            return None
        self.outer.set_postfix_str(name)
        self.inner = self._tqdm(total=iterations, desc=f"  {name}", unit="step", leave=False, file=self._file,
                                dynamic_ncols=True)
        return lambda: self.inner.update(1)

    def end_layer(self) -> None:
        if self.enabled:
            self.inner.close()
            self.outer.update(1)

    def close(self) -> None:
        if self.enabled:
            self.outer.close()




def _new_stats(layer: LayerView, device: torch.device, budget: Budget, share: int, seed: int) -> LayerStatistics:
    fraction = keep_fraction(layer, share, budget.store)
    stats = LayerStatistics(layer.k, layer.out, bias=layer.bias, groups=layer.groups, device=device,
                            keep_fraction=fraction, validation=budget.config.validation, seed=seed,
                            name=layer.name)
    if budget.store:
        capacity = sum(stats.kept(rows) for rows in layer.rows)
        stats = LayerStatistics(layer.k, layer.out, bias=layer.bias, groups=layer.groups, device=device,
                                capacity=capacity, keep_fraction=fraction, validation=budget.config.validation,
                                seed=seed, name=layer.name)
    return stats


def adaprune_(model: nn.Module, calibration: Iterable[Any], config: AdaPruneConfig | str, *,
              progress: bool | None = None) -> AdaPruneReport:
    """Prune ``model`` in place with AdaPrune: masks, then layer-wise calibration with the mask fixed.

    Every layer chosen as in :func:`~nmsparse.prune_` (Linear and Conv2d, ``include``/``exclude`` globs,
    ``keep_first_last``, shape fit) is processed in execution order: its input and target output are recorded
    on the calibration data with forward hooks and folded into exact statistics, its mask is chosen
    (``scores``) and applied with absorb-mean, and its kept weights are fitted to the target with the mask
    fixed (conjugate gradients on the exact quadratic, or Adam; the best iterate is kept, so the error never
    ends above the masked start). The layer then carries a static :class:`~nmsparse.NMMask`, so
    :func:`~nmsparse.squash_masks_`, :func:`~nmsparse.get_masks` and state dicts work as after
    :func:`~nmsparse.prune_`. Finally batch-norm statistics are re-estimated on the calibration data
    (:func:`~nmsparse.recalibrate_batchnorm_`).

    Sparse models are converted: weights that are exactly zero (an unstructured-sparse model, a layer pruned
    with ``torch.nn.utils.prune``, or a static nmsparse mask, all baked in first) are never kept in preference to
    surviving ones, so the new n:m or n:m-T mask is chosen among the survivors.

    Args:
        model: the trained model; pruned in place. Its device is used for everything.
        calibration: iterable of batches (a list, a DataLoader, ...), read several times; a one-shot iterator
            is materialised first. Each batch is fed as ``model(**batch)`` for a mapping (e.g. tokenizer
            output), ``model(*batch)`` for a tuple or list, ``model(batch)`` otherwise.
        config: an :class:`~nmsparse.adaprune.AdaPruneConfig`, or just a pattern (``"2:4"``, ``"4:8-T"``) for
            the default settings.
        progress: progress bars (layers, and steps per layer) on stderr; ``None`` = only on a terminal.

    Returns:
        An :class:`~nmsparse.adaprune.AdaPruneReport`: one :class:`~nmsparse.AdaPruneLayerReport` per pruned
        layer in processing order (iterate over the report), and ``skipped``: every Linear/Conv2d left dense
        with the reason.

    Raises:
        PatternError: unparseable pattern.
        ConfigError: bad settings, no layer that can take the pattern, or a memory budget too small for one
            layer's statistics.
        InputError: an empty calibration set, or a batch the model cannot take (the message names it).

    Example:
        >>> import torch, nmsparse
        >>> from nmsparse.adaprune import AdaPruneConfig
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
        >>> data = [torch.randn(64, 16) for _ in range(4)]
        >>> report = nmsparse.adaprune_(model, data, AdaPruneConfig(pattern="2:4"))
        >>> report.pruned, all(r.error_after <= r.error_before for r in report)
        (['0', '2'], True)
        >>> nmsparse.is_nm_sparse(model[0].weight, "2:4")
        True
    """
    began = time.perf_counter()
    if isinstance(config, str):
        config = AdaPruneConfig(pattern=config)
    if not isinstance(config, AdaPruneConfig):
        raise ConfigError(f"adaprune_: config must be an AdaPruneConfig or a pattern string such as '2:4', got "
                          f"{type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"adaprune_: model must be a torch.nn.Module, got {type(model).__name__}")
    layers, skipped = select(model, config)
    batches = materialise(calibration)
    device = model_device(model)
    budget = Budget.of(config, sum(batch_samples(b) for b in batches))

    was_training = {m: m.training for m in model.modules()}
    model.eval()
    reference: nn.Module | None = None
    bars: _Bars | None = None
    try:
        with torch.no_grad():
            units = probe(model, batches, layers, device, config.ignore_padding)
        order = [name for unit in units for name in unit]
        for name in layers:
            if name not in order:
                skipped[name] = "never ran on the calibration data"
        if not order:
            raise ConfigError("adaprune_: none of the selected layers ran on the calibration data; nothing to prune")
        budget.check_fits([layers[name] for name in order])
        plan = plan_units([[layers[n] for n in unit] for unit in units], budget, sequential=config.sequential)
        for name in order:
            _fold_existing_masks(layers[name].module)
        if config.sequential and config.target == "model":
            try:
                reference = copy.deepcopy(model).eval()
            except (RuntimeError, TypeError) as exc:
                raise ConfigError(
                    f"adaprune_: target='model' needs a copy of the dense model, and copy.deepcopy failed "
                    f"({exc}); pass target='layer' (no copy) or sequential=False"
                ) from exc
        bars = _Bars(progress_enabled(progress), len(order), f"adaprune {config.pattern}")
        reports = _process(model, reference, plan, batches, device, budget, bars, defer=not config.sequential)
    finally:
        if bars is not None:
            bars.close()
        for module, training in was_training.items():
            module.train(training)
        del reference
    if config.recalibrate_bn:
        count = recalibrate_batchnorm_(model, batches)
        if count:
            logger.info("adaprune_: re-estimated %d batch-norm layer(s) on the calibration data", count)
    report = AdaPruneReport(config=config, layers=tuple(reports), skipped=skipped,
                            seconds=time.perf_counter() - began)
    if skipped:
        logger.info("adaprune_: %s", report.describe())
    return report


def _process(model: nn.Module, reference: nn.Module | None, plan: list[list[LayerView]], batches: list[Any],
             device: torch.device, budget: Budget, bars: _Bars, *, defer: bool) -> list[AdaPruneLayerReport]:
    """Record, mask and fit every unit of ``plan`` in order.

    ``reference`` given: targets come from it (the dense model; sequential mode). ``defer``: install the
    results only at the end, so that every unit is recorded on the dense model (parallel mode).
    """
    config = budget.config
    cache = (TargetCache(reference, plan, batches, device, limit=budget.targets,
                         ignore_padding=config.ignore_padding) if reference is not None else None)
    ref_modules = dict(reference.named_modules()) if reference is not None else {}
    pending: list[tuple[LayerView, torch.Tensor, torch.Tensor]] = []
    reports: list[AdaPruneLayerReport] = []
    index = 0
    for unit in plan:
        began = time.perf_counter()
        lockstep = cache is not None and not cache.fits(unit)
        if cache is not None and not lockstep:
            cache.ensure(unit)
        # a unit holds several layers only when all of them fit whole; a lone layer shares nothing
        share = budget.work if len(unit) == 1 else max(full_need(layer, budget) for layer in unit)
        stats = {layer.name: _new_stats(layer, device, budget, share, config.seed * 7919 + index + i)
                 for i, layer in enumerate(unit)}
        modules = {layer.name: layer.module for layer in unit}
        ref_rec = (Recorder({layer.name: ref_modules[layer.name] for layer in unit}, inputs=False, outputs=True,
                            calls={}) if lockstep else None)
        with torch.no_grad(), Recorder(modules, inputs=True, outputs=reference is None, calls={}) as rec, \
                (ref_rec if ref_rec is not None else contextlib.nullcontext()):
            for b, raw in enumerate(batches):
                calls = {layer.name: layer.calls[b] for layer in unit}
                if not any(calls.values()):
                    continue
                batch = to_device(raw, device)
                token = token_mask(batch) if config.ignore_padding else None
                rec.reset(calls)
                run_until_recorded(model, batch)
                if ref_rec is not None and reference is not None:
                    ref_rec.reset(calls)
                    run_until_recorded(reference, batch)
                for layer in unit:
                    xs = [x for x, _ in rec.seen[layer.name]]
                    if cache is not None and not lockstep:
                        collect(stats[layer.name], layer, xs, cache.pop(layer, b), token, ys_are_rows=True)
                    else:
                        source = ref_rec if ref_rec is not None else rec
                        collect(stats[layer.name], layer, xs, [y for _, y in source.seen[layer.name]], token)
                rec.reset({})
                if ref_rec is not None:
                    ref_rec.reset({})
        record_seconds = (time.perf_counter() - began) / len(unit)
        for layer in unit:
            tick = bars.start_layer(layer.name, config.iterations)
            began = time.perf_counter()
            layer_stats = stats.pop(layer.name)
            w_aug, mask, fit, error_dense = _fit(layer, layer_stats, index, budget, tick)
            reports.append(_report(layer, layer_stats, fit, error_dense, budget.pattern,
                                   time.perf_counter() - began + record_seconds))
            if defer:
                pending.append((layer, w_aug, mask))
            else:
                _install(layer, w_aug, mask, budget.pattern)
            if cache is not None:
                cache.drop(layer)
            bars.end_layer()
            index += 1
    for layer, w_aug, mask in pending:  # parallel mode: only now, after every layer saw dense inputs
        _install(layer, w_aug, mask, budget.pattern)
    return reports


def _fit(layer: LayerView, stats: LayerStatistics, index: int, budget: Budget,
         tick: Callable[[], None] | None) -> tuple[torch.Tensor, torch.Tensor, FitResult, float]:
    """Mask (scores, survivors first) and fit one layer from its statistics."""
    config = budget.config
    module = layer.module
    weight = cast(torch.Tensor, module.weight).detach().float()
    bias = cast(torch.Tensor, module.bias).detach().float() if layer.bias else None
    dense = layer.natural(weight)
    if bias is not None:
        dense = torch.cat([dense, bias.reshape(layer.groups, layer.out, 1)], dim=2)
    error_dense = stats.error(dense)
    if config.scores == "activation":
        diag = torch.diagonal(stats.gram, dim1=1, dim2=2)[:, : layer.k]  # [g, k] sum of x^2 per column
        norms = diag.clamp_min(0).sqrt().float()
        score = (layer.natural(weight.abs()) * norms.unsqueeze(1)).reshape(weight.shape)
    else:
        score = weight.abs()
    score = survivor_scores(weight, score)
    mask = layer_mask(module, budget.pattern, method=config.method, scores=score, weight=weight)
    rows_per_step = None
    stored = stats.stored()
    if config.optimizer == "adam" and config.batch_size is not None and stored is not None:
        kept = stored[0].shape[0]
        rows_per_step = max(1, min(kept, round(config.batch_size * kept / max(budget.samples, 1))))
    fit = fit_layer(weight, mask, stats, config, bias=bias, batch_rows=rows_per_step,
                    seed=config.seed * 104729 + index, tick=tick)
    return fit.w_aug, mask, fit, error_dense


def _install(layer: LayerView, w_aug: torch.Tensor, mask: torch.Tensor, pattern: NMPattern) -> None:
    """Write the fitted weights into the layer and attach a static NMMask."""
    module = layer.module
    target = cast(torch.Tensor, module.weight)
    weight = w_aug[:, :, : layer.k].reshape(target.shape)
    with torch.no_grad():
        target.copy_(weight.to(target.dtype) * mask.to(target.dtype))
        if layer.bias:
            bias = cast(torch.Tensor, module.bias)
            bias.copy_(w_aug[:, :, layer.k].reshape(bias.shape).to(bias.dtype))
    apply_mask_(module, mask, pattern=pattern)


def _report(layer: LayerView, stats: LayerStatistics, fit: FitResult, error_dense: float, pattern: NMPattern,
            seconds: float) -> AdaPruneLayerReport:
    stored = stats.stored()
    report = AdaPruneLayerReport(
        name=layer.name, kind=layer.kind, shape=tuple(int(d) for d in cast(torch.Tensor, layer.module.weight).shape),
        pattern=str(pattern), rows=stats.rows, stored_rows=0 if stored is None else int(stored[0].shape[0]),
        target_power=stats.target_power, error_dense=error_dense, error_before=fit.error_before,
        error_after=fit.error_after, best_iteration=fit.best_iteration, iterations=fit.iterations,
        seconds=seconds,
    )
    logger.info("adaprune_: %s %s: relative error %.4g -> %.4g (best step %d of %d, %.1fs)", layer.name,
                pattern, report.relative_before, report.relative_after, fit.best_iteration, fit.iterations,
                seconds)
    return report
