"""Masks on models: static pruning, mask state dicts, and dynamic sparse training."""

from __future__ import annotations

from .adaprune import AdaPruneLayerReport, adaprune_, recalibrate_batchnorm_
from .dynamic import DynamicSparsifier
from .select import LayerSelection, select_layers
from .static import (
    MASK_KEY_SUFFIX,
    get_masks,
    is_pruned,
    layer_mask,
    load_pruned_state_dict_,
    prune_,
    set_masks_,
    squash_masks_,
)

__all__ = [
    "adaprune_",
    "AdaPruneLayerReport",
    "recalibrate_batchnorm_",
    "LayerSelection",
    "select_layers",
    "prune_",
    "squash_masks_",
    "get_masks",
    "set_masks_",
    "is_pruned",
    "load_pruned_state_dict_",
    "layer_mask",
    "MASK_KEY_SUFFIX",
    "DynamicSparsifier",
]
