"""One-shot n:m / n:m-T pruning of trained models from a small calibration set: one engine, pluggable layer methods.

:func:`prune_oneshot_` prunes a model block by block (:mod:`~nmsparse.oneshot.engine`) with a per-layer
algorithm from the registry (:mod:`~nmsparse.oneshot.methods`: ``magnitude``, ``wanda``, ``sparsegpt``,
``adaprune``; add one with :func:`register_method`); :mod:`nmsparse.hf` loads, evaluates and saves Hugging
Face causal language models.
"""

from __future__ import annotations

from .config import OneShotConfig, parse_memory
from .engine import find_blocks, prune_oneshot_
from .layer import sparsegpt
from .methods import Layer, LayerSolution, get_method, list_algorithms, register_method, unregister_method
from .report import OneShotLayerReport, OneShotReport

#: The built-in algorithms (see :func:`list_algorithms` for every registered one).
METHODS = ("sparsegpt", "wanda", "magnitude", "adaprune")

__all__ = [
    "prune_oneshot_",
    "OneShotConfig",
    "OneShotReport",
    "OneShotLayerReport",
    "register_method",
    "unregister_method",
    "get_method",
    "list_algorithms",
    "Layer",
    "LayerSolution",
    "parse_memory",
    "METHODS",
    "sparsegpt",
    "find_blocks",
]
