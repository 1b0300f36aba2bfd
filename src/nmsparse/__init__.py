"""nmsparse: N:M and transposable N:M sparsity for PyTorch.

Importing this package creates no CUDA context and loads no optional dependency.
"""

from ._version import __version__
from .diversity import log10_mask_diversity, mask_diversity, transposable_block_count
from .errors import NMSparseError
from .metrics import is_nm_sparse, retained_magnitude
from .nn import NMMask
from .pattern import NMPattern
from .prune import (
    AdaPruneLayerReport,
    DynamicSparsifier,
    LayerSelection,
    adaprune_,
    get_masks,
    is_pruned,
    load_pruned_state_dict_,
    prune_,
    recalibrate_batchnorm_,
    select_layers,
    set_masks_,
    squash_masks_,
)
from .solvers import find_mask, list_methods

__all__ = [
    "__version__",
    "NMPattern",
    "find_mask",
    "list_methods",
    "is_nm_sparse",
    "retained_magnitude",
    "mask_diversity",
    "log10_mask_diversity",
    "transposable_block_count",
    "NMSparseError",
    "NMMask",
    "prune_",
    "squash_masks_",
    "get_masks",
    "set_masks_",
    "is_pruned",
    "load_pruned_state_dict_",
    "select_layers",
    "LayerSelection",
    "DynamicSparsifier",
    "adaprune_",
    "AdaPruneLayerReport",
    "recalibrate_batchnorm_",
]
