"""``prune_oneshot_``: one-shot n:m / n:m-T pruning of a model, decoder block by decoder block."""

from __future__ import annotations

import fnmatch
import inspect
import math
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from .._calibration import materialise
from .._logging import logger
from .._logging import progress as _progress
from ..errors import ConfigError, InputError, NMSparseError, ShapeError
from ..layout import check_fits
from ..pattern import NMPattern, PatternLike

# nmsparse.prune first: it loads nmsparse.io in the order their mutual imports need
from ..prune.static import apply_mask_
from .config import OneShotConfig, OneShotLayerReport, OneShotReport
from .layer import METHODS, gram_update_, prune_matrix, reconstruction_error

__all__ = ["prune_oneshot_", "linear_types", "is_conv1d", "matrix_view", "find_blocks"]

_MIB = float(1 << 20)


# ------------------------------------------------------------------------------------------ layers and blocks


def _conv1d_type() -> type | None:
    """``transformers.pytorch_utils.Conv1D`` when transformers is already imported (never imports it)."""
    module = sys.modules.get("transformers.pytorch_utils")
    cls = getattr(module, "Conv1D", None) if module is not None else None
    return cls if isinstance(cls, type) else None


def linear_types() -> tuple[type[nn.Module], ...]:
    """The module classes one-shot pruning treats as linear layers: ``nn.Linear`` and transformers' ``Conv1D``."""
    conv1d = _conv1d_type()
    return (nn.Linear,) if conv1d is None else (nn.Linear, conv1d)


def is_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is a transformers ``Conv1D`` (GPT-2's linears, weight stored ``[in, out]``)."""
    conv1d = _conv1d_type()
    return conv1d is not None and isinstance(module, conv1d)


def _weight(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def matrix_view(module: nn.Module) -> torch.Tensor:
    """The ``[out, in]`` matrix of a linear layer's (unparametrized) weight: ``Conv1D`` weights are transposed."""
    weight = _weight(module).detach()
    return weight.T if is_conv1d(module) else weight


def _matrix_shape(module: nn.Module) -> tuple[int, int]:
    shape = tuple(int(s) for s in _weight(module).shape)
    return (shape[1], shape[0]) if is_conv1d(module) else (shape[0], shape[1])


def _targets(model: nn.Module, pattern: NMPattern, config: OneShotConfig) -> tuple[dict[str, nn.Module],
                                                                                   dict[str, str]]:
    """Linear layers to prune (name -> module, model order) and the reason for every one left dense."""
    types = linear_types()
    selected: dict[str, nn.Module] = {}
    skipped: dict[str, str] = {}
    for name, module in model.named_modules():
        if not isinstance(module, types):
            continue
        label = name or "<root>"
        if config.include is not None and not any(fnmatch.fnmatchcase(name, g) for g in config.include):
            skipped[label] = f"not matched by include={list(config.include)}"
            continue
        if config.exclude is not None and any(fnmatch.fnmatchcase(name, g) for g in config.exclude):
            skipped[label] = f"matched by exclude={list(config.exclude)}"
            continue
        if parametrize.is_parametrized(module, "weight"):
            skipped[label] = ("weight already carries a parametrization (an nmsparse mask or another); one-shot "
                              "pruning starts from dense weights: squash_masks_ or remove it first")
            continue
        try:
            check_fits(_matrix_shape(module), pattern, where=f"{type(module).__name__} [out, in]")
        except ShapeError as exc:
            skipped[label] = str(exc)
            continue
        selected[name] = module
    return selected, skipped


def find_blocks(model: nn.Module, names: Iterable[str]) -> list[tuple[str, nn.Module]]:
    """The repeated blocks of ``model``: children of the ``nn.ModuleList`` that holds most of ``names``.

    GPT-2's ``transformer.h``, LLaMA's ``model.layers`` and nmsparse's own decoder are found this way. Returns
    ``[]`` when no module list holds any of ``names`` (the whole model is then one block).
    """
    names = list(names)
    best: tuple[int, str, nn.ModuleList] | None = None
    for list_name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or not len(module):
            continue
        prefix = f"{list_name}." if list_name else ""
        count = sum(1 for n in names if n.startswith(prefix))
        if count and (best is None or count > best[0]):
            best = (count, prefix, module)
    if best is None:
        return []
    _, prefix, blocks = best
    return [(f"{prefix}{i}", block) for i, block in enumerate(blocks)]


# ------------------------------------------------------------------------------------------ calibration


class _Stop(Exception):
    """Raised by the hook on the first block once its input is recorded."""


def _materialise(calibration: Iterable[Any] | None, method: str) -> list[Any]:
    if calibration is None:
        if method == "magnitude":
            return []
        raise InputError(f"prune_oneshot_: method {method!r} needs calibration data; pass an iterable of batches "
                         f"(token-id tensors [batch, seq], or dicts such as a tokenizer's output)")
    return materialise(calibration, where="prune_oneshot_")


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _feed(model: nn.Module, batch: Any) -> None:
    """``model(**batch)`` / ``model(*batch)`` / ``model(batch)``, with ``use_cache=False`` where accepted."""
    extra: dict[str, Any] = {}
    try:
        if "use_cache" in inspect.signature(model.forward).parameters:
            extra["use_cache"] = False
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        pass
    if isinstance(batch, Mapping):
        model(**{**extra, **batch})
    elif isinstance(batch, (tuple, list)):
        model(*batch, **extra)
    else:
        model(batch, **extra)


def _is_cache(value: Any) -> bool:
    return type(value).__name__.endswith("Cache") and not isinstance(value, torch.Tensor)


class _Call:
    """One recorded call of a block: its hidden-state input plus every other argument (kept as is)."""

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        kwargs = {k: (None if _is_cache(v) else v) for k, v in kwargs.items()}
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        if args:
            rest = tuple(None if _is_cache(a) else a for a in args[1:])
            self.hidden, self.args, self.in_kwargs = args[0], rest, False
        elif isinstance(kwargs.get("hidden_states"), torch.Tensor):
            self.hidden, self.args, self.in_kwargs = kwargs.pop("hidden_states"), (), True
        else:
            raise InputError("prune_oneshot_: the first decoder block was called without a tensor input; expected "
                             "block(hidden_states, ...) or block(hidden_states=...)")
        if not isinstance(self.hidden, torch.Tensor):
            raise InputError(f"prune_oneshot_: the first decoder block's input is a {type(self.hidden).__name__}, "
                             f"expected a tensor of hidden states")
        self.hidden = self.hidden.detach()
        self.kwargs = kwargs

    def run(self, block: nn.Module) -> torch.Tensor:
        if self.in_kwargs:
            out = block(*self.args, hidden_states=self.hidden, **self.kwargs)
        else:
            out = block(self.hidden, *self.args, **self.kwargs)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, torch.Tensor):
            raise InputError(f"prune_oneshot_: a decoder block returned {type(out).__name__}, expected a tensor "
                             f"(or a tuple whose first item is the hidden states)")
        return out.detach()

    def extra_bytes(self) -> int:
        total = 0
        for value in (*self.args, *self.kwargs.values()):
            for t in (value if isinstance(value, (tuple, list)) else (value,)):
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
        return total


def _feed_batch(model: nn.Module, batch: Any, index: int, device: torch.device, where: str) -> None:
    """:func:`_feed` of calibration batch ``index``; a batch the model cannot take is one :class:`InputError`."""
    try:
        _feed(model, _to_device(batch, device))
    except (_Stop, NMSparseError):
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised with the batch and call style named
        style = "model(**batch)" if isinstance(batch, Mapping) else (
            "model(*batch)" if isinstance(batch, (tuple, list)) else "model(batch)")
        raise InputError(
            f"{where}: calibration batch {index} cannot be fed to the model as {style}: {type(exc).__name__}: "
            f"{' '.join(str(exc).split())}; every batch must be a valid model input (token ids [batch, seq], a dict "
            f"passed as keyword arguments, a tuple/list as positional arguments)"
        ) from exc


def _capture(model: nn.Module, first_block: nn.Module, batches: list[Any], device: torch.device,
             where: str) -> list[_Call]:
    calls: list[_Call] = []

    def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        calls.append(_Call(args, kwargs))
        raise _Stop

    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for index, batch in enumerate(batches):
            before = len(calls)
            try:
                _feed_batch(model, batch, index, device, where)
            except _Stop:
                pass
            if len(calls) == before:
                raise InputError(f"{where}: the model's forward never reached its first decoder block; is the "
                                 f"calibration batch what model(batch) expects?")
    finally:
        handle.remove()
    return calls


# ------------------------------------------------------------------------------------------ statistics


class _Grams:
    """Input Gram matrices of the target layers of one block; layers fed the very same tensor share one."""

    def __init__(self, layers: dict[str, nn.Module], dtype: torch.dtype, device: torch.device,
                 tracker: _Tracker) -> None:
        self.layers, self.dtype, self.device, self.tracker = layers, dtype, device, tracker
        self.grams: dict[str, torch.Tensor] = {}
        self.tokens: dict[str, int] = {}
        self.owner: dict[str, str] = {}
        self._seen: list[tuple[torch.Tensor, str]] = []
        self._first = True
        self._handles: list[Any] = []

    def __enter__(self) -> _Grams:
        for name, module in self.layers.items():
            self._handles.append(module.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._seen.clear()

    def end_batch(self) -> None:
        self._seen.clear()
        self._first = False

    def _hook(self, name: str) -> Any:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            if not isinstance(x, torch.Tensor):
                raise InputError(f"prune_oneshot_: layer {name!r} was called with a {type(x).__name__}")
            x = x.detach()
            if self._first:
                owner = next((o for t, o in self._seen if t is x), name)
                self.owner[name] = owner
            else:
                owner = self.owner[name]
            if owner != name:
                if not any(t is x and o == owner for t, o in self._seen):
                    raise InputError(f"prune_oneshot_: layer {name!r} shared its input with {owner!r} on the first "
                                     f"batch but not on a later one; the block's forward must not depend on the batch")
                return
            self._seen.append((x, name))
            gram = self.grams.get(name)
            if gram is None:
                size = x.shape[-1]
                gram = torch.zeros(size, size, dtype=self.dtype, device=self.device)
                self.tracker.hold(gram.numel() * gram.element_size())
                self.grams[name] = gram
                self.tokens[name] = 0
            self.tokens[name] += gram_update_(gram, x)
        return hook

    def gram(self, name: str) -> tuple[torch.Tensor, int]:
        owner = self.owner.get(name)
        if owner is None or owner not in self.grams:
            raise InputError(f"prune_oneshot_: layer {name!r} was never called while its block ran on the "
                             f"calibration data, so it has no statistics; exclude it (config.exclude)")
        return self.grams[owner], self.tokens[owner]

    def release(self, done: set[str]) -> None:
        """Free the Gram matrices whose every user is in ``done``."""
        for owner in list(self.grams):
            users = [n for n, o in self.owner.items() if o == owner]
            if all(u in done for u in users):
                gram = self.grams.pop(owner)
                self.tracker.release(gram.numel() * gram.element_size())


class _Tracker:
    """Bytes of working memory held by one-shot pruning (activations, statistics, the running solve)."""

    def __init__(self) -> None:
        self.held = 0
        self.peak = 0

    def hold(self, size: int) -> None:
        self.held += int(size)
        self.peak = max(self.peak, self.held)

    def release(self, size: int) -> None:
        self.held -= int(size)


# ------------------------------------------------------------------------------------------ memory plan


def _solve_bytes(method: str, rows: int, cols: int, itemsize: int) -> int:
    """Working memory of one layer's solve (weight copies, mask, and for SparseGPT the Hessian factors)."""
    if method in ("sparsegpt", "adaprune"):
        return (3 * cols * cols + 4 * rows * cols) * itemsize + rows * cols
    return 3 * rows * cols * itemsize + rows * cols


def _plan(blocks: list[tuple[str, list[tuple[str, nn.Module]]]], method: str, itemsize: int, act_bytes: int,
          with_stats: bool) -> tuple[int, str]:
    """Largest working memory of any block, and a line saying what it is made of."""
    worst, detail = 0, ""
    for block_name, layers in blocks:
        shapes = [_matrix_shape(m) for _, m in layers]
        stats = sum(c * c for _, c in shapes) * itemsize if with_stats else 0
        solve = max((_solve_bytes(method, r, c, itemsize) for r, c in shapes), default=0)
        total = act_bytes + stats + solve
        if total > worst:
            worst = total
            detail = (f"calibration activations {act_bytes / _MIB:.1f} MiB + statistics of block {block_name!r} "
                      f"{stats / _MIB:.1f} MiB + one layer's solve {solve / _MIB:.1f} MiB")
    return worst, detail


# ------------------------------------------------------------------------------------------ the verb


def _check_method(method: object) -> str:
    if not isinstance(method, str) or method not in METHODS:
        raise ConfigError(f"prune_oneshot_: method must be one of {list(METHODS)}, got {method!r}")
    return method


def _attach(module: nn.Module, weight: torch.Tensor, mask: torch.Tensor, pattern: NMPattern) -> None:
    """Write the reconstructed ``[out, in]`` weight back and register the mask as an :class:`NMMask`."""
    conv1d = is_conv1d(module)
    if conv1d:
        weight, mask = weight.T, mask.T
    target = _weight(module)
    with torch.no_grad():
        target.copy_(weight.to(target.dtype))
    # nmsparse's one way to attach masks (records Conv1D layers as transposed, checks the pattern)
    apply_mask_(module, mask.contiguous(), pattern=pattern)


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def prune_oneshot_(model: nn.Module, calibration: Iterable[Any] | None, pattern: PatternLike, *,
                   method: str = "sparsegpt", config: OneShotConfig | None = None,
                   progress: bool | None = None) -> OneShotReport:
    """Prune the linear layers of a trained model to ``pattern`` in one shot, decoder block by decoder block.

    The model's repeated blocks (the ``nn.ModuleList`` holding most of its linears: GPT-2's ``transformer.h``,
    LLaMA's ``model.layers``) are processed in order. The input of the first block is recorded on the
    calibration batches; each block then runs on its recorded input with hooks that sum every target layer's
    input Gram matrix ``H = X^T X``; its layers are pruned from those statistics; and the block runs again,
    now pruned, to give the next block its input (``config.sequential``; otherwise the dense outputs). Linears
    outside the blocks (e.g. ``lm_head``) stay dense. A model without repeated blocks is one block.

    Methods (see :mod:`nmsparse.oneshot.layer`): ``"magnitude"`` (``|w|``, calibration optional), ``"wanda"``
    (``|w| * ||x||``), ``"sparsegpt"`` (OBS reconstruction with a damped Hessian, the mask chosen group by
    group on ``w^2 / [H^-1]_jj``) and ``"adaprune"`` (the mask by ``|w| * ||x||``, then the kept weights fitted to
    the layer's dense output). For ``-T`` patterns every mask is chosen by the exact transposable solver
    (:func:`nmsparse.find_mask` with ``method="exact"``) on the method's saliency, and the weights are then
    reconstructed with that mask fixed.

    Every pruned layer gets a static :class:`~nmsparse.NMMask` parametrization and holds its reconstructed
    weights (zeros where pruned), so the result is an ordinary pruned nmsparse model
    (:func:`~nmsparse.get_masks`, :func:`~nmsparse.squash_masks_`).

    Args:
        model: ``nn.Linear`` / transformers ``Conv1D`` layers are pruned; modified in place.
        calibration: iterable of batches that ``model`` accepts: token-id tensors ``[batch, seq]``
            (``model(batch)``), mappings (``model(**batch)``) or tuples (``model(*batch)``); ``None`` only for
            ``"magnitude"``. Every token of every batch counts (padding too).
        pattern: ``"2:4"``, ``"4:8-T"``, ... or an :class:`~nmsparse.NMPattern`.
        method: ``"sparsegpt"``, ``"wanda"``, ``"magnitude"`` or ``"adaprune"``.
        config: :class:`OneShotConfig` (damping, lazy block size, globs, memory budget, dtype).
        progress: show progress bars; ``None`` = only on a terminal.

    Returns:
        :class:`OneShotReport` with one :class:`OneShotLayerReport` per pruned layer.

    Raises:
        PatternError: unparseable pattern.
        ConfigError: unknown method, no layer can take the pattern, or the planned working memory exceeds
            ``config.max_memory_mb`` (nothing is changed then).
        InputError: empty or unusable calibration data.

    Example:
        >>> import torch, nmsparse
        >>> from nmsparse.oneshot import prune_oneshot_
        >>> model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))
        >>> calibration = [torch.randn(32, 16) for _ in range(4)]
        >>> report = prune_oneshot_(model, calibration, "2:4-T", method="sparsegpt")
        >>> [r.name for r in report.layers], nmsparse.is_nm_sparse(model[0].weight, "2:4-T")
        (['0', '2'], True)
    """
    began = time.perf_counter()
    method = _check_method(method)
    pattern = NMPattern.parse(pattern)
    if config is None:
        config = OneShotConfig()
    elif not isinstance(config, OneShotConfig):
        raise ConfigError(f"prune_oneshot_: config must be a OneShotConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"prune_oneshot_: model must be a torch.nn.Module, got {type(model).__name__}")
    batches = _materialise(calibration, method)
    targets, skipped = _targets(model, pattern, config)
    if not targets:
        detail = "".join(f"\n  - {n}: {r}" for n, r in skipped.items())
        raise ConfigError(f"prune_oneshot_: no linear layer of the model can take pattern {pattern}"
                          + (f"; every candidate was skipped:{detail}" if detail else
                             "; the model has no nn.Linear or transformers Conv1D module")
                          + "\nrelax include/exclude, or use a pattern whose m divides the layers' sizes")
    dtype = torch.float64 if config.dtype == "float64" else torch.float32
    itemsize = torch.finfo(dtype).bits // 8
    device = _model_device(model)
    report = OneShotReport(method=method, pattern=str(pattern), config=config.to_dict(), skipped=skipped,
                           max_memory_mb=config.max_memory_mb)

    blocks = find_blocks(model, targets)
    if blocks:
        prefixes = [(name, f"{name}.") for name, _ in blocks]
        outside = [n for n in targets if not any(n.startswith(p) for _, p in prefixes)]
        for name in outside:
            skipped[name] = "outside the model's repeated decoder blocks (embeddings and head stay dense)"
            del targets[name]
        grouped = [(bname, [(n, m) for n, m in targets.items() if n.startswith(p)]) for bname, p in prefixes]
    else:
        grouped = [("<model>", list(targets.items()))]

    tracker = _Tracker()
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if not batches:  # magnitude without calibration: no statistics, no forward passes
                _check_budget(grouped, method, itemsize, 0, False, config, report)
                for index, (_, layers) in enumerate(grouped):
                    for name, module in layers:
                        _prune_layer(report, name, module, index, None, 0, method, pattern, config, dtype, tracker)
                report.blocks = len(grouped)
            elif blocks:
                calls = _capture(model, blocks[0][1], batches, device, "prune_oneshot_")
                act = sum(c.hidden.numel() * c.hidden.element_size() + c.extra_bytes() for c in calls)
                act += max(c.hidden.numel() * c.hidden.element_size() for c in calls)  # one block output in flight
                _check_budget(grouped, method, itemsize, act, True, config, report)
                tracker.hold(act)
                bar = _progress(range(len(blocks)), desc=f"oneshot {method} {pattern}", total=len(blocks),
                               enabled=progress, unit="block")
                for index in bar:
                    block_began = time.perf_counter()
                    block = blocks[index][1]
                    block_layers = dict(grouped[index][1])
                    with _Grams(block_layers, dtype, device, tracker) as grams:
                        for call in calls:
                            out = call.run(block)
                            grams.end_batch()
                            if not config.sequential:
                                call.hidden = out
                    _prune_block(report, grams, block_layers, index, method, pattern, config, dtype, tracker)
                    if config.sequential:
                        for call in calls:
                            call.hidden = call.run(block)
                    report.block_seconds.append(time.perf_counter() - block_began)
                report.blocks = len(blocks)
            else:  # no repeated blocks: the whole model is one block, every layer sees dense inputs
                model_layers = dict(grouped[0][1])
                _check_budget(grouped, method, itemsize, 0, True, config, report)
                block_began = time.perf_counter()
                with _Grams(model_layers, dtype, device, tracker) as grams:
                    for batch_index, batch in enumerate(batches):
                        _feed_batch(model, batch, batch_index, device, "prune_oneshot_")
                        grams.end_batch()
                _prune_block(report, grams, model_layers, 0, method, pattern, config, dtype, tracker)
                report.block_seconds.append(time.perf_counter() - block_began)
                report.blocks = 1
    finally:
        model.train(training)
    report.peak_tracked_mb = tracker.peak / _MIB
    report.seconds = time.perf_counter() - began
    logger.info("prune_oneshot_: %s", report.describe().splitlines()[-1])
    return report


def _check_budget(grouped: list[tuple[str, list[tuple[str, nn.Module]]]], method: str, itemsize: int, act: int,
                  with_stats: bool, config: OneShotConfig, report: OneShotReport) -> None:
    need, detail = _plan(grouped, method, itemsize, act, with_stats)
    report.memory_estimate_mb = need / _MIB
    if need > config.max_memory_mb * _MIB:
        raise ConfigError(
            f"prune_oneshot_: needs about {need / _MIB:.1f} MiB of working memory ({detail}), more than "
            f"max_memory_mb={config.max_memory_mb:g}; nothing was changed. Raise max_memory_mb, or use fewer or "
            f"shorter calibration samples" + (", or dtype='float32'" if itemsize == 8 else "")
        )


def _prune_block(report: OneShotReport, grams: _Grams, layers: dict[str, nn.Module], index: int, method: str,
                 pattern: NMPattern, config: OneShotConfig, dtype: torch.dtype, tracker: _Tracker) -> None:
    done: set[str] = set()
    for name, module in layers.items():
        gram, tokens = grams.gram(name)
        _prune_layer(report, name, module, index, gram, tokens, method, pattern, config, dtype, tracker)
        done.add(name)
        grams.release(done)


def _prune_layer(report: OneShotReport, name: str, module: nn.Module, index: int, gram: torch.Tensor | None,
                 tokens: int, method: str, pattern: NMPattern, config: OneShotConfig, dtype: torch.dtype,
                 tracker: _Tracker) -> None:
    began = time.perf_counter()
    rows, cols = _matrix_shape(module)
    workspace = _solve_bytes(method, rows, cols, torch.finfo(dtype).bits // 8)
    tracker.hold(workspace)
    try:
        dense = matrix_view(module).to(dtype)
        where = f"prune_oneshot_[{name!r}]"
        if method == "adaprune":
            from .adaprune import fit

            assert gram is not None
            result = fit(dense, gram, pattern, tokens=tokens, iterations=config.adaprune_iterations, where=where)
        else:
            result = prune_matrix(method, dense, gram, pattern, damping=config.damping,
                                  block_size=config.block_size, where=where)
        if gram is not None:
            error, power = reconstruction_error(dense, result.weight, gram)
            relative = math.sqrt(error / power) if power > 0 else 0.0  # ||dY|| / ||Y||, not its square
        else:
            relative = math.nan
        _attach(module, result.weight, result.mask, pattern)
    finally:
        tracker.release(workspace)
    report.layers.append(OneShotLayerReport(
        name=name, kind=type(module).__name__, shape=(rows, cols), block=index, tokens=tokens,
        relative_error=relative, damping=result.damping, seconds=time.perf_counter() - began,
    ))
