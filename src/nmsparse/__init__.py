"""nmsparse: N:M and transposable N:M sparsity for PyTorch.

Importing this package creates no CUDA context and loads no optional dependency.
"""

from ._version import __version__
from .diversity import mask_diversity
from .errors import NMSparseError
from .metrics import is_nm_sparse, retained_magnitude
from .pattern import NMPattern
from .solvers import find_mask, list_methods

__all__ = [
    "__version__",
    "NMPattern",
    "find_mask",
    "list_methods",
    "is_nm_sparse",
    "retained_magnitude",
    "mask_diversity",
    "NMSparseError",
]
