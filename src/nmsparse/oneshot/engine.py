"""The one-shot calibration engine behind :func:`prune_oneshot_` (and :func:`nmsparse.adaprune_`).

Layers are selected (:mod:`nmsparse.prune.select`) and the first repeated block's inputs captured once; then each
block runs on its recorded inputs with hooks folding every target layer's inputs (and targets) into the
statistics its layer method registered for (:mod:`nmsparse.oneshot.methods`), the method solves each layer, the
mask is attached (:func:`~nmsparse.prune.static.apply_mask_`), and the pruned block runs again to feed the next
one. A model without repeated blocks is one block, fed the calibration batches. Memory is planned against one
budget in bytes before the model changes.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune

from .._calibration import (
    StopForward,
    batch_samples,
    feed_checked,
    materialise,
    model_device,
    to_device,
    token_mask,
    token_rows,
)
from .._logging import logger
from .._logging import progress as _progress
from ..errors import ConfigError, InputError
from ..nn.batchnorm import recalibrate_batchnorm_
from ..pattern import NMPattern, PatternLike

# nmsparse.prune first: it loads nmsparse.io in the order their mutual imports need
from ..prune.select import _select, is_transposed_layer, require_selected
from ..prune.static import _nm_mask, apply_mask_, layer_mask, remove_mask_
from .config import OneShotConfig, permute_scores_for, solver_for
from .layer import quadratic, reconstruction_error
from .methods import Layer, LayerMethod, get_method
from .report import OneShotLayerReport, OneShotReport

__all__ = ["prune_oneshot_", "find_blocks", "linear_types"]

_MIB = float(1 << 20)
_WHERE = "prune_oneshot_"
_OUTSIDE = (
    "outside the model's repeated blocks (embeddings and head stay dense; prune_outside_blocks=True prunes them too)"
)


def linear_types() -> tuple[type[nn.Module], ...]:
    """``nn.Linear`` and, when transformers is loaded, its ``Conv1D`` (never imports transformers)."""
    conv1d = getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)
    return (nn.Linear,) if not isinstance(conv1d, type) else (nn.Linear, conv1d)


def find_blocks(model: nn.Module, names: Iterable[str]) -> list[tuple[str, nn.Module]]:
    """The repeated blocks of ``model``: children of the ``nn.ModuleList`` that holds most of ``names``.

    GPT-2's ``transformer.h``, LLaMA's ``model.layers`` and BERT's ``encoder.layer`` are found this way. Returns
    ``[]`` when no module list holds any of ``names`` (the whole model is then one block).
    """
    names = list(names)
    best: tuple[int, str, nn.ModuleList] | None = None
    for list_name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module):
            prefix = f"{list_name}." if list_name else ""
            count = sum(1 for n in names if n.startswith(prefix))
            if count and (best is None or count > best[0]):
                best = (count, prefix, module)
    return [] if best is None else [(f"{best[1]}{i}", block) for i, block in enumerate(best[2])]


class _View:
    """A selected layer seen as ``groups`` row maps ``[rows, k] -> [rows, out]`` (a conv on unfolded patches)."""

    def __init__(self, name: str, module: nn.Module) -> None:
        self.name, self.module, self.rows = name, module, 0
        weight = self.weight()
        self.calls: list[tuple[int, ...]] = []  # per region input: which of its tensors each call got (the probe)
        self.conv, self.bias = isinstance(module, nn.Conv2d), getattr(module, "bias", None) is not None
        self.transposed = is_transposed_layer(module)
        self.groups = int(getattr(module, "groups", 1) or 1) if self.conv else 1
        if self.transposed:
            self.k, self.out = int(weight.shape[0]), int(weight.shape[1])
        else:
            self.k, self.out = int(weight[0].numel()), int(weight.shape[0]) // self.groups

    def weight(self) -> torch.Tensor:
        weight = self.module.weight
        assert isinstance(weight, torch.Tensor)
        return weight

    def row_filter(self, x: torch.Tensor, token: torch.Tensor | None) -> torch.Tensor | None:
        """Rows to keep of a ``[B, T, in]`` input whose batch carries an attention mask."""
        return None if self.conv else token_rows(x, token)

    def as_rows(self, t: torch.Tensor, keep: torch.Tensor | None, *, output: bool = False) -> torch.Tensor:
        """A module input (a conv's: unfolded patches) as ``[R, groups, k]`` rows, or its output as ``[R, groups,
        out]`` rows in the same order."""
        conv = self.module
        if isinstance(conv, nn.Conv2d) and not output:
            pad = conv._reversed_padding_repeated_twice
            if any(pad):
                t = F.pad(t, pad, mode="constant" if conv.padding_mode == "zeros" else conv.padding_mode)
            t = F.unfold(t, conv.kernel_size, dilation=conv.dilation, stride=conv.stride)  # [B, C*kh*kw, L]
            t = t.transpose(1, 2)
        elif self.conv:
            t = t.permute(0, 2, 3, 1)
        rows = t.reshape(-1, self.groups, self.out if output else self.k)
        return (rows if keep is None else rows[keep]).float()

    def matrices(self, tensor: torch.Tensor, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
        """A tensor of the weight's stored shape as one ``[out, k]`` matrix per group (``Conv1D`` transposed)."""
        if self.transposed:
            return [tensor.T.to(dtype or tensor.dtype)]
        return [t.reshape(self.out, self.k).to(dtype or t.dtype) for t in tensor.chunk(self.groups)]

    def stored(self, matrices: list[torch.Tensor]) -> torch.Tensor:
        """Per-group matrices back to the weight's stored shape."""
        return matrices[0].T if self.transposed else torch.cat(matrices).reshape(self.weight().shape)

    def columns(self) -> torch.Tensor | None:
        """Permutation from unfold order ``(in, kh, kw)`` to the pattern's column order ``(kh, kw, in)``."""
        if not self.conv:
            return None
        cin, kh, kw = self.weight().shape[1:]
        return torch.arange(self.k).reshape(cin, kh, kw).permute(1, 2, 0).reshape(-1)


class GramStatistics:
    """The input Gram matrix ``H = sum_t x_t x_t^T`` of each group (``[groups, k, k]``) and the rows folded in."""

    def __init__(self, groups: int, k: int, dtype: torch.dtype, device: torch.device) -> None:
        self.gram = torch.zeros(groups, k, k, dtype=dtype, device=device)
        self.rows = 0

    def add(self, x_rows: torch.Tensor, y_rows: torch.Tensor | None = None) -> None:
        for g in range(self.gram.shape[0]):
            rows = x_rows[:, g].to(self.gram.dtype)
            self.gram[g].addmm_(rows.T, rows)
        self.rows += int(x_rows.shape[0])


def _tensor_bytes(*values: Any) -> int:
    flat = [t for v in values for t in (v if isinstance(v, (tuple, list)) else (v,))]
    return sum(t.numel() * t.element_size() for t in flat if isinstance(t, torch.Tensor))


def _is_cache(value: Any) -> bool:
    return type(value).__name__.endswith("Cache") and not isinstance(value, torch.Tensor)


class _Call:
    """One recorded call of a block: its hidden-state input plus every other argument (kept as is)."""

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any], token: torch.Tensor | None) -> None:
        kwargs = {k: (None if _is_cache(v) else v) for k, v in kwargs.items()}
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        self.in_kwargs = not args
        hidden = kwargs.pop("hidden_states", None) if self.in_kwargs else args[0]
        if not isinstance(hidden, torch.Tensor):
            raise InputError(
                f"{_WHERE}: the first block's input is a {type(hidden).__name__}, expected a tensor of "
                f"hidden states: block(hidden_states, ...) or block(hidden_states=...)"
            )
        self.args = tuple(None if _is_cache(a) else a for a in args[1:])
        self.hidden, self.kwargs, self.token = hidden.detach(), kwargs, token

    def run(self, block: nn.Module, index: int) -> torch.Tensor:
        if self.in_kwargs:  # (no other positional argument then)
            out = block(hidden_states=self.hidden, **self.kwargs)
        else:
            out = block(self.hidden, *self.args, **self.kwargs)
        out = out[0] if isinstance(out, (tuple, list)) else out
        if not isinstance(out, torch.Tensor):
            raise InputError(
                f"{_WHERE}: a block returned {type(out).__name__}, expected a tensor (or a tuple whose "
                f"first item is the hidden states)"
            )
        return out.detach()

    def nbytes(self) -> int:
        return _tensor_bytes(self.hidden, *self.args, *self.kwargs.values())


class _Batch:
    """A calibration batch as the input of the whole model (a model without repeated blocks)."""

    def __init__(self, batch: Any, device: torch.device, ignore_padding: bool) -> None:
        self.batch, self.device, self.token = batch, device, token_mask(batch) if ignore_padding else None

    def run(self, model: nn.Module, index: int) -> Any:
        return feed_checked(model, self.batch, index, self.device, where=_WHERE)

    def nbytes(self) -> int:
        return 0


def _capture(model: nn.Module, first_block: nn.Module, batches: list[_Batch]) -> list[_Call]:
    """The first block's inputs on every batch (the rest of each forward is not run)."""
    calls: list[_Call] = []

    def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        calls.append(_Call(args, kwargs, batch.token))  # the batch being run
        raise StopForward

    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for index, batch in enumerate(batches):
            before = len(calls)
            with contextlib.suppress(StopForward):
                batch.run(model, index)
            if len(calls) == before:
                raise InputError(
                    f"{_WHERE}: the model's forward never reached its first block; is the calibration "
                    f"batch what model(batch) expects?"
                )
    finally:
        handle.remove()
    return calls


class _Hooks:
    """Forward hooks on some layers for one pass: ``fold(name, x, y, token)`` per call (``token``: the call's
    attention mask), and an early stop once every layer has run its ``counts`` for the current input (if given)."""

    def __init__(self, modules: dict[str, nn.Module], fold: Callable[..., None]) -> None:
        self.modules, self.fold = modules, fold
        self.token: torch.Tensor | None = None
        self.counts: dict[str, int] | None = None
        self.seen: dict[str, int] = {}

    def __enter__(self) -> _Hooks:
        self.handles = [m.register_forward_hook(self._hook(n), with_kwargs=True) for n, m in self.modules.items()]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()

    def run(self, region: nn.Module, call: Any, index: int, counts: dict[str, int] | None) -> Any:
        self.counts, self.seen, self.token = counts, {}, call.token
        if counts is not None and not any(counts.values()):
            return None
        try:
            return call.run(region, index)
        except StopForward:
            return None

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            counts = self.counts
            if counts is not None and self.seen.get(name, 0) >= counts.get(name, 0):
                return
            x = args[0] if args else next(iter(kwargs.values()))
            if not isinstance(x, torch.Tensor) or not isinstance(output, torch.Tensor):
                raise InputError(f"{_WHERE}: layer {name!r} was called with a {type(x).__name__}")
            self.seen[name] = self.seen.get(name, 0) + 1
            self.fold(name, x.detach(), output.detach(), self.token)
            if counts is not None and all(self.seen.get(n, 0) >= c for n, c in counts.items()):
                raise StopForward

        return hook


def _probe(region: nn.Module, calls: list[Any], views: dict[str, _View]) -> list[list[_View]]:
    """Run the region once: each layer's calls, rows, and the layers in execution order cut into *units* of
    consecutive layers fed the very same input tensor in every call (e.g. query, key and value)."""
    order: list[str] = []
    current: dict[str, list[int]] = {}
    inputs: list[torch.Tensor] = []

    def fold(name: str, x: torch.Tensor, y: torch.Tensor, token: torch.Tensor | None) -> None:
        view, keep = views[name], views[name].row_filter(x, token)
        order.extend([] if name in order else [name])
        key = next((i for i, t in enumerate(inputs) if t is x), len(inputs))
        inputs.extend([x] if key == len(inputs) else [])
        current.setdefault(name, []).append(key)
        # rows: tokens kept, else output rows (a conv's: output positions)
        view.rows += int(keep.sum()) if keep is not None else y.numel() // (view.out * view.groups)

    with _Hooks({n: v.module for n, v in views.items()}, fold) as hooks:
        for index, call in enumerate(calls):
            current.clear()
            inputs.clear()
            hooks.run(region, call, index, None)
            for name, view in views.items():
                view.calls.append(tuple(current.get(name, ())))
    units: list[list[_View]] = []
    for name in order:
        if units and units[-1][-1].calls == views[name].calls:
            units[-1].append(views[name])
        else:
            units.append([views[name]])
    return units


def _select_views(
    model: nn.Module, pattern: NMPattern, config: OneShotConfig
) -> tuple[dict[str, _View], dict[str, str]]:
    selection, _ = _select(
        model,
        pattern,
        include=config.include,
        exclude=config.exclude,
        keep_first_last=config.keep_first_last,
        module_types=None,
    )
    for name, module in list(selection.selected.items()):
        if not (isinstance(module, (nn.Linear, nn.Conv2d)) or is_transposed_layer(module)):
            selection.skipped[name] = (
                f"{type(module).__name__} layers are not calibrated one-shot (Linear, "
                f"Conv1D and Conv2d are); exclude it or prune it with prune_"
            )
            del selection.selected[name]
    require_selected(selection, pattern, where=_WHERE)
    return {name: _View(name, module) for name, module in selection.selected.items()}, dict(selection.skipped)


def _check_permutable(model: nn.Module, views: dict[str, _View], scores: str, calibrated: bool) -> None:
    """Refuse ``permute=True`` before anything changes: scores that need calibration without it, or masks that
    the engine does not bake in first (on layers it does not prune)."""
    if scores != "magnitude" and not calibrated:
        raise ConfigError(
            f"{_WHERE}: permute_scores={scores!r} needs calibration data; pass calibration batches or "
            f"permute_scores='magnitude'"
        )
    masked = [
        name
        for name, module in model.named_modules()
        if name not in views and (parametrize.is_parametrized(module) or hasattr(module, "weight_mask"))
    ]
    if masked:
        raise ConfigError(
            f"{_WHERE}: permute=True needs a model without masks outside the layers it prunes; "
            f"{', '.join(masked[:5])}{' ...' if len(masked) > 5 else ''} carry one (remove them first)"
        )


def prune_oneshot_(
    model: nn.Module,
    calibration: Iterable[Any] | None,
    pattern: PatternLike,
    *,
    algorithm: str | None = None,
    config: OneShotConfig | None = None,
    progress: bool | None = None,
    method: str | None = None,
) -> OneShotReport:
    """Prune the Linear, ``Conv1D`` and Conv2d layers of a trained model to ``pattern`` in one shot.

    The model's repeated blocks (the ``nn.ModuleList`` holding most of its target layers: GPT-2's
    ``transformer.h``, LLaMA's ``model.layers``, BERT's ``encoder.layer``; none: the model is one block) are
    processed in order; layers outside them stay dense unless ``config.prune_outside_blocks``. The layer method
    (``algorithm``: ``"magnitude"``, calibration optional; ``"wanda"``; ``"sparsegpt"``; ``"adaprune"``; or one
    added with ``register_method``) gets each layer's statistics on its block's calibration inputs (with
    ``config.sequential``, the outputs of the already pruned blocks, or layers for ``adaprune``) and returns its
    new weights and mask, chosen by the mask solver ``config.method`` (``"auto"``: top-n, exact for ``-T``). Each
    pruned layer gets a static :class:`~nmsparse.NMMask`; a mask it already carried is baked in first and its
    surviving weights are preferred. ``config.permute`` first reorders the free channels with
    :func:`nmsparse.permute_` (after the memory plan; ``report.permutation``).

    Args:
        model: the trained model; modified in place.
        calibration: iterable of batches the model accepts: tensors (``model(batch)``), mappings
            (``model(**batch)``) or tuples (``model(*batch)``); ``None`` only for ``"magnitude"``. Padding tokens
            (``attention_mask == 0``) are left out unless ``config.ignore_padding=False``.
        pattern: ``"2:4"``, ``"4:8-T"``, ... or an :class:`~nmsparse.NMPattern`.
        algorithm: the per-layer algorithm (default: ``config.algorithm``, ``"sparsegpt"``).
        config: :class:`~nmsparse.oneshot.OneShotConfig` (mask solver, options, globs, memory budget in bytes).
        progress: progress bar over blocks; ``None`` = only on a terminal.
        method: deprecated name of ``algorithm`` (``method`` names the mask solver, in ``config``).

    Returns:
        :class:`~nmsparse.oneshot.OneShotReport` holding the model, with one layer report per pruned layer.

    Raises:
        PatternError: unparseable pattern.
        ConfigError: unknown algorithm or options, no layer can take the pattern, or the planned working
            memory exceeds ``config.memory_budget`` (nothing is changed then).
        InputError: empty or unusable calibration data (the batch is named).

    Example:
        >>> import torch, nmsparse
        >>> from nmsparse.oneshot import prune_oneshot_
        >>> model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))
        >>> calibration = [torch.randn(32, 16) for _ in range(4)]
        >>> report = prune_oneshot_(model, calibration, "2:4-T", algorithm="sparsegpt")
        >>> report.pruned, report.model is model, nmsparse.is_nm_sparse(model[0].weight, "2:4-T")
        (['0', '2'], True, True)
    """
    began = time.perf_counter()
    config = OneShotConfig() if config is None else config
    if not isinstance(config, OneShotConfig):
        raise ConfigError(f"{_WHERE}: config must be a OneShotConfig, got {type(config).__name__}")
    if method is not None:
        warnings.warn(
            "prune_oneshot_(method=...) names the algorithm and is deprecated; pass algorithm=... (method "
            "now names the mask solver, config.method)",
            DeprecationWarning,
            stacklevel=2,
        )
    algorithm = algorithm or method or config.algorithm
    spec, options, pattern = get_method(algorithm), config.method_options(algorithm), NMPattern.parse(pattern)
    solver = solver_for(pattern, config.method, _WHERE)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{_WHERE}: model must be a torch.nn.Module, got {type(model).__name__}")
    if calibration is None and spec.needs_calibration:
        raise InputError(
            f"{_WHERE}: algorithm {algorithm!r} needs calibration data; pass an iterable of batches "
            f"(token-id tensors [batch, seq], or dicts such as a tokenizer's output)"
        )
    batches = [] if calibration is None else materialise(calibration, where=_WHERE)
    views, skipped = _select_views(model, pattern, config)
    if config.permute:
        _check_permutable(model, views, permute_scores_for(config, algorithm), bool(batches))
    report = OneShotReport(
        model=model,
        algorithm=algorithm,
        pattern=str(pattern),
        skipped=skipped,
        config={**config.to_dict(), "algorithm": algorithm, "options": options.to_dict()},
        memory_budget=config.memory_bytes,
    )
    blocks = find_blocks(model, views)
    regions = [(b, block, {n: v for n, v in views.items() if n.startswith(f"{b}.")}) for b, block in blocks]
    outside = {n: v for n, v in views.items() if not any(n.startswith(f"{b}.") for b, _ in blocks)}
    if not blocks or (outside and config.prune_outside_blocks):  # last, on the whole model
        regions.append(("<model>", model, outside))
    else:
        skipped.update(dict.fromkeys(outside, _OUTSIDE))
    training = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            _Engine(model, spec, options, pattern, solver, config, report, batches).run(regions, bool(blocks), progress)
    finally:
        for module, mode in training.items():
            module.train(mode)
    if config.recalibrate_bn and batches and recalibrate_batchnorm_(model, batches):
        logger.info("%s: re-estimated batch-norm statistics on the calibration data", _WHERE)
    report.seconds = time.perf_counter() - began
    logger.info("%s: %s", _WHERE, report.describe().splitlines()[-1 - len(report.skipped)])
    return report


@dataclass
class _Engine:
    """One run of :func:`prune_oneshot_`: the regions (blocks) in order, their statistics, solves and masks."""

    model: nn.Module
    spec: LayerMethod
    options: Any
    pattern: NMPattern
    solver: str
    config: OneShotConfig
    report: OneShotReport
    batches: list[Any]

    def __post_init__(self) -> None:
        self.dtype = torch.float64 if self.config.dtype == "float64" else torch.float32
        self.itemsize = self.dtype.itemsize
        self.device = model_device(self.model)
        self.samples = sum(batch_samples(b) for b in self.batches)
        self.layerwise = self.spec.layerwise and self.config.sequential
        targets = self.spec.statistics == "targets" and self.config.sequential
        self.dense_copy = targets and self.spec.dense_targets(self.options)
        self.index = self.held = self.reserve = self.block = 0

    def hold(self, size: int) -> None:
        """Track working memory (negative: released); ``report.peak_tracked`` is the most held at once."""
        self.held += int(size)
        self.report.peak_tracked = max(self.report.peak_tracked, self.held)

    def run(self, regions: list[tuple[str, nn.Module, dict[str, _View]]], blocked: bool, progress: bool | None) -> None:
        batches = [_Batch(b, self.device, self.config.ignore_padding) for b in self.batches]
        calls: list[Any] = _capture(self.model, regions[0][1], batches) if batches and blocked else batches
        sizes = [c.nbytes() for c in calls]
        act = sum(sizes) * (2 if self.dense_copy else 1) + max(sizes, default=0)  # one block output in flight
        self._check_budget(regions, act, bool(calls))
        for view in (v for _, _, vs in regions for v in vs.values()):
            if _nm_mask(view.module) is not None:  # bake existing masks in (their zeros are then dead)
                remove_mask_(view.module, leave_masked=True)
            if hasattr(view.module, "weight_orig") and hasattr(view.module, "weight_mask"):
                torch_prune.remove(view.module, "weight")
        if self.config.permute:  # after the budget check, before any statistics (and the dense copy)
            self._permute(regions)
            if batches and blocked:  # permuted layers before the first block (embeddings) change its inputs
                calls = _capture(self.model, regions[0][1], batches)
        self.hold(act)
        # layers outside the blocks come last: their dense targets need the dense model as it is now
        self.dense_model = (
            copy.deepcopy(self.model).eval() if self.dense_copy and blocked and regions[-1][1] is self.model else None
        )
        dense_calls = [copy.copy(c) for c in calls] if self.dense_copy and blocked else calls
        desc = f"oneshot {self.report.algorithm} {self.pattern}"
        bar = _progress(regions, desc=desc, total=len(regions), enabled=progress, unit="block")
        for block, (name, region, views) in enumerate(bar):
            self.block, began = block, time.perf_counter()  # (the layer reports' block)
            if not calls:  # magnitude without calibration: no statistics, no forward passes
                for view in views.values():
                    self._solve(view, None)()
            elif region is self.model:  # the whole model (or the layers outside its blocks): fed the batches
                self._region(name, region, views, batches, batches)
            else:
                self._region(name, region, views, calls, dense_calls)
            self.report.block_seconds.append(time.perf_counter() - began)
        self.report.blocks = len(regions)

    def _permute(self, regions: list[tuple[str, nn.Module, dict[str, _View]]]) -> None:
        from ..permute import permute_

        self.report.permutation = permute_(
            self.model,
            self.pattern,
            [to_device(b, self.device) for b in self.batches] or None,
            scores=permute_scores_for(self.config, self.report.algorithm),
            layers=[n for _, _, views in regions for n in views],
            residual=self.config.permute_residual,
            ignore_padding=self.config.ignore_padding,
        )
        logger.info("%s: %s", _WHERE, self.report.permutation.summary().splitlines()[0])

    def _check_budget(self, regions: list[tuple[str, nn.Module, dict[str, _View]]], act: int, with_stats: bool) -> None:
        worst, detail, budget = 0, "", self.report.memory_budget
        stats_bytes = self.spec.statistics_bytes or (lambda k, out, groups, bias: groups * k * k * self.itemsize)
        for name, region, views in regions:
            stats = sum(stats_bytes(v.k, v.out, v.groups, v.bias) for v in views.values()) if with_stats else 0
            solve = max(
                (self.spec.solve_bytes(v.groups * v.out, v.k, self.itemsize, self.options) for v in views.values()),
                default=0,
            )
            dense = _tensor_bytes(*region.parameters(), *region.buffers()) if self.dense_copy and with_stats else 0
            if act + stats + solve + dense > worst:
                worst = act + stats + solve + dense
                detail = (
                    f"calibration activations {act / _MIB:.1f} MiB + statistics of block {name!r} "
                    f"{stats / _MIB:.1f} MiB + one layer's solve {solve / _MIB:.1f} MiB"
                    + (f" + a dense copy of the block {dense / _MIB:.1f} MiB" if dense else "")
                )
        self.report.memory_estimate = self.reserve = worst
        if worst > budget:
            given = f"memory_budget={self.config.memory_budget!r} ({budget / _MIB:.3g} MiB)"
            if self.config.max_memory_mb is not None:
                given = f"max_memory_mb={self.config.max_memory_mb:g}"
            raise ConfigError(
                f"{_WHERE}: needs about {worst / _MIB:.1f} MiB of working memory ({detail}), more than "
                f"{given}; nothing was changed. Raise memory_budget, or use fewer or shorter "
                f"calibration samples" + (", or dtype='float32'" if self.itemsize == 8 else "")
            )

    def _region(
        self, name: str, region: nn.Module, views: dict[str, _View], calls: list[Any], dense_calls: list[Any]
    ) -> None:
        """Record, solve and attach every layer of one region (a block, or the whole model); then advance a block's
        inputs to the next one."""
        prefix = "" if region is self.model else f"{name}."  # cut from the views' names inside the region
        reference = self.dense_model if region is self.model else None  # the copy made up front, if any
        if reference is None and self.dense_copy:
            reference = copy.deepcopy(region).eval()
        dense_layers = {n: reference.get_submodule(n[len(prefix) :]) for n in views} if reference is not None else {}
        copied = _tensor_bytes(*region.parameters(), *region.buffers()) if reference is not None else 0
        self.hold(copied)
        probed = self.layerwise or self.spec.statistics == "targets"
        units = _probe(region, calls, views) if probed else [list(views.values())] if views else []
        ran = {v.name for unit in units for v in unit}
        self.report.skipped.update((n, "never ran on the calibration data") for n in views if n not in ran)
        if probed and not self.layerwise:
            units = [[v for unit in units for v in unit]]
        attach: list[Callable[[], None]] = []
        outputs: list[Any] = []
        for unit in units:
            room = (self.report.memory_budget - self.reserve) // len(unit)  # for a method's stored rows
            stats = {v.name: self._new_stats(v, room) for v in unit}
            held = _tensor_bytes(*(t for s in stats.values() for t in vars(s).values()))
            self.hold(held)
            outputs = self._record(region, unit, stats, calls, dense_calls, reference, dense_layers)
            for view in unit:
                if stats[view.name].rows == 0:
                    self.report.skipped[view.name] = "never ran on the calibration data"
                elif self.layerwise:
                    self._solve(view, stats.pop(view.name))()
                else:
                    attach.append(self._solve(view, stats.pop(view.name)))
            self.hold(-held)
        for install in attach:  # a block's layers change together: each was solved on the block's dense path
            install()
        if region is not self.model:
            for index, call in enumerate(calls):
                call.hidden = outputs[index] if outputs and not self.config.sequential else call.run(region, index)
            for index, call in enumerate(dense_calls if reference is not None else ()):
                call.hidden = call.run(reference, index)
        self.hold(-copied)

    def _new_stats(self, view: _View, room: int) -> Any:
        if self.spec.make_statistics is None:
            return GramStatistics(view.groups, view.k, self.dtype, self.device)
        seed = getattr(self.options, "seed", 0) * 7919 + self.index
        return self.spec.make_statistics(view, room, self.options, seed, self.device)

    def _record(
        self,
        region: nn.Module,
        unit: list[_View],
        stats: dict[str, Any],
        calls: list[Any],
        dense_calls: list[Any],
        reference: nn.Module | None,
        dense_layers: dict[str, nn.Module],
    ) -> list[Any]:
        """One pass over the calls: fold every unit layer's inputs (and targets: its twin in ``dense_layers``, of
        the dense ``reference``) into its statistics."""
        views = {v.name: v for v in unit}
        targets: dict[str, list[torch.Tensor]] = {name: [] for name in views}
        with_y = self.spec.statistics == "targets"

        def fold(name: str, x: torch.Tensor, y: torch.Tensor, token: torch.Tensor | None) -> None:
            view = views[name]
            keep = view.row_filter(x, token)
            target = targets[name].pop(0) if reference is not None else y
            stats[name].add(view.as_rows(x, keep), view.as_rows(target, keep, output=True) if with_y else None)

        outputs: list[Any] = []
        with (
            _Hooks({n: v.module for n, v in views.items()}, fold) as hooks,
            _Hooks(
                {n: dense_layers[n] for n in views} if reference is not None else {},
                lambda name, x, y, token: targets[name].append(y),
            ) as dense_hooks,
        ):
            for index, call in enumerate(calls):
                counts = {v.name: len(v.calls[index]) for v in unit} if self.layerwise else None
                if reference is not None:
                    dense_hooks.run(reference, dense_calls[index], index, counts)
                outputs.append(hooks.run(region, call, index, counts))
        return outputs

    def _solve(self, view: _View, stats: Any) -> Callable[[], None]:
        """Solve one layer, report it, and return the function that installs the result."""
        began = time.perf_counter()
        rows, cols = view.groups * view.out, view.k
        workspace = self.spec.solve_bytes(rows, cols, self.itemsize, self.options)
        self.hold(workspace)
        stored = view.weight().detach()

        def masks(scores: list[torch.Tensor]) -> list[torch.Tensor]:
            full, alive = view.stored(scores), stored != 0
            if not bool(alive.all()):  # a sparse model is converted on its survivors: they outrank every zero
                full = full + alive.to(full.dtype) * (full.max() + 1.0)
            return view.matrices(layer_mask(view.module, self.pattern, method=self.solver, scores=full, weight=stored))

        weights = view.matrices(stored, self.dtype)
        bias = view.module.bias.detach().float() if isinstance(view.module.bias, torch.Tensor) else None
        layer = Layer(
            view.name,
            view.module,
            weights,
            bias,
            stats,
            self.pattern,
            self.solver,
            self.options,
            view.columns(),
            f"{_WHERE}[{view.name!r}]",
            masks,
            self.index,
            self.samples,
        )
        solution = self.spec.solve(layer)
        info = {"relative_error": _relative_error(weights, solution.weights, stats, solution.error), **solution.info}
        self.hold(-workspace)
        self.index += 1
        self.report.layers.append(
            OneShotLayerReport(
                name=view.name,
                kind=type(view.module).__name__,
                shape=(rows, cols),
                block=self.block,
                tokens=0 if stats is None else int(stats.rows),
                seconds=time.perf_counter() - began,
                pattern=str(self.pattern),
                **info,
            )
        )

        def install() -> None:
            target = view.weight()
            with torch.no_grad():
                target.copy_(view.stored(solution.weights).to(target.dtype))
                if solution.bias is not None and isinstance(view.module.bias, torch.Tensor):
                    view.module.bias.copy_(solution.bias.reshape(view.module.bias.shape))
            apply_mask_(view.module, view.stored(solution.masks).contiguous(), pattern=self.pattern)

        return install


def _relative_error(dense: list[torch.Tensor], pruned: list[torch.Tensor], stats: Any, error: float | None) -> float:
    """``||X (W - W')^T|| / ||X W^T||`` from the Gram statistics (NaN without them); ``error``: the squared
    numerator, when the method computed it."""
    if not isinstance(stats, GramStatistics):
        return math.nan
    if error is None:  # both terms from one pass per group
        terms = [reconstruction_error(w, new, gram) for w, new, gram in zip(dense, pruned, stats.gram)]
        error, power = sum(e for e, _ in terms), sum(p for _, p in terms)
    else:
        power = sum(max(quadratic(w, gram), 0.0) for w, gram in zip(dense, stats.gram))
    return math.sqrt(max(error, 0.0) / power) if power > 0 else 0.0
