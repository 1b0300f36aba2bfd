"""Masks on models: layer selection, static pruning, mask mappings, reports and dynamic sparse training.

Persistence (masks files, pruned checkpoints, dense exports) lives in :mod:`nmsparse.io`;
``load_pruned_state_dict_`` is re-exported here for existing callers.
"""

from __future__ import annotations

from typing import Any

from .dynamic import DynamicSparsifier
from .report import PrunedLayer, PruneReport
from .select import LayerSelection, is_transposed_layer, select_layers
from .sparse_state import SparseState
from .static import (
    MASK_KEY_SUFFIX,
    apply_mask_,
    get_masks,
    is_pruned,
    layer_mask,
    prune_,
    remove_mask_,
    set_masks_,
    squash_masks_,
    tensor_fqn,
)

__all__ = [
    "SparseState",
    "LayerSelection",
    "select_layers",
    "is_transposed_layer",
    "prune_",
    "PruneReport",
    "PrunedLayer",
    "squash_masks_",
    "get_masks",
    "set_masks_",
    "is_pruned",
    "apply_mask_",
    "remove_mask_",
    "tensor_fqn",
    "load_pruned_state_dict_",
    "layer_mask",
    "MASK_KEY_SUFFIX",
    "DynamicSparsifier",
]

# AdaPrune moved to nmsparse.adaprune (and recalibrate_batchnorm_ to nmsparse.nn.batchnorm); these names stay
# reachable from here, lazily, for code written against the old layout.
_MOVED = {
    "load_pruned_state_dict_": "nmsparse.io",  # lazy: nmsparse.io itself imports nmsparse.prune
    "adaprune_": "nmsparse.adaprune",
    "AdaPruneLayerReport": "nmsparse.adaprune",
    "recalibrate_batchnorm_": "nmsparse.nn.batchnorm",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
