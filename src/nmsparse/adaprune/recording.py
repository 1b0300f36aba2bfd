"""Recording: every selected layer seen as a linear map of rows, and the forward hooks that capture its inputs
and outputs on the calibration data.

A Linear maps token rows ``[rows, in] -> [rows, out]``; a (grouped, strided, dilated, padded) Conv2d maps unfolded
``kh*kw*in/groups`` patches to ``out/groups`` channels per group. :class:`LayerView` turns module inputs and outputs
into those rows; :class:`Recorder` captures them during a forward that stops as soon as every layer of interest
has run; :func:`probe` runs each batch once to validate it and learn call counts, rows and execution order.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from .._calibration import call_style, feed, to_device, token_mask
from ..errors import InputError
from .statistics import LayerStatistics

__all__ = ["LayerView", "make_view", "Recorder", "run_until_recorded", "probe", "TargetCache", "collect"]


class StopForward(Exception):
    """Raised by a hook once every layer of interest has been seen: the rest of the forward is not needed."""


@dataclass
class LayerView:
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


def make_view(name: str, module: nn.Module) -> LayerView:
    weight = cast(torch.Tensor, module.weight)
    out_total = int(weight.shape[0])
    groups = int(getattr(module, "groups", 1) or 1) if isinstance(module, nn.Conv2d) else 1
    k = int(weight[0].numel())
    return LayerView(name=name, module=module, groups=groups, k=k, out=out_total // groups,
                  bias=getattr(module, "bias", None) is not None)


def hook_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    if args:
        return args[0]
    return next(iter(kwargs.values()))



class Recorder:
    """Hooks that capture the inputs and/or outputs of some layers during one forward, then stop it early."""

    def __init__(self, modules: Mapping[str, nn.Module], *, inputs: bool, outputs: bool,
                 calls: Mapping[str, int]) -> None:
        self.inputs = inputs
        self.outputs = outputs
        self.calls = dict(calls)
        self.seen: dict[str, list[tuple[Any, Any]]] = {n: [] for n in modules}
        self.modules = dict(modules)
        self.handles: list[Any] = []

    def __enter__(self) -> Recorder:
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
            x = hook_input(args, kwargs).detach() if self.inputs else None
            y = output.detach() if self.outputs else None
            captured.append((x, y))
            if all(len(self.seen[n]) >= self.calls.get(n, 0) for n in self.seen):
                raise StopForward

        return hook


def run_until_recorded(model: nn.Module, batch: Any) -> None:
    with contextlib.suppress(StopForward):
        feed(model, batch)


def probe(model: nn.Module, batches: Sequence[Any], layers: dict[str, LayerView], device: torch.device,
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
            x = hook_input(args, kwargs)
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
            batch = to_device(raw, device)
            token = token_mask(batch)
            counts.clear()
            rows.clear()
            keys.clear()
            seen_inputs.clear()
            try:
                feed(model, batch)
            except Exception as exc:  # noqa: BLE001 - re-raised with the batch and call style named
                raise InputError(
                    f"adaprune_: calibration batch {index} cannot be fed to the model as {call_style(raw)}: "
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


class TargetCache:
    """Target rows (the dense reference model's layer outputs) recorded ahead, for several layers per pass.

    A reference pass records the outputs of as many upcoming layers (in execution order) as fit in the target
    half of the memory budget; a unit whose targets alone do not fit is recorded in lockstep instead (a
    reference forward next to each working forward, nothing kept).
    """

    def __init__(self, reference: nn.Module, plan: list[list[LayerView]], batches: list[Any],
                 device: torch.device, *, limit: int, ignore_padding: bool) -> None:
        self.reference = reference
        self.modules = dict(reference.named_modules())
        self.order = [layer for unit in plan for layer in unit]
        self.batches = batches
        self.device = device
        self.ignore_padding = ignore_padding
        self.cache: dict[str, list[list[torch.Tensor]]] = {}
        self.limit = limit

    @staticmethod
    def target_bytes(layer: LayerView) -> int:
        return 4 * sum(layer.rows) * layer.groups * layer.out

    def fits(self, unit: list[LayerView]) -> bool:
        return sum(self.target_bytes(layer) for layer in unit) <= self.limit

    def ensure(self, unit: list[LayerView]) -> None:
        """Record targets for ``unit`` and the layers after it that fit, unless already recorded."""
        if all(layer.name in self.cache for layer in unit):
            return
        start = self.order.index(unit[0])
        chosen: list[LayerView] = []
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
        with torch.no_grad(), Recorder(modules, inputs=True, outputs=True, calls={}) as rec:
            for b, raw in enumerate(self.batches):
                calls = {layer.name: layer.calls[b] for layer in chosen}
                batch = to_device(raw, self.device)
                if any(calls.values()):
                    rec.reset(calls)
                    run_until_recorded(self.reference, batch)
                token = token_mask(batch) if self.ignore_padding else None
                for layer in chosen:
                    seen = rec.seen[layer.name] if calls[layer.name] else []
                    self.cache[layer.name].append(
                        [layer.output_rows(y, layer.row_filter(x, token)) for x, y in seen])

    def pop(self, layer: LayerView, batch: int) -> list[torch.Tensor]:
        """Targets of ``layer`` for one batch (released as they are used)."""
        rows = self.cache[layer.name][batch]
        self.cache[layer.name][batch] = []
        return rows

    def drop(self, layer: LayerView) -> None:
        self.cache.pop(layer.name, None)


def collect(stats: LayerStatistics, layer: LayerView, xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor],
            token: torch.Tensor | None, *, ys_are_rows: bool = False) -> None:
    """Fold one batch's recorded inputs ``xs`` and outputs (or target rows) ``ys`` of ``layer`` into ``stats``."""
    if len(xs) != len(ys):
        raise InputError(
            f"adaprune_: layer {layer.name!r} ran {len(xs)} time(s) in the pruned model but {len(ys)} time(s) "
            f"in the dense reference on the same batch; models whose control flow depends on the weights need "
            f"target='layer'"
        )
    for x, y in zip(xs, ys):
        keep = layer.row_filter(x, token)
        stats.add(layer.input_rows(x, keep), y if ys_are_rows else layer.output_rows(y, keep))
