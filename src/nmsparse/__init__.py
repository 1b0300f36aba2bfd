"""nmsparse: N:M and transposable N:M sparsity for PyTorch.

The library is the names below (``nmsparse.__all__``) and the modules they come from, plus ``nmsparse.config``
(``ConfigBase`` and the constraint types every config is checked with); ``nmsparse.recipes`` (training recipes,
data, built-in models, bridges) and ``nmsparse.cli`` sit on top of it with no API promise.

Verbs that decide something (``prune_``, ``adaprune_``, ``prune_oneshot_``, ``accelerate_``) return a report whose
``.model`` is the model; verbs that only apply state (``set_masks_``, ``squash_masks_``, ``load_pruned_``) return
the model. Long verbs take ``progress=`` (``None``: a bar only on a terminal).

Importing this package creates no CUDA context and loads no optional dependency: the model-level verbs, I/O and
kernels are imported on first use.

Example:
    >>> import torch, nmsparse
    >>> mask = nmsparse.find_mask(torch.randn(8, 8), "2:4-T")
    >>> bool(nmsparse.is_nm_sparse(mask, "2:4-T"))
    True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import NMSparseError
from .metrics import is_nm_sparse, retained_magnitude
from .pattern import NMPattern
from .solvers import available_backends, find_mask

__all__ = [
    "__version__",
    # tensors: patterns, solvers, metrics
    "NMPattern",
    "find_mask",
    "available_backends",
    "is_nm_sparse",
    "retained_magnitude",
    "mask_diversity",
    # models: masks, static pruning, dynamic training
    "NMMask",
    "select_layers",
    "prune_",
    "squash_masks_",
    "get_masks",
    "set_masks_",
    "DynamicSparsifier",
    "SparseState",
    # calibration without training
    "AdaPruneConfig",
    "adaprune_",
    "OneShotConfig",
    "prune_oneshot_",
    # channel permutations (before pruning)
    "permute_",
    "PermuteReport",
    # acceleration
    "SparseLinear",
    "accelerate_",
    # persistence
    "save_masks",
    "load_masks",
    "save_pruned",
    "load_pruned_",
    # errors (subclasses in nmsparse.errors)
    "NMSparseError",
]

#: Where each lazily imported name lives. Names below the blank line are kept for code written against earlier
#: releases (see CHANGELOG.md); they are not part of ``__all__``.
_LAZY: dict[str, str] = {
    "mask_diversity": "nmsparse.diversity",
    "NMMask": "nmsparse.nn",
    "SparseLinear": "nmsparse.nn",
    "select_layers": "nmsparse.prune",
    "prune_": "nmsparse.prune",
    "squash_masks_": "nmsparse.prune",
    "get_masks": "nmsparse.prune",
    "set_masks_": "nmsparse.prune",
    "DynamicSparsifier": "nmsparse.prune",
    "SparseState": "nmsparse.prune",
    "AdaPruneConfig": "nmsparse.adaprune",
    "adaprune_": "nmsparse.adaprune",
    "OneShotConfig": "nmsparse.oneshot",
    "prune_oneshot_": "nmsparse.oneshot",
    "permute_": "nmsparse.permute",
    "PermuteReport": "nmsparse.permute",
    "accelerate_": "nmsparse.accelerate",
    "save_masks": "nmsparse.io",
    "load_masks": "nmsparse.io",
    "save_pruned": "nmsparse.io",
    "load_pruned_": "nmsparse.io",
    "list_methods": "nmsparse.solvers",
    "log10_mask_diversity": "nmsparse.diversity",
    "transposable_block_count": "nmsparse.diversity",
    "is_pruned": "nmsparse.prune",
    "LayerSelection": "nmsparse.prune",
    "load_pruned_state_dict_": "nmsparse.io",
    "AdaPruneLayerReport": "nmsparse.adaprune",
    "recalibrate_batchnorm_": "nmsparse.nn.batchnorm",
}

if TYPE_CHECKING:
    from .accelerate import accelerate_
    from .adaprune import AdaPruneConfig, AdaPruneLayerReport, adaprune_
    from .diversity import log10_mask_diversity, mask_diversity, transposable_block_count
    from .io import load_masks, load_pruned_, load_pruned_state_dict_, save_masks, save_pruned
    from .nn import NMMask, SparseLinear
    from .nn.batchnorm import recalibrate_batchnorm_
    from .oneshot import OneShotConfig, prune_oneshot_
    from .permute import PermuteReport, permute_
    from .prune import (
        DynamicSparsifier,
        LayerSelection,
        SparseState,
        get_masks,
        is_pruned,
        prune_,
        select_layers,
        set_masks_,
        squash_masks_,
    )
    from .solvers import list_methods


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nmsparse' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
