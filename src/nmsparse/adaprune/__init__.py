"""AdaPrune: one-shot n:m / n:m-T pruning of a trained model with a small calibration set and no training.

For every prunable layer (Hubara et al., NeurIPS 2021, section 5):

1. record the layer's input ``X`` and its target output ``Y`` on the calibration data (forward hooks), folded into
   exact float64 statistics ``G = [X 1]^T [X 1]``, ``C = [X 1]^T Y`` and ``sum(Y^2)``;
2. choose the mask (``|w|``, or ``|w| * ||x||`` with ``scores="activation"``) and apply it with *absorb mean*:
   in every group of ``m`` the pruned weights' sum is shared equally among the kept ones;
3. minimise the layer's exact calibration MSE over its kept weights and bias with the mask fixed, keeping the
   best iterate (so the error never ends above the masked start): conjugate gradients on the exact quadratic
   (default) or the paper's Adam.

Modules, one concern each:

* :mod:`~nmsparse.adaprune.config`: :class:`AdaPruneConfig`, every setting and its default (the CLI flags of
  ``nmsparse adaprune`` are generated from it);
* :mod:`~nmsparse.adaprune.planning`: which layers, why the others stay dense, passes within the memory budget;
* :mod:`~nmsparse.adaprune.recording`: layers as row maps, forward hooks, the probe pass, recorded targets;
* :mod:`~nmsparse.adaprune.statistics`: :class:`LayerStatistics` (exact Gram statistics, row subsampling);
* :mod:`~nmsparse.adaprune.fitting`: :func:`fit_layer`, one layer's fit under a fixed mask (usable on its own);
* :mod:`~nmsparse.adaprune.report`: :class:`AdaPruneReport`, :class:`AdaPruneLayerReport`;
* :mod:`~nmsparse.adaprune.api`: :func:`adaprune_`, the verb.

Batch-norm re-estimation is its own utility, :func:`nmsparse.nn.batchnorm.recalibrate_batchnorm_`.
"""

from __future__ import annotations

from ..nn.batchnorm import recalibrate_batchnorm_
from .api import adaprune_
from .config import DEFAULT_MEMORY_BUDGET, AdaPruneConfig, parse_memory
from .fitting import FitResult, fit_layer
from .report import AdaPruneLayerReport, AdaPruneReport
from .statistics import LayerStatistics

__all__ = [
    "adaprune_",
    "AdaPruneConfig",
    "AdaPruneReport",
    "AdaPruneLayerReport",
    "LayerStatistics",
    "fit_layer",
    "FitResult",
    "recalibrate_batchnorm_",
    "parse_memory",
    "DEFAULT_MEMORY_BUDGET",
]
