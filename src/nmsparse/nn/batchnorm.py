"""Batch-norm re-estimation: fresh running statistics after the layers before a batch norm have changed."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .._calibration import feed_checked, materialise, model_device

__all__ = ["recalibrate_batchnorm_"]


def recalibrate_batchnorm_(model: nn.Module, calibration: Iterable[Any]) -> int:
    """Re-estimate the running mean and variance of every batch-norm layer on the calibration data, in place.

    Pruning shifts each layer's output distribution, so the statistics recorded on the dense model no longer
    match. Each ``_BatchNorm`` that tracks running statistics is reset and switched to a cumulative average
    (``momentum=None``) in training mode, every other module is in eval mode (no dropout), and every batch is
    fed once without gradients; momentum and train/eval modes are restored afterwards.

    Args:
        model: the model; its batch-norm buffers are overwritten.
        calibration: iterable of batches; a mapping is fed as ``model(**batch)``, a tuple or list as
            ``model(*batch)``, anything else as ``model(batch)``.

    Returns:
        The number of batch-norm layers re-estimated (``0``: the model has none, nothing was run).

    Raises:
        InputError: an empty calibration set, or a batch the model cannot take.

    Example:
        >>> import torch
        >>> from nmsparse.nn.batchnorm import recalibrate_batchnorm_
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4)).eval()
        >>> recalibrate_batchnorm_(model, [torch.randn(16, 4) + 3.0])
        1
        >>> bool(model[1].running_mean.abs().sum() > 0), model.training
        (True, False)
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    batches = materialise(calibration, where="recalibrate_batchnorm_")
    device = model_device(model)
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in norms}
    try:
        model.eval()
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        with torch.no_grad():
            for index, raw in enumerate(batches):
                feed_checked(model, raw, index, device, where="recalibrate_batchnorm_")
    finally:
        for bn, momentum in momenta.items():
            bn.momentum = momentum
        for module, training in modes.items():
            module.train(training)
    return len(norms)
