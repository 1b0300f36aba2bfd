"""AdaPrune: one-shot n:m / n:m-T pruning of a trained model with a small calibration set and no training.

For every prunable layer (Hubara et al., NeurIPS 2021, section 5):

1. record the layer's input ``X`` and its dense output ``Y`` on the calibration data (forward hooks);
2. choose the mask (``|w|``, or ``|w| * ||x||`` with ``scores="activation"``) and apply it with *absorb mean*:
   in every group of ``m`` the pruned weights' sum is shared equally among the kept ones, so the group sum and
   hence the layer's response to a constant input are kept;
3. minimise ``MSE(X (W * mask)^T + b, Y)`` over ``W`` and ``b`` with Adam and the mask fixed, keeping the best
   iterate (so the error never ends above the masked starting point).

Every Linear and (grouped) Conv2d is a linear map of rows: tokens for a Linear, unfolded ``kh*kw*in`` patches for
a Conv2d. Rows are never kept all at once: each batch's rows are folded into sufficient statistics
``G = [X 1]^T [X 1]``, ``C = [X 1]^T Y`` and ``sum(Y^2)`` (float64), from which the exact calibration error and the
full-batch gradient of any ``W`` follow. With ``batch_size=None`` Adam runs on that exact full-batch gradient;
with ``batch_size=k`` (the paper's mini-batches of ``k`` samples) it steps on rows kept within
``memory_budget`` (a seeded random subset of tokens/positions when they do not all fit), while the error that
picks the best iterate is always the exact one over every calibration row.

``sequential=True`` records each layer's input from the model whose earlier layers are already pruned, so each
layer also corrects what its predecessors lost (its target stays the *dense model's* output, ``target="model"``,
or the layer's own dense output on that input, ``target="layer"``); ``sequential=False`` is the paper's parallel
version: every layer sees dense inputs, and one pass records many layers at once.

Cost: sequential mode runs one forward pass per *unit* over the calibration set, stopped early once the unit has
been recorded; layers that receive the very same input tensor (an attention block's query, key and value) form
one unit. The dense model's outputs are recorded ahead for many layers per pass. Memory stays within
``memory_budget`` plus the model, its dense copy and one batch's activations, whatever the number of layers.
"""

from __future__ import annotations

import contextlib
import copy
import math
import re
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune

from .._logging import logger, progress_enabled
from ..errors import ConfigError, InputError
from ..layout import from_matrix, to_matrix
from ..nn.parametrize import NMMask
from ..pattern import NMPattern, PatternLike
from ..solvers import Method
from .select import _select, require_selected
from .static import _check_method, _nm_mask, layer_mask

__all__ = [
    "AdaPruneLayerReport",
    "adaprune_",
    "recalibrate_batchnorm_",
    "parse_memory",
    "DEFAULT_MEMORY_BUDGET",
]

#: Default bound on the recorded activations and statistics held at once (bytes): 1 GiB.
DEFAULT_MEMORY_BUDGET = 1 << 30

_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8
#: With mini-batches, the exact (full-data) error is evaluated every this many steps and at the last one.
_EVAL_EVERY = 10
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40, "tb": 1000**4, "t": 1000**4}


# ------------------------------------------------------------------------------------------------ report


@dataclass(frozen=True)
class AdaPruneLayerReport:
    """What AdaPrune did to one layer. Errors are mean squared errors per output value over every
    calibration row (token or position) against the target output.

    Attributes:
        name: qualified module name.
        kind: module class name (``"Linear"``, ``"Conv2d"``).
        shape: weight shape.
        pattern: the pattern, e.g. ``"4:8-T"``.
        rows: calibration rows (tokens / output positions) in the statistics.
        stored_rows: rows kept for mini-batch steps (``0`` with ``batch_size=None``).
        target_power: mean squared target output (divide an error by it for a relative error).
        error_dense: error of the unpruned layer on its recorded input (``0`` unless earlier layers were
            pruned first and the target is the dense model's output).
        error_before: error right after masking (with absorb-mean when on), before optimisation.
        error_after: error of the weights left in the model; never above ``error_before``.
        best_iteration: Adam step whose weights were kept (``0`` = the masked starting point).
        iterations: Adam steps run.
        seconds: wall time for this layer (recording and optimisation).
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    pattern: str
    rows: int
    stored_rows: int
    target_power: float
    error_dense: float
    error_before: float
    error_after: float
    best_iteration: int
    iterations: int
    seconds: float

    @property
    def relative_before(self) -> float:
        """``error_before / target_power``."""
        return self.error_before / self.target_power if self.target_power > 0 else 0.0

    @property
    def relative_after(self) -> float:
        """``error_after / target_power``."""
        return self.error_after / self.target_power if self.target_power > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Fields plus the relative errors, JSON-ready."""
        out = asdict(self)
        out["shape"] = list(self.shape)
        out["relative_before"] = self.relative_before
        out["relative_after"] = self.relative_after
        return out


# ------------------------------------------------------------------------------------------ small helpers


def parse_memory(value: int | str) -> int:
    """Bytes from an int or a string such as ``"512MiB"``, ``"2GiB"``, ``"1.5GB"``.

    Raises:
        ConfigError: not a positive size.

    Example:
        >>> parse_memory("2GiB"), parse_memory(4096)
        (2147483648, 4096)
    """
    if isinstance(value, bool):
        raise ConfigError(f"memory_budget: expected bytes or a size such as '1GiB', got {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ConfigError(
                f"memory_budget: cannot read {value!r}; write a number of bytes or a size such as '512MiB', "
                f"'2GiB', '1.5GB'"
            )
        number = int(float(match.group(1)) * _UNITS[unit])
    else:
        raise ConfigError(f"memory_budget: expected bytes or a size such as '1GiB', got {type(value).__name__}")
    if number <= 0:
        raise ConfigError(f"memory_budget: must be positive, got {value!r}")
    return number


def _feed(model: nn.Module, batch: Any) -> Any:
    """``model(**batch)`` for a mapping, ``model(*batch)`` for a tuple or list, ``model(batch)`` otherwise."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def _call_style(batch: Any) -> str:
    if isinstance(batch, Mapping):
        return "model(**batch)"
    if isinstance(batch, (tuple, list)):
        return "model(*batch)"
    return "model(batch)"


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {key: _to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, tuple):
        return tuple(_to_device(value, device) for value in batch)
    if isinstance(batch, list):
        return [_to_device(value, device) for value in batch]
    return batch


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _token_mask(batch: Any) -> torch.Tensor | None:
    """``attention_mask`` of a transformers-style batch (``[B, T]``, nonzero = real token), else ``None``."""
    if isinstance(batch, Mapping):
        mask = batch.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            return mask != 0
    return None


def _materialise(calibration: Iterable[Any]) -> list[Any]:
    if isinstance(calibration, (torch.Tensor, str, bytes, Mapping)):
        raise InputError(
            f"adaprune_: calibration must be an iterable of batches (a list, a DataLoader, ...), got a single "
            f"{type(calibration).__name__}; wrap one batch in a list: [batch]"
        )
    try:
        batches = list(calibration)
    except TypeError as exc:
        raise InputError(
            f"adaprune_: calibration must be an iterable of batches, got {type(calibration).__name__}"
        ) from exc
    if not batches:
        raise InputError(
            "adaprune_: the calibration set is empty; pass at least one batch (e.g. a list of input tensors, "
            "or dicts of tokenizer outputs)"
        )
    return batches


def _check_positive_int(name: str, value: object, *, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"adaprune_: {name} must be an int >= {low}, got {value!r}")
    return value


def _check_rate(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"adaprune_: {name} must be a finite number >= 0, got {value!r}")
    return float(value)


class _StopForward(Exception):
    """Raised by a hook once every layer of interest has been seen: the rest of the forward is not needed."""


# ------------------------------------------------------------------------------------------- layer views


@dataclass
class _Layer:
    """A selected layer seen as ``groups`` independent row maps ``[rows, K] -> [rows, out]``."""

    name: str
    module: nn.Module
    groups: int
    k: int  # reduction size per group (in, or in/groups * kh * kw)
    out: int  # outputs per group
    bias: bool
    calls: list[int] = field(default_factory=list)  # calls per forward, per calibration batch
    rows: list[int] = field(default_factory=list)  # rows per batch (after padding filter)

    @property
    def kind(self) -> str:
        return type(self.module).__name__

    @property
    def width(self) -> int:
        """Columns of the augmented input ``[X 1]``."""
        return self.k + int(self.bias)

    def stats_bytes(self) -> int:
        return 8 * self.groups * (self.width * self.width + self.width * self.out + 1)

    def row_bytes(self) -> int:
        """Bytes to store one row of ``[X 1]`` and ``Y`` in float32."""
        return 4 * self.groups * (self.width + self.out)

    def input_rows(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """Module input -> ``[R, groups, K]`` float32 rows (unfolded patches for a conv)."""
        if isinstance(self.module, nn.Conv2d):
            conv = self.module
            pad = conv._reversed_padding_repeated_twice
            mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
            if any(pad):
                x = F.pad(x, pad, mode=mode)
            patches = F.unfold(x, conv.kernel_size, dilation=conv.dilation, stride=conv.stride)  # [B, C*kh*kw, L]
            rows = patches.transpose(1, 2).reshape(-1, self.groups, self.k)
        else:
            rows = x.reshape(-1, self.groups, self.k)
            if keep is not None:
                rows = rows[keep]
        return rows.float()

    def output_rows(self, y: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """Module output -> ``[R, groups, out]`` float32 rows, in the order of :meth:`input_rows`."""
        if isinstance(self.module, nn.Conv2d):
            rows = y.permute(0, 2, 3, 1).reshape(-1, self.groups, self.out)
        else:
            rows = y.reshape(-1, self.groups, self.out)
            if keep is not None:
                rows = rows[keep]
        return rows.float()

    def row_filter(self, x: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor | None:
        """Rows to keep for a Linear whose input is ``[B, T, in]`` and matches the batch's attention mask."""
        if token_mask is None or isinstance(self.module, nn.Conv2d):
            return None
        if x.dim() == 3 and tuple(x.shape[:2]) == tuple(token_mask.shape):
            return token_mask.reshape(-1).to(x.device)
        return None

    def natural(self, weight: torch.Tensor) -> torch.Tensor:
        """Weight -> ``[groups, out, K]`` (conv: ``(in/groups, kh, kw)`` order, the order of unfolded patches)."""
        return weight.reshape(self.groups, self.out, self.k)


def _make_layer(name: str, module: nn.Module) -> _Layer:
    weight = module.weight
    out_total = int(weight.shape[0])
    groups = int(getattr(module, "groups", 1) or 1) if isinstance(module, nn.Conv2d) else 1
    k = int(weight[0].numel())
    return _Layer(name=name, module=module, groups=groups, k=k, out=out_total // groups,
                  bias=getattr(module, "bias", None) is not None)


def _hook_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    if args:
        return args[0]
    return next(iter(kwargs.values()))


# ------------------------------------------------------------------------------------------- statistics


class _Stats:
    """Running ``G = sum [x 1]^T [x 1]``, ``C = sum [x 1]^T y``, ``sum y^2`` and rows, per group, in float64;
    plus a seeded random subset of rows for mini-batch steps when asked."""

    def __init__(self, layer: _Layer, device: torch.device, *, keep_fraction: float, store: bool,
                 seed: int, validation: float = 0.0) -> None:
        self.layer = layer
        g, w, o = layer.groups, layer.width, layer.out
        self.gram = torch.zeros(g, w, w, dtype=torch.float64, device=device)
        self.cross = torch.zeros(g, w, o, dtype=torch.float64, device=device)
        self.yy = torch.zeros((), dtype=torch.float64, device=device)
        self.rows = 0
        # held-out rows (a seeded random share ``validation``), also included in the totals above
        self.validation = validation
        self.gram_val = torch.zeros_like(self.gram) if validation > 0 else None
        self.cross_val = torch.zeros_like(self.cross) if validation > 0 else None
        self.rows_val = 0
        self.keep_fraction = keep_fraction
        self.seed = seed
        self._chunk = 0
        self._filled = 0
        self._x: torch.Tensor | None = None
        self._y: torch.Tensor | None = None
        if store:
            # Preallocated once, so the stored rows never exceed their share of the memory budget.
            capacity = sum(self._kept(rows) for rows in layer.rows)
            self._x = torch.empty(capacity, g, w, dtype=torch.float32, device=device)
            self._y = torch.empty(capacity, g, o, dtype=torch.float32, device=device)

    def _kept(self, count: int) -> int:
        return count if self.keep_fraction >= 1 else int(count * self.keep_fraction)

    def add(self, x_rows: torch.Tensor, y_rows: torch.Tensor) -> None:
        if x_rows.shape[0] != y_rows.shape[0]:
            raise InputError(
                f"adaprune_: layer {self.layer.name!r} produced {y_rows.shape[0]} output rows for "
                f"{x_rows.shape[0]} input rows; the model's forward is not deterministic in shape"
            )
        if x_rows.shape[0] == 0:
            return
        if self.layer.bias:
            x_rows = torch.cat([x_rows, x_rows.new_ones(x_rows.shape[0], x_rows.shape[1], 1)], dim=2)
        xt = x_rows.transpose(0, 1)  # [g, R, w]
        yt = y_rows.transpose(0, 1)  # [g, R, o]
        self.gram += (xt.transpose(1, 2) @ xt).double()
        self.cross += (xt.transpose(1, 2) @ yt).double()
        self.yy += y_rows.double().square().sum()
        self.rows += int(x_rows.shape[0])
        if self.gram_val is not None and self.cross_val is not None:
            generator = torch.Generator().manual_seed(self.seed * 1_000_033 + self._chunk)
            held = (torch.rand(x_rows.shape[0], generator=generator) < self.validation).to(x_rows.device)
            xv, yv = x_rows[held].transpose(0, 1), y_rows[held].transpose(0, 1)
            self.gram_val += (xv.transpose(1, 2) @ xv).double()
            self.cross_val += (xv.transpose(1, 2) @ yv).double()
            self.rows_val += int(held.sum())
            x_rows, y_rows = x_rows[~held], y_rows[~held]  # mini-batch steps never see held-out rows
        if self._x is not None and self._y is not None:
            count = int(x_rows.shape[0])
            keep = min(self._kept(count), self._x.shape[0] - self._filled)
            if keep < count:
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self._chunk)
                index = torch.randperm(count, generator=generator)[:keep].to(x_rows.device)
                x_rows, y_rows = x_rows[index], y_rows[index]
            self._x[self._filled:self._filled + keep] = x_rows
            self._y[self._filled:self._filled + keep] = y_rows
            self._filled += keep
        self._chunk += 1

    @property
    def stored_bytes(self) -> int:
        """Bytes held by the stored rows (preallocated)."""
        if self._x is None or self._y is None:
            return 0
        return self._x.numel() * 4 + self._y.numel() * 4

    def stored(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The stored ``[R, g, w]`` input rows and ``[R, g, o]`` target rows (``None`` when none)."""
        if self._x is None or self._y is None or self._filled == 0:
            return None
        return self._x[: self._filled], self._y[: self._filled]


def _error(w_aug: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor, yy: torch.Tensor, rows: int,
           outputs: int) -> float:
    """Exact float64 MSE per output value of ``[g, o, w]`` augmented weights from the statistics."""
    w = w_aug.double()
    total = ((w @ gram) * w).sum() - 2.0 * (w * cross.transpose(1, 2)).sum() + yy
    return max(float(total), 0.0) / (rows * outputs)


# ------------------------------------------------------------------------------------------------ passes


class _Recorder:
    """Hooks that capture the inputs and/or outputs of some layers during one forward, then stop it early."""

    def __init__(self, modules: Mapping[str, nn.Module], *, inputs: bool, outputs: bool,
                 calls: Mapping[str, int]) -> None:
        self.inputs = inputs
        self.outputs = outputs
        self.calls = dict(calls)
        self.seen: dict[str, list[tuple[torch.Tensor | None, torch.Tensor | None]]] = {n: [] for n in modules}
        self.modules = dict(modules)
        self.handles: list[Any] = []

    def __enter__(self) -> _Recorder:
        for name, module in self.modules.items():
            self.handles.append(module.register_forward_hook(self._hook(name), with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def reset(self, calls: Mapping[str, int]) -> None:
        self.calls = dict(calls)
        for captured in self.seen.values():
            captured.clear()

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            captured = self.seen[name]
            if len(captured) >= self.calls.get(name, 0):
                return
            x = _hook_input(args, kwargs).detach() if self.inputs else None
            y = output.detach() if self.outputs else None
            captured.append((x, y))
            if all(len(self.seen[n]) >= self.calls.get(n, 0) for n in self.seen):
                raise _StopForward

        return hook


def _run(model: nn.Module, batch: Any) -> None:
    with contextlib.suppress(_StopForward):
        _feed(model, batch)


def _probe(model: nn.Module, batches: Sequence[Any], layers: dict[str, _Layer], device: torch.device,
           ignore_padding: bool) -> list[list[str]]:
    """Run every batch once: validate it, and record call counts, rows and the execution order.

    Returns:
        The layers that ran, in execution order, cut into *sibling units*: runs of consecutive layers that
        receive the very same input tensor in every call (e.g. the query, key and value projections of an
        attention block). Pruning one of them cannot change the others' inputs, so a unit is recorded in one
        pass.
    """
    order: list[str] = []
    counts: dict[str, int] = {}
    rows: dict[str, int] = {}
    keys: dict[str, list[int]] = {}
    seen_inputs: list[weakref.ref[torch.Tensor]] = []
    signatures: dict[str, list[tuple[int, ...]]] = {name: [] for name in layers}
    token: torch.Tensor | None = None

    def input_key(x: torch.Tensor) -> int:
        for key, ref in enumerate(seen_inputs):
            if ref() is x:
                return key
        seen_inputs.append(weakref.ref(x))
        return len(seen_inputs) - 1

    def hook_for(name: str) -> Callable[..., None]:
        layer = layers[name]

        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            x = _hook_input(args, kwargs)
            if name not in order:
                order.append(name)
            counts[name] = counts.get(name, 0) + 1
            keys.setdefault(name, []).append(input_key(x))
            keep = layer.row_filter(x, token) if ignore_padding else None
            if isinstance(layer.module, nn.Conv2d):
                count = int(output.shape[0] * output.shape[2] * output.shape[3])
            else:
                count = int(keep.sum()) if keep is not None else int(x.numel() // (layer.k * layer.groups))
            rows[name] = rows.get(name, 0) + count

        return hook

    handles = [layer.module.register_forward_hook(hook_for(name), with_kwargs=True)
               for name, layer in layers.items()]
    try:
        for index, raw in enumerate(batches):
            batch = _to_device(raw, device)
            token = _token_mask(batch)
            counts.clear()
            rows.clear()
            keys.clear()
            seen_inputs.clear()
            try:
                _feed(model, batch)
            except Exception as exc:  # noqa: BLE001 - re-raised with the batch and call style named
                raise InputError(
                    f"adaprune_: calibration batch {index} cannot be fed to the model as {_call_style(raw)}: "
                    f"{type(exc).__name__}: {' '.join(str(exc).split())}; every batch must be a valid model "
                    f"input (a dict is passed as keyword arguments, a tuple/list as positional arguments)"
                ) from exc
            for name, layer in layers.items():
                layer.calls.append(counts.get(name, 0))
                layer.rows.append(rows.get(name, 0))
                signatures[name].append(tuple(keys.get(name, ())))
    finally:
        for handle in handles:
            handle.remove()
        seen_inputs.clear()
    units: list[list[str]] = []
    for name in order:
        if units and signatures[units[-1][-1]] == signatures[name]:
            units[-1].append(name)
        else:
            units.append([name])
    return units


# ------------------------------------------------------------------------------------------ optimisation


def _absorb_mean(weight: torch.Tensor, mask: torch.Tensor, m: int) -> torch.Tensor:
    """``weight * mask`` with each group's pruned sum shared equally among its kept weights."""
    w = to_matrix(weight).reshape(-1, m)
    k = to_matrix(mask).reshape(-1, m).to(w.dtype)
    kept = k.sum(dim=1, keepdim=True)
    pruned_sum = (w * (1 - k)).sum(dim=1, keepdim=True)
    shifted = (w + pruned_sum / kept.clamp_min(1)) * k
    return from_matrix(shifted.reshape(to_matrix(weight).shape), weight.shape)


def _survivor_scores(weight: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Scores in which every non-zero weight outranks every zero one (conversion of sparse models)."""
    alive = weight != 0
    if bool(alive.all()):
        return scores
    return scores + alive.to(scores.dtype) * (scores.max() + 1.0)


@dataclass
class _Fit:
    w_aug: torch.Tensor  # [g, o, w] float32, masked
    error_before: float
    error_after: float
    best_iteration: int
    iterations: int


def _optimise(layer: _Layer, stats: _Stats, start: torch.Tensor, mask_aug: torch.Tensor, *, iterations: int,
              batch_rows: int | None, lr: float, bias_lr: float, seed: int,
              tick: Callable[[], None] | None = None) -> _Fit:
    """Adam on the masked augmented weights ``[g, o, w]`` from ``start``, keeping the best iterate.

    Full batch (``batch_rows=None``): the exact gradient ``2 (W G - C^T) / (rows * outputs)`` from the
    statistics. Mini-batch: gradients on ``batch_rows`` stored rows. Iterates are ranked by their exact error on
    every calibration row (full batch: every step, for free; mini-batch: every ``_EVAL_EVERY`` steps) or, with a
    validation share, on the held-out rows only (every ``_EVAL_EVERY`` steps; gradients then use the other
    rows). The returned weights are never worse than ``start`` by the exact float64 error over all rows.
    """
    outputs = layer.groups * layer.out
    rows = stats.rows
    error_start = _error(start, stats.gram, stats.cross, stats.yy, rows, outputs)
    if iterations == 0 or rows == 0:
        return _Fit(start.clone(), error_start, error_start, 0, 0)
    held_out = stats.gram_val is not None and stats.cross_val is not None and 0 < stats.rows_val < rows
    if held_out:
        fit_rows = rows - stats.rows_val
        gram_fit = ((stats.gram - stats.gram_val) / fit_rows).float()
        cross_fit = ((stats.cross - stats.cross_val) / fit_rows).transpose(1, 2).float().contiguous()
        gram_sel = (stats.gram_val / stats.rows_val).float()
        cross_sel = (stats.cross_val / stats.rows_val).transpose(1, 2).float().contiguous()
    else:
        gram_fit = gram_sel = (stats.gram / rows).float()
        cross_fit = cross_sel = (stats.cross / rows).transpose(1, 2).float().contiguous()  # [g, o, w]
    stored = stats.stored() if batch_rows is not None else None
    every = 1 if stored is None and not held_out else _EVAL_EVERY
    mask_f = mask_aug.to(start.dtype)
    lr_cols = torch.full((layer.width,), lr, dtype=start.dtype, device=start.device)
    if layer.bias:
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
    error_best = _error(best_w, stats.gram, stats.cross, stats.yy, rows, outputs)
    if error_best > error_start:  # float32 ranking noise near the start, or a held-out pick: keep the start
        return _Fit(start.clone(), error_start, error_start, 0, iterations)
    return _Fit(best_w, error_start, error_best, best_it, iterations)


# ------------------------------------------------------------------------------------------ batch norm


def recalibrate_batchnorm_(model: nn.Module, calibration: Iterable[Any]) -> int:
    """Re-estimate the running mean and variance of every batch-norm layer on the calibration data, in place.

    Pruning shifts each layer's output distribution, so the statistics recorded on the dense model no longer
    match. Each ``_BatchNorm`` that tracks running statistics is reset and switched to a cumulative average
    (``momentum=None``) in training mode, every other module is in eval mode (no dropout), and every batch is
    fed once without gradients; momentum and train/eval modes are restored afterwards.

    Args:
        model: the model; its batch-norm buffers are overwritten.
        calibration: iterable of batches, fed as in :func:`adaprune_`.

    Returns:
        The number of batch-norm layers re-estimated (``0``: the model has none, nothing was run).

    Raises:
        InputError: an empty calibration set, or a batch the model cannot take.
    """
    norms = [m for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    batches = _materialise(calibration)
    device = _model_device(model)
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in norms}
    try:
        model.eval()
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        with torch.no_grad():
            for index, raw in enumerate(batches):
                try:
                    _feed(model, _to_device(raw, device))
                except Exception as exc:  # noqa: BLE001 - re-raised with the batch named
                    raise InputError(
                        f"recalibrate_batchnorm_: calibration batch {index} cannot be fed to the model as "
                        f"{_call_style(raw)}: {type(exc).__name__}: {exc}"
                    ) from exc
    finally:
        for bn, momentum in momenta.items():
            bn.momentum = momentum
        for module, training in modes.items():
            module.train(training)
    return len(norms)


# ------------------------------------------------------------------------------------------------ driver


def _batch_samples(batch: Any) -> int:
    """Samples in a batch: dim 0 of its first tensor (``1`` when it has none)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    values: Iterable[Any] = batch.values() if isinstance(batch, Mapping) else (
        batch if isinstance(batch, (tuple, list)) else ())
    for value in values:
        if isinstance(value, torch.Tensor) and value.dim():
            return int(value.shape[0])
    return 1


def _fold_existing_masks(module: nn.Module) -> None:
    """Make ``module.weight`` a plain parameter: bake in an nmsparse mask or a ``torch.nn.utils.prune`` mask.

    The weight becomes what the layer computes with, ``original * mask`` (also for a straight-through mask:
    the pruned weights are dead from here on); the new mask is then chosen preferring the surviving (non-zero)
    weights.
    """
    if _nm_mask(module) is not None:
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
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


def adaprune_(model: nn.Module, calibration: Iterable[Any], pattern: PatternLike, *,
              method: Method | str = "auto", scores: Literal["magnitude", "activation"] = "magnitude",
              include: Sequence[str] | None = None, exclude: Sequence[str] | None = None,
              iterations: int = 1000, batch_size: int | None = 50, lr: float = 1e-3, bias_lr: float = 1e-2,
              absorb_mean: bool = True, keep_first_last: bool = True, sequential: bool = True,
              target: Literal["model", "layer"] = "model", memory_budget: int | str = DEFAULT_MEMORY_BUDGET,
              recalibrate_bn: bool = True, ignore_padding: bool = True, validation: float = 0.0, seed: int = 0,
              progress: bool | None = None) -> list[AdaPruneLayerReport]:
    """Prune ``model`` to ``pattern`` in place with AdaPrune: masks, then layer-wise calibration, no training.

    Every layer chosen as in :func:`~nmsparse.prune_` (Linear and Conv2d, ``include``/``exclude`` globs,
    ``keep_first_last``, shape fit) is processed in execution order: its input and target output are recorded
    on the calibration data with forward hooks, its mask is chosen (``scores``) and applied with absorb-mean,
    and Adam minimises the layer's output MSE with the mask fixed, keeping the best iterate. The layer then
    carries a static :class:`~nmsparse.NMMask`, so :func:`~nmsparse.squash_masks_`,
    :func:`~nmsparse.get_masks` and state dicts work as after :func:`~nmsparse.prune_`. Finally batch-norm
    statistics are re-estimated on the calibration data (:func:`recalibrate_batchnorm_`).

    Sparse models are converted: weights that are exactly zero (an unstructured-sparse model, a layer pruned
    with ``torch.nn.utils.prune``, or a static nmsparse mask, all baked in first) are never kept in preference to
    surviving ones, so the new n:m or n:m-T mask is chosen among the survivors.

    Args:
        model: the trained model; pruned in place. Its device is used for everything.
        calibration: iterable of batches (a list, a DataLoader, ...), read several times; a one-shot iterator
            is materialised first. Each batch is fed as ``model(**batch)`` for a mapping (e.g. tokenizer
            output), ``model(*batch)`` for a tuple or list, ``model(batch)`` otherwise.
        pattern: ``"2:4"``, ``"4:8-T"``, ... or an :class:`~nmsparse.NMPattern`.
        method: :func:`~nmsparse.find_mask` method (``"auto"``: top-n for plain, exact for ``-T`` patterns).
        scores: ``"magnitude"`` (``|w|``, the paper) or ``"activation"`` (``|w| * ||x||_2`` of the input
            column over the calibration rows, as in Wanda; usually better for transformers).
        include: *optional* fnmatch globs on qualified module names; only matching layers are pruned.
        exclude: *optional* globs; matching layers stay dense.
        iterations: Adam steps per layer (``0``: masks with absorb-mean only).
        batch_size: calibration samples per Adam step (their rows: tokens or positions), as in the paper;
            ``None`` steps on the exact full-batch gradient from the statistics (no rows are stored; usually
            faster for wide layers and smoother).
        lr: Adam learning rate of the weights.
        bias_lr: Adam learning rate of the bias.
        absorb_mean: share each group's pruned sum among its kept weights before optimising.
        keep_first_last: keep the model's first and last Linear/Conv2d dense (the paper's default).
        sequential: record each layer's input from the model with its earlier layers already pruned (more
            accurate); ``False``: the paper's parallel version, all inputs from the dense model.
        target: with ``sequential=True``, what each layer is fitted to: ``"model"`` (the dense model's output
            of that layer; needs a copy of the model) or ``"layer"`` (the layer's own dense output on its
            pruned-path input, as in GPTQ/SparseGPT; no copy).
        memory_budget: bytes (or ``"512MiB"``, ``"2GiB"``, ...) for what is recorded and held at once: the
            statistics and stored rows of the layers being fitted and, with ``target="model"``, the dense
            model's outputs recorded ahead (half the budget each). Stored rows are a seeded random subset of
            tokens/positions when they do not all fit; the statistics always cover every row. Not counted: the
            model (and its dense copy with ``target="model"``) and one batch's activations. Default 1 GiB.
        recalibrate_bn: re-estimate batch-norm statistics afterwards (only where the model has batch norm).
        ignore_padding: leave out rows of padding tokens (``attention_mask == 0`` in a mapping batch) for
            Linear layers whose input is ``[batch, tokens, features]``.
        validation: share of calibration rows (tokens / positions) held out from the gradient and used only to
            pick the best iterate (early stopping against over-fitting a small calibration set); ``0``: the
            best iterate by the error on all rows. The reported errors always cover all rows.
        seed: seed of the row subsets and mini-batch order.
        progress: progress bars (layers, and Adam steps per layer) on stderr; ``None`` = only on a terminal.

    Returns:
        One :class:`AdaPruneLayerReport` per pruned layer, in processing (execution) order.

    Raises:
        PatternError: unparseable pattern.
        ConfigError: bad option values, no layer that can take the pattern, or a memory budget too small for
            one layer's statistics.
        InputError: an empty calibration set, or a batch the model cannot take (the message names it).

    Example:
        >>> import torch, nmsparse
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
        >>> data = [torch.randn(64, 16) for _ in range(4)]
        >>> report = nmsparse.adaprune_(model, data, "2:4", keep_first_last=False, iterations=200)
        >>> [r.name for r in report], all(r.error_after <= r.error_before for r in report)
        (['0', '2'], True)
        >>> nmsparse.is_nm_sparse(model[0].weight, "2:4")
        True
    """
    pattern = NMPattern.parse(pattern)
    method = _check_method(method, pattern, where="adaprune_")
    if scores not in ("magnitude", "activation"):
        raise ConfigError(f"adaprune_: scores must be 'magnitude' or 'activation', got {scores!r}")
    if target not in ("model", "layer"):
        raise ConfigError(f"adaprune_: target must be 'model' or 'layer', got {target!r}")
    iterations = _check_positive_int("iterations", iterations, allow_zero=True)
    if batch_size is not None:
        batch_size = _check_positive_int("batch_size", batch_size)
    lr = _check_rate("lr", lr)
    bias_lr = _check_rate("bias_lr", bias_lr)
    if (isinstance(validation, bool) or not isinstance(validation, (int, float)) or not math.isfinite(validation)
            or not 0 <= validation < 1):
        raise ConfigError(f"adaprune_: validation must be a share in [0, 1), e.g. 0.1; got {validation!r}")
    budget = parse_memory(memory_budget)
    for flag_name, flag in (("absorb_mean", absorb_mean), ("keep_first_last", keep_first_last),
                            ("sequential", sequential), ("recalibrate_bn", recalibrate_bn),
                            ("ignore_padding", ignore_padding)):
        if not isinstance(flag, bool):
            raise ConfigError(f"adaprune_: {flag_name} must be a bool, got {flag!r}")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"adaprune_: model must be a torch.nn.Module, got {type(model).__name__}")

    selection, _ = _select(model, pattern, include=include, exclude=exclude, keep_first_last=keep_first_last,
                           module_types=(nn.Linear, nn.Conv2d))
    require_selected(selection, pattern, where="adaprune_")
    batches = _materialise(calibration)
    device = _model_device(model)
    layers = {name: _make_layer(name, module) for name, module in selection.selected.items()}
    samples = sum(_batch_samples(b) for b in batches)

    was_training = {m: m.training for m in model.modules()}
    model.eval()
    reference: nn.Module | None = None
    bars: _Bars | None = None
    try:
        with torch.no_grad():
            units = _probe(model, batches, layers, device, ignore_padding)
        order = [name for unit in units for name in unit]
        unused = [name for name in layers if name not in order]
        if unused:
            logger.warning("adaprune_: %d selected layer(s) never ran on the calibration data and stay dense: %s",
                           len(unused), ", ".join(unused))
        if not order:
            raise ConfigError("adaprune_: none of the selected layers ran on the calibration data; nothing to prune")
        # With target="model", half the budget holds the dense model's recorded outputs (the targets).
        cached_targets = sequential and target == "model"
        work_budget = budget // 2 if cached_targets else budget
        for name in order:
            layer = layers[name]
            if layer.stats_bytes() > work_budget:
                raise ConfigError(
                    f"adaprune_: layer {layer.name!r} needs {layer.stats_bytes() / 2**20:.1f} MiB for its "
                    f"statistics but memory_budget allows {work_budget / 2**20:.1f} MiB for them"
                    + (" (the other half holds recorded targets)" if cached_targets else "")
                    + "; raise memory_budget or exclude the layer"
                )
        settings = _Settings(pattern=pattern, method=method, scores=scores, iterations=iterations,
                             batch_size=batch_size, samples=samples, lr=lr, bias_lr=bias_lr,
                             absorb_mean=absorb_mean, ignore_padding=ignore_padding, seed=seed,
                             budget=work_budget, target_budget=budget - work_budget, validation=validation)
        plan = _plan_units([[layers[n] for n in unit] for unit in units], settings, sequential=sequential)
        for name in order:
            _fold_existing_masks(layers[name].module)
        if sequential and target == "model":
            try:
                reference = copy.deepcopy(model).eval()
            except (RuntimeError, TypeError) as exc:
                raise ConfigError(
                    f"adaprune_: target='model' needs a copy of the dense model, and copy.deepcopy failed "
                    f"({exc}); pass target='layer' (no copy) or sequential=False"
                ) from exc
        bars = _Bars(progress_enabled(progress), len(order), f"adaprune {pattern}")
        reports = _process(model, reference, plan, batches, device, settings, bars, defer=not sequential)
    finally:
        if bars is not None:
            bars.close()
        for module, training in was_training.items():
            module.train(training)
        del reference
    if recalibrate_bn:
        count = recalibrate_batchnorm_(model, batches)
        if count:
            logger.info("adaprune_: re-estimated %d batch-norm layer(s) on the calibration data", count)
    return reports


@dataclass(frozen=True)
class _Settings:
    pattern: NMPattern
    method: str
    scores: str
    iterations: int
    batch_size: int | None
    samples: int
    lr: float
    bias_lr: float
    absorb_mean: bool
    ignore_padding: bool
    seed: int
    budget: int  # statistics and stored rows of the unit being fitted
    target_budget: int  # recorded dense-model outputs (sequential, target="model")
    validation: float = 0.0

    @property
    def store(self) -> bool:
        """Whether rows are stored for mini-batch steps."""
        return self.batch_size is not None and self.iterations > 0


def _full_need(layer: _Layer, s: _Settings) -> int:
    """Bytes of a layer's statistics plus all its rows when stored."""
    return layer.stats_bytes() + (sum(layer.rows) * layer.row_bytes() if s.store else 0)


def _plan_units(units: list[list[_Layer]], s: _Settings, *, sequential: bool) -> list[list[_Layer]]:
    """Layers recorded together in one pass, each unit within the memory budget.

    Sequential: sibling units (same input tensor), split where their statistics and rows would not fit.
    Parallel: consecutive layers packed into passes while their full needs fit.
    """
    source = units if sequential else [[layer for unit in units for layer in unit]]
    plan: list[list[_Layer]] = []
    for unit in source:
        used = s.budget + 1
        for layer in unit:
            need = _full_need(layer, s)
            if used + need > s.budget:
                plan.append([])
                used = 0
            plan[-1].append(layer)
            used += need
    return plan


def _keep_fraction(layer: _Layer, share: int, store: bool) -> float:
    """Fraction of rows a layer may store in ``share`` bytes next to its statistics."""
    if not store:
        return 1.0
    need = sum(layer.rows) * layer.row_bytes()
    room = share - layer.stats_bytes()
    return 1.0 if need <= room else max(room, 0) / need


class _TargetCache:
    """Target rows (the dense reference model's layer outputs) recorded ahead, for several layers per pass.

    A reference pass records the outputs of as many upcoming layers (in execution order) as fit in the target
    half of the memory budget; a unit whose targets alone do not fit is recorded in lockstep instead (a
    reference forward next to each working forward, nothing kept).
    """

    def __init__(self, reference: nn.Module, plan: list[list[_Layer]], batches: list[Any], device: torch.device,
                 s: _Settings) -> None:
        self.reference = reference
        self.modules = dict(reference.named_modules())
        self.order = [layer for unit in plan for layer in unit]
        self.batches = batches
        self.device = device
        self.s = s
        self.cache: dict[str, list[list[torch.Tensor]]] = {}
        self.limit = s.target_budget

    @staticmethod
    def target_bytes(layer: _Layer) -> int:
        return 4 * sum(layer.rows) * layer.groups * layer.out

    def fits(self, unit: list[_Layer]) -> bool:
        return sum(self.target_bytes(layer) for layer in unit) <= self.limit

    def ensure(self, unit: list[_Layer]) -> None:
        """Record targets for ``unit`` and the layers after it that fit, unless already recorded."""
        if all(layer.name in self.cache for layer in unit):
            return
        start = self.order.index(unit[0])
        chosen: list[_Layer] = []
        used = 0
        for layer in self.order[start:]:
            need = self.target_bytes(layer)
            if used + need > self.limit and len(chosen) >= len(unit):
                break
            chosen.append(layer)
            used += need
        for layer in chosen:
            self.cache[layer.name] = []
        modules = {layer.name: self.modules[layer.name] for layer in chosen}
        with torch.no_grad(), _Recorder(modules, inputs=True, outputs=True, calls={}) as rec:
            for b, raw in enumerate(self.batches):
                calls = {layer.name: layer.calls[b] for layer in chosen}
                batch = _to_device(raw, self.device)
                if any(calls.values()):
                    rec.reset(calls)
                    _run(self.reference, batch)
                token = _token_mask(batch) if self.s.ignore_padding else None
                for layer in chosen:
                    seen = rec.seen[layer.name] if calls[layer.name] else []
                    self.cache[layer.name].append(
                        [layer.output_rows(y, layer.row_filter(x, token)) for x, y in seen])

    def pop(self, layer: _Layer, batch: int) -> list[torch.Tensor]:
        """Targets of ``layer`` for one batch (released as they are used)."""
        rows = self.cache[layer.name][batch]
        self.cache[layer.name][batch] = []
        return rows

    def drop(self, layer: _Layer) -> None:
        self.cache.pop(layer.name, None)


def _collect(stats: _Stats, layer: _Layer, xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor],
             token: torch.Tensor | None, *, ys_are_rows: bool = False) -> None:
    if len(xs) != len(ys):
        raise InputError(
            f"adaprune_: layer {layer.name!r} ran {len(xs)} time(s) in the pruned model but {len(ys)} time(s) "
            f"in the dense reference on the same batch; models whose control flow depends on the weights need "
            f"target='layer'"
        )
    for x, y in zip(xs, ys):
        keep = layer.row_filter(x, token)
        stats.add(layer.input_rows(x, keep), y if ys_are_rows else layer.output_rows(y, keep))


def _process(model: nn.Module, reference: nn.Module | None, plan: list[list[_Layer]], batches: list[Any],
             device: torch.device, s: _Settings, bars: _Bars, *, defer: bool) -> list[AdaPruneLayerReport]:
    """Record, mask and optimise every unit of ``plan`` in order.

    ``reference`` given: targets come from it (the dense model; sequential mode). ``defer``: install the
    results only at the end, so that every unit is recorded on the dense model (parallel mode).
    """
    cache = _TargetCache(reference, plan, batches, device, s) if reference is not None else None
    ref_modules = dict(reference.named_modules()) if reference is not None else {}
    pending: list[tuple[_Layer, torch.Tensor, torch.Tensor]] = []
    reports: list[AdaPruneLayerReport] = []
    index = 0
    for unit in plan:
        began = time.perf_counter()
        lockstep = cache is not None and not cache.fits(unit)
        if cache is not None and not lockstep:
            cache.ensure(unit)
        # a unit holds several layers only when all of them fit whole; a lone layer shares nothing
        share = s.budget if len(unit) == 1 else max(_full_need(layer, s) for layer in unit)
        stats = {layer.name: _Stats(layer, device, keep_fraction=_keep_fraction(layer, share, s.store),
                                    store=s.store, seed=s.seed * 7919 + index + i, validation=s.validation)
                 for i, layer in enumerate(unit)}
        modules = {layer.name: layer.module for layer in unit}
        ref_rec = (_Recorder({layer.name: ref_modules[layer.name] for layer in unit}, inputs=False, outputs=True,
                             calls={}) if lockstep else None)
        with torch.no_grad(), _Recorder(modules, inputs=True, outputs=reference is None, calls={}) as rec, \
                (ref_rec if ref_rec is not None else contextlib.nullcontext()):
            for b, raw in enumerate(batches):
                calls = {layer.name: layer.calls[b] for layer in unit}
                if not any(calls.values()):
                    continue
                batch = _to_device(raw, device)
                token = _token_mask(batch) if s.ignore_padding else None
                rec.reset(calls)
                _run(model, batch)
                if ref_rec is not None and reference is not None:
                    ref_rec.reset(calls)
                    _run(reference, batch)
                for layer in unit:
                    xs = [x for x, _ in rec.seen[layer.name]]
                    if cache is not None and not lockstep:
                        _collect(stats[layer.name], layer, xs, cache.pop(layer, b), token, ys_are_rows=True)
                    else:
                        source = ref_rec if ref_rec is not None else rec
                        _collect(stats[layer.name], layer, xs, [y for _, y in source.seen[layer.name]], token)
                rec.reset({})
                if ref_rec is not None:
                    ref_rec.reset({})
        record_seconds = (time.perf_counter() - began) / len(unit)
        for layer in unit:
            tick = bars.start_layer(layer.name, s.iterations)
            began = time.perf_counter()
            w_aug, mask, fit, error_dense = _fit_layer(layer, stats[layer.name], index, s, tick)
            reports.append(_report(layer, stats.pop(layer.name), fit, error_dense, s,
                                   time.perf_counter() - began + record_seconds))
            if defer:
                pending.append((layer, w_aug, mask))
            else:
                _install(layer, w_aug, mask, s.pattern)
            if cache is not None:
                cache.drop(layer)
            bars.end_layer()
            index += 1
    for layer, w_aug, mask in pending:  # parallel mode: only now, after every layer saw dense inputs
        _install(layer, w_aug, mask, s.pattern)
    return reports


def _fit_layer(layer: _Layer, stats: _Stats, index: int, s: _Settings,
               tick: Callable[[], None] | None) -> tuple[torch.Tensor, torch.Tensor, _Fit, float]:
    """Mask (with absorb-mean) and optimise one layer from its statistics."""
    module = layer.module
    weight = module.weight.detach().float()
    bias = module.bias.detach().float() if layer.bias else None
    outputs = layer.groups * layer.out

    def augment(w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        natural = layer.natural(w)
        if b is None:
            return natural.contiguous()
        return torch.cat([natural, b.reshape(layer.groups, layer.out, 1)], dim=2).contiguous()

    error_dense = _error(augment(weight, bias), stats.gram, stats.cross, stats.yy, max(stats.rows, 1), outputs)
    if s.scores == "activation":
        diag = torch.diagonal(stats.gram, dim1=1, dim2=2)[:, : layer.k]  # [g, k] sum of x^2 per column
        norms = diag.clamp_min(0).sqrt().float()
        score = (layer.natural(weight.abs()) * norms.unsqueeze(1)).reshape(weight.shape)
    else:
        score = weight.abs()
    score = _survivor_scores(weight, score)
    mask = layer_mask(module, s.pattern, method=s.method, scores=score, weight=weight)
    start = _absorb_mean(weight, mask, s.pattern.m) if s.absorb_mean else weight * mask
    ones = torch.ones_like(bias) if bias is not None else None
    mask_aug = augment(mask.to(weight.dtype), ones)
    rows_per_step = None
    stored = stats.stored()
    if s.batch_size is not None and stored is not None:
        kept = stored[0].shape[0]
        rows_per_step = max(1, min(kept, round(s.batch_size * kept / max(s.samples, 1))))
    fit = _optimise(layer, stats, augment(start, bias), mask_aug, iterations=s.iterations,
                    batch_rows=rows_per_step, lr=s.lr, bias_lr=s.bias_lr, seed=s.seed * 104729 + index, tick=tick)
    return fit.w_aug, mask, fit, error_dense


def _install(layer: _Layer, w_aug: torch.Tensor, mask: torch.Tensor, pattern: NMPattern) -> None:
    """Write the optimised weights into the layer and attach a static NMMask."""
    module = layer.module
    weight = w_aug[:, :, : layer.k].reshape(module.weight.shape)
    with torch.no_grad():
        module.weight.copy_(weight.to(module.weight.dtype) * mask.to(module.weight.dtype))
        if layer.bias:
            module.bias.copy_(w_aug[:, :, layer.k].reshape(module.bias.shape).to(module.bias.dtype))
    parametrize.register_parametrization(module, "weight", NMMask(mask, pattern=pattern), unsafe=True)


def _report(layer: _Layer, stats: _Stats, fit: _Fit, error_dense: float, s: _Settings,
            seconds: float) -> AdaPruneLayerReport:
    stored = stats.stored()
    report = AdaPruneLayerReport(
        name=layer.name, kind=layer.kind, shape=tuple(int(d) for d in layer.module.weight.shape),
        pattern=str(s.pattern), rows=stats.rows, stored_rows=0 if stored is None else int(stored[0].shape[0]),
        target_power=float(stats.yy) / max(stats.rows * layer.groups * layer.out, 1),
        error_dense=error_dense, error_before=fit.error_before, error_after=fit.error_after,
        best_iteration=fit.best_iteration, iterations=fit.iterations, seconds=seconds,
    )
    logger.info("adaprune_: %s %s: relative error %.4g -> %.4g (best step %d of %d, %.1fs)", layer.name,
                s.pattern, report.relative_before, report.relative_after, fit.best_iteration, fit.iterations,
                seconds)
    return report
