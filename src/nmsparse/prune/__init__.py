"""Masks on models: static pruning, mask state dicts, and dynamic sparse training."""

from __future__ import annotations

from .dynamic import DynamicSparsifier
from .select import LayerSelection, select_layers
from .static import get_masks, is_pruned, load_pruned_state_dict_, prune_, set_masks_, squash_masks_

__all__ = [
    "LayerSelection",
    "select_layers",
    "prune_",
    "squash_masks_",
    "get_masks",
    "set_masks_",
    "is_pruned",
    "load_pruned_state_dict_",
    "DynamicSparsifier",
]
