"""Moved: AdaPrune lives in :mod:`nmsparse.adaprune`, batch-norm re-estimation in :mod:`nmsparse.nn.batchnorm`.

Kept only so that ``nmsparse.prune`` imports while its ``__init__`` still names this module; to be removed.
"""

from __future__ import annotations

from ..adaprune import AdaPruneLayerReport, adaprune_, recalibrate_batchnorm_

__all__ = ["AdaPruneLayerReport", "adaprune_", "recalibrate_batchnorm_"]
