"""Unstructured magnitude masks (per layer), trained like the n:m ones, as a reference for comparisons.

Each selected layer keeps its ``density`` fraction of largest ``|W|`` (ties: lower flat index). The masks sit in
the same :class:`~nmsparse.NMMask` parametrization as n:m masks (``straight_through`` and SR-STE decay in
dynamic mode), so checkpoints, :func:`nmsparse.get_masks` and :func:`nmsparse.load_pruned_state_dict_` treat
them alike. Layers are chosen with :func:`nmsparse.select_layers` for the pattern :data:`LAYER_PATTERN`, so an
unstructured run sparsifies exactly the weights a ``4:8-T`` run does.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from nmsparse._logging import logger
from nmsparse.errors import ConfigError
from nmsparse.nn import NMMask
from nmsparse.prune import apply_mask_, select_layers

__all__ = ["UnstructuredSparsifier", "magnitude_mask", "LAYER_PATTERN"]

#: Pattern whose layer selection unstructured masks reuse (same layers as the paper's 4:8-T recipe).
LAYER_PATTERN = "4:8-T"
_STATE_VERSION = 1


def magnitude_mask(weight: torch.Tensor, density: float) -> torch.Tensor:
    """Bool mask keeping the ``round(density * numel)`` largest ``|weight|`` entries (ties: lower index).

    Example:
        >>> magnitude_mask(torch.tensor([[0.1, -3.0], [2.0, 0.5]]), 0.5).tolist()
        [[False, True], [True, False]]
    """
    flat = weight.detach().abs().reshape(-1)
    kept = int(round(density * flat.numel()))
    order = torch.sort(flat, descending=True, stable=True).indices
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[order[:kept]] = True
    return mask.reshape(weight.shape)


class UnstructuredSparsifier:
    """Per-layer unstructured magnitude masks, fixed (``dynamic=False``) or refreshed every ``refresh_every`` steps.

    Same interface as :class:`~nmsparse.DynamicSparsifier` (``step``, ``refresh``, ``masks_valid``,
    ``state_dict``, counters), so the trainer handles both alike.

    Args:
        model: pruned in place.
        density: fraction of weights kept in every selected layer, in ``(0, 1)``.
        dynamic: straight-through masks refreshed from ``|W|`` (SR-STE), or static masks never refreshed.
        refresh_every: steps between refreshes (dynamic only).
        decay: SR-STE decay on pruned weights (dynamic only).
        include / exclude / keep_first_last: as in :func:`nmsparse.select_layers`.

    Raises:
        ConfigError: bad numbers, or no layer that can be selected.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        density: float = 0.5,
        dynamic: bool = True,
        refresh_every: int = 40,
        decay: float = 2e-4,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        keep_first_last: bool = False,
    ) -> None:
        if not 0.0 < density < 1.0:
            raise ConfigError(f"UnstructuredSparsifier: density must be in (0, 1), got {density!r}")
        if isinstance(refresh_every, bool) or not isinstance(refresh_every, int) or refresh_every < 1:
            raise ConfigError(f"UnstructuredSparsifier: refresh_every must be an int >= 1, got {refresh_every!r}")
        self.density = float(density)
        self.dynamic = bool(dynamic)
        self.refresh_every = refresh_every
        self.decay = float(decay) if self.dynamic else 0.0
        selection = select_layers(
            model, LAYER_PATTERN, include=include, exclude=exclude, keep_first_last=keep_first_last
        )
        if not selection.selected:
            raise ConfigError(
                "UnstructuredSparsifier: no layer selected (the same layers as pattern "
                f"{LAYER_PATTERN} are used); skipped: {selection.skipped}"
            )
        self.layers: dict[str, nn.Module] = dict(selection.selected)
        self.skipped = dict(selection.skipped)
        self.masks: dict[str, NMMask] = {}
        with torch.no_grad():
            for name, module in self.layers.items():
                mask = magnitude_mask(cast(torch.Tensor, module.weight), self.density)
                self.masks[name] = apply_mask_(module, mask, straight_through=self.dynamic, decay=self.decay)
        logger.info("UnstructuredSparsifier: %d layer(s) at density %.2f", len(self.layers), self.density)
        self.steps = 0
        self.refreshes = 0
        self.refresh_seconds = 0.0
        self.last_changed = 0.0

    def step(self) -> bool:
        """Count one training step; refresh on schedule (dynamic only). Returns whether it refreshed."""
        self.steps += 1
        if not self.dynamic or self.steps % self.refresh_every:
            return False
        self.refresh()
        return True

    @torch.no_grad()
    def refresh(self) -> float:
        """Recompute every mask from the dense ``|W|``, in place; returns the fraction of entries that changed."""
        start = time.perf_counter()
        changed, total = 0, 0
        for name, module in self.layers.items():
            nm = self.masks[name]
            new = magnitude_mask(cast(Any, module).parametrizations.weight.original, self.density)
            changed += int((new != nm.mask).sum())
            total += new.numel()
            nm.mask.copy_(new)
        self.refresh_seconds += time.perf_counter() - start
        self.refreshes += 1
        self.last_changed = changed / total if total else 0.0
        return self.last_changed

    def masks_valid(self) -> bool:
        """Whether every layer keeps exactly ``round(density * numel)`` weights."""
        return all(int(nm.mask.sum()) == int(round(self.density * nm.mask.numel())) for nm in self.masks.values())

    def state_dict(self) -> dict[str, Any]:
        """Counters and settings (masks live in the model's state dict)."""
        return {
            "version": _STATE_VERSION,
            "kind": "unstructured",
            "density": self.density,
            "dynamic": self.dynamic,
            "refresh_every": self.refresh_every,
            "decay": self.decay,
            "layers": list(self.layers),
            "steps": self.steps,
            "refreshes": self.refreshes,
            "refresh_seconds": self.refresh_seconds,
            "last_changed": self.last_changed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s counters.

        Raises:
            ConfigError: a state of another kind, density or layer set.
        """
        if not isinstance(state, dict) or state.get("kind") != "unstructured":
            raise ConfigError("UnstructuredSparsifier.load_state_dict: not an UnstructuredSparsifier state")
        if state["density"] != self.density or list(state["layers"]) != list(self.layers):
            raise ConfigError(
                f"UnstructuredSparsifier.load_state_dict: state is for density {state['density']} on "
                f"{state['layers']}, this sparsifier has density {self.density} on {list(self.layers)}"
            )
        self.steps = int(state["steps"])
        self.refreshes = int(state["refreshes"])
        self.refresh_seconds = float(state["refresh_seconds"])
        self.last_changed = float(state.get("last_changed", 0.0))
