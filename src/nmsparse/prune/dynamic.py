"""Dynamic sparse training (SR-STE with transposable masks): masks recomputed from ``|W|`` during training."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..nn.parametrize import NMMask
from ..nn.sharding import gather_rows, local_layer_mask, local_tensor, rows_aligned
from ..pattern import NMPattern, PatternLike
from ..solvers import Method
from ._views import mask_fits
from .select import parametrizations_of
from .static import _check_method, _nm_mask, _prune, layer_mask

__all__ = ["DynamicSparsifier"]

_STATE_VERSION = 1


def _check_refresh_every(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"DynamicSparsifier: refresh_every must be an int >= 1 (steps), got {value!r}")
    return value


def _check_decay(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"DynamicSparsifier: decay must be a finite number >= 0 (SR-STE uses 2e-4), got {value!r}")
    return float(value)


class DynamicSparsifier:
    """Train with n:m masks that follow the weights (SR-STE, with transposable patterns as in Hubara et al.).

    On construction the model is pruned with **straight-through** :class:`~nmsparse.NMMask` parametrizations
    (initial masks from ``initial_method``): the forward uses ``W * mask`` while the backward passes the gradient
    densely to ``W``, so pruned weights keep learning. Every ``refresh_every`` calls of :meth:`step` the masks
    are recomputed from ``|W|`` with ``method`` (by default the paper's fast 2-approximation).

    Design points:

    * **SR-STE decay** ``decay * (~mask) * W`` is added to ``W``'s gradient inside the NMMask backward, i.e.
      during ``loss.backward()``, before the optimizer step that consumes it. No extra call is needed, and it
      works with any optimizer (SGD, Adam, ...). ``decay=0`` gives the plain straight-through estimator.
    * **Parameters are never replaced.** A refresh overwrites each mask buffer in place under
      ``torch.no_grad()``; the optimizer keeps holding the same ``parametrizations.weight.original`` Parameter
      objects and its state (momentum, Adam moments) stays attached to them.
    * **Devices.** Masks are buffers: ``model.to(device)`` moves them, before or after creating the sparsifier.
      Masks are computed on the weights' device.
    * **Checkpoints.** ``model.state_dict()`` holds the dense model's keys with effective weights; the masks and
      the pruned entries' dense values are nmsparse's record (:func:`nmsparse.save_pruned`, or
      :class:`nmsparse.SparseState` with ``torch.distributed.checkpoint``). This object's :meth:`state_dict`
      holds the schedule counters and the configuration. Save all of them to resume exactly.
    * **FSDP2 and DDP.** Create the sparsifier before ``fully_shard``/DDP. Under FSDP2 each rank refreshes its
      own rows (no all-gather when they hold whole ``m x m`` blocks), and :attr:`last_changed` is that rank's
      fraction; the SR-STE term is added after the reduce-scatter (see ``docs/distributed.md``).

    Args:
        model: the model; pruned in place (see :func:`~nmsparse.prune_` for layer selection and skipping).
        pattern: pattern for every selected layer, ``"4:8-T"`` by default (the paper's recipe).
        method: mask method for refreshes (``"greedy"``: the 2-approximation).
        initial_method: mask method for the initial masks (``"exact"``: optimal transposable masks).
        refresh_every: recompute masks every this many :meth:`step` calls (the paper: 40).
        decay: SR-STE decay on pruned weights, ``>= 0`` (SR-STE: ``2e-4``).
        include: *optional* fnmatch globs on module names to prune.
        exclude: *optional* fnmatch globs on module names to keep dense.
        keep_first_last: keep the model's first and last prunable layers dense (default ``False``, as in
            :func:`~nmsparse.prune_`).
        pad: zero-pad layers whose sizes are not multiples of ``m`` (see :func:`~nmsparse.prune_`).

    Attributes:
        steps: :meth:`step` calls so far.
        refreshes: mask refreshes so far (scheduled and explicit :meth:`refresh` calls).
        refresh_seconds: total wall time spent refreshing masks (synchronised on CUDA).
        last_changed: fraction of mask entries that changed at the last refresh.
        layers: qualified module name -> pruned module.
        report: the :class:`~nmsparse.prune.PruneReport` of the initial pruning (what was pruned, padded, and
            left dense with the reason).

    Raises:
        PatternError: unparseable pattern.
        ConfigError: bad method names or numbers, or no layer that can take the pattern.

    Example:
        >>> import torch, nmsparse
        >>> model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> sparsifier = nmsparse.DynamicSparsifier(model, "2:4-T", initial_method="greedy", refresh_every=2)
        >>> for _ in range(4):
        ...     opt.zero_grad()
        ...     model(torch.randn(5, 16)).square().mean().backward()
        ...     opt.step()
        ...     refreshed = sparsifier.step()
        >>> sparsifier.steps, sparsifier.refreshes, sparsifier.masks_valid()
        (4, 2, True)
    """

    def __init__(
        self,
        model: nn.Module,
        pattern: PatternLike = "4:8-T",
        *,
        method: Method | str = "greedy",
        initial_method: Method | str = "exact",
        refresh_every: int = 40,
        decay: float = 2e-4,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        keep_first_last: bool = False,
        pad: bool = False,
    ) -> None:
        self.pattern = NMPattern.parse(pattern)
        self.method = _check_method(method, self.pattern, where="DynamicSparsifier")
        self.initial_method = _check_method(
            initial_method, self.pattern, where="DynamicSparsifier", name="initial_method"
        )
        self.refresh_every = _check_refresh_every(refresh_every)
        self.decay = _check_decay(decay)
        self.include = None if include is None else ([include] if isinstance(include, str) else list(include))
        self.exclude = None if exclude is None else ([exclude] if isinstance(exclude, str) else list(exclude))
        self.keep_first_last = bool(keep_first_last)
        self.model = model
        self.pad = bool(pad)
        self.layers: dict[str, nn.Module]
        self.layers, self.report = _prune(
            model,
            self.pattern,
            method=self.initial_method,
            include=self.include,
            exclude=self.exclude,
            keep_first_last=self.keep_first_last,
            scores=None,
            straight_through=True,
            decay=self.decay,
            where="DynamicSparsifier",
            pad=self.pad,
        )
        self._padded = {layer.name for layer in self.report.pruned if layer.padded_to is not None}
        self.steps = 0
        self.refreshes = 0
        self.refresh_seconds = 0.0
        self.last_changed = 0.0

    def _masks(self) -> dict[str, NMMask]:
        out = {}
        for name, module in self.layers.items():
            nm = _nm_mask(module)
            if nm is None:
                raise ConfigError(
                    f"DynamicSparsifier: layer {name!r} has no mask any more (squash_masks_ or "
                    f"remove_parametrizations was called?); create a new sparsifier to keep training sparse"
                )
            out[name] = nm
        return out

    def step(self) -> bool:
        """Count one training step; refresh the masks when the count is a multiple of ``refresh_every``.

        Call it once after each ``optimizer.step()``.

        Returns:
            ``True`` when this call refreshed the masks.
        """
        self.steps += 1
        if self.steps % self.refresh_every:
            return False
        self.refresh()
        return True

    @torch.no_grad()
    def refresh(self) -> float:
        """Recompute every mask from the current dense ``|W|`` with ``method``, in place.

        Returns:
            Fraction of mask entries (over all layers) that changed.
        """
        start = time.perf_counter()
        changed: torch.Tensor | int = 0
        total = 0
        for (name, module), nm in zip(self.layers.items(), self._masks().values()):
            original = parametrizations_of(module).weight._parameters["original"]
            nm.adopt_sharding(original)
            pad = name in self._padded
            if nm.shard is not None:  # FSDP2: this rank's rows, solved locally when they hold whole blocks
                nm.unstash()

                def solve(weight: torch.Tensor, module: nn.Module = module, pad: bool = pad) -> torch.Tensor:
                    return layer_mask(module, self.pattern, method=self.method, weight=weight, pad=pad)

                new = local_layer_mask(
                    name,
                    nm.shard,
                    local_tensor(original).detach(),
                    self.pattern.m,
                    transposed=nm.transposed,
                    transposable=self.pattern.transposable,
                    solve=solve,
                )
            else:
                new = layer_mask(module, self.pattern, method=self.method, weight=original.detach(), pad=pad)
            mask = nm.local_mask()
            changed = changed + (new != mask).sum()
            total += new.numel()
            mask.copy_(new)
        # .item() waits for the device, so refresh_seconds is honest on CUDA as well.
        fraction = float(changed) / total if total else 0.0
        self.refresh_seconds += time.perf_counter() - start
        self.refreshes += 1
        self.last_changed = fraction
        return fraction

    def masks_valid(self) -> bool:
        """Whether every mask obeys the pattern on its layer's (padded) matrix view."""
        return all(
            mask_fits(self._checkable_mask(nm), self.pattern, transposed=nm.transposed, padded=nm.padded)
            for nm in self._masks().values()
        )

    def _checkable_mask(self, nm: NMMask) -> torch.Tensor:
        """The local rows when they hold whole groups (FSDP2 or not), else the gathered mask (a collective)."""
        state = nm.shard
        if state is None or rows_aligned(
            state, self.pattern.m, transposed=nm.transposed, transposable=self.pattern.transposable
        ):
            return nm.local_mask()
        return gather_rows(nm.local_mask(), state)

    def state_dict(self) -> dict[str, Any]:
        """Counters and configuration (plain Python values; the masks are in ``model.state_dict()``)."""
        return {
            "version": _STATE_VERSION,
            "pattern": str(self.pattern),
            "method": self.method,
            "initial_method": self.initial_method,
            "refresh_every": self.refresh_every,
            "decay": self.decay,
            "include": self.include,
            "exclude": self.exclude,
            "keep_first_last": self.keep_first_last,
            "pad": self.pad,
            "layers": list(self.layers),
            "steps": self.steps,
            "refreshes": self.refreshes,
            "refresh_seconds": self.refresh_seconds,
            "last_changed": self.last_changed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore counters and configuration saved by :meth:`state_dict`.

        ``method``, ``refresh_every`` and ``decay`` are taken from ``state`` (the decay is pushed to every
        mask). The pattern and the set of pruned layers cannot change without re-pruning, so they must match.

        Raises:
            ConfigError: missing keys, an unknown version, or a different pattern or layer set.
        """
        if not isinstance(state, dict):
            raise ConfigError(f"DynamicSparsifier.load_state_dict: expected a dict, got {type(state).__name__}")
        required = (
            "version",
            "pattern",
            "method",
            "refresh_every",
            "decay",
            "layers",
            "steps",
            "refreshes",
            "refresh_seconds",
        )
        missing = [k for k in required if k not in state]
        if missing:
            raise ConfigError(
                f"DynamicSparsifier.load_state_dict: state lacks {missing}; pass the dict returned "
                f"by DynamicSparsifier.state_dict()"
            )
        if state["version"] != _STATE_VERSION:
            raise ConfigError(
                f"DynamicSparsifier.load_state_dict: unknown state version {state['version']!r}, "
                f"this nmsparse reads version {_STATE_VERSION}"
            )
        if NMPattern.parse(state["pattern"]) != self.pattern:
            raise ConfigError(
                f"DynamicSparsifier.load_state_dict: state is for pattern {state['pattern']}, this "
                f"sparsifier uses {self.pattern}; create the sparsifier with the saved pattern"
            )
        if list(state["layers"]) != list(self.layers):
            saved, ours = set(state["layers"]), set(self.layers)
            raise ConfigError(
                f"DynamicSparsifier.load_state_dict: pruned layers differ; only in the state: "
                f"{sorted(saved - ours)}, only here: {sorted(ours - saved)}"
                + ("" if saved != ours else " (same layers, different order)")
                + "; create the sparsifier with the saved include/exclude/keep_first_last"
            )
        method = _check_method(state["method"], self.pattern, where="DynamicSparsifier.load_state_dict")
        refresh_every = _check_refresh_every(state["refresh_every"])
        decay = _check_decay(state["decay"])
        for nm in self._masks().values():
            nm.set_decay(decay)
        self.method, self.refresh_every, self.decay = method, refresh_every, decay
        if "initial_method" in state:
            self.initial_method = state["initial_method"]
        self.include = state.get("include", self.include)
        self.exclude = state.get("exclude", self.exclude)
        self.keep_first_last = bool(state.get("keep_first_last", self.keep_first_last))
        self.steps = int(state["steps"])
        self.refreshes = int(state["refreshes"])
        self.refresh_seconds = float(state["refresh_seconds"])
        self.last_changed = float(state.get("last_changed", 0.0))

    def __repr__(self) -> str:
        return (
            f"DynamicSparsifier(pattern={self.pattern}, layers={len(self.layers)}, method={self.method!r}, "
            f"refresh_every={self.refresh_every}, decay={self.decay:g}, steps={self.steps}, "
            f"refreshes={self.refreshes}, refresh_seconds={self.refresh_seconds:.3f})"
        )
