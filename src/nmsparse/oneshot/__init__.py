"""One-shot n:m / n:m-T pruning of trained models (language models first): magnitude, Wanda, SparseGPT, AdaPrune.

:func:`prune_oneshot_` prunes a model decoder block by decoder block from a small calibration set, with masks
chosen by nmsparse's solvers (the exact transposable solver for ``-T`` patterns); :mod:`nmsparse.oneshot.hf`
loads, evaluates and saves Hugging Face causal language models.
"""

from __future__ import annotations

from .config import OneShotConfig, OneShotLayerReport, OneShotReport
from .layer import METHODS, sparsegpt, sparsegpt_reference
from .prune import find_blocks, prune_oneshot_

__all__ = [
    "prune_oneshot_",
    "OneShotConfig",
    "OneShotReport",
    "OneShotLayerReport",
    "METHODS",
    "sparsegpt",
    "sparsegpt_reference",
    "find_blocks",
]
