"""Calibration batches: how a batch is fed to a model, moved to a device, counted and checked.

Shared by one-shot calibration (:mod:`nmsparse.oneshot`) and batch-norm re-estimation
(:mod:`nmsparse.nn.batchnorm`): a calibration set is any re-iterable of batches; a mapping is fed as
``model(**batch)`` (tokenizer output), a tuple or list as ``model(*batch)``, anything else as ``model(batch)``.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .errors import InputError, NMSparseError

__all__ = [
    "feed",
    "feed_checked",
    "StopForward",
    "to_device",
    "model_device",
    "token_mask",
    "materialise",
    "batch_samples",
]


class StopForward(Exception):
    """Raised by a hook once everything needed from a forward pass is recorded: the rest is not run."""


def feed(model: nn.Module, batch: Any, **extra: Any) -> Any:
    """``model(**batch)`` for a mapping, ``model(*batch)`` for a tuple or list, ``model(batch)`` otherwise (plus
    keyword arguments ``extra``, which a mapping's own keys override)."""
    if isinstance(batch, Mapping):
        return model(**{**extra, **batch})
    return model(*batch, **extra) if isinstance(batch, (tuple, list)) else model(batch, **extra)


def feed_checked(model: nn.Module, batch: Any, index: int, device: torch.device, *, where: str) -> Any:
    """:func:`feed` of calibration batch ``index`` on ``device``, with ``use_cache=False`` where the model takes it;
    a batch the model cannot take becomes one :class:`InputError` naming it (:class:`StopForward` passes)."""
    extra: dict[str, Any] = {}
    try:
        if "use_cache" in inspect.signature(model.forward).parameters:
            extra["use_cache"] = False
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        pass
    try:
        return feed(model, to_device(batch, device), **extra)
    except (StopForward, NMSparseError):
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised with the batch and call style named
        style = "**batch" if isinstance(batch, Mapping) else "*batch" if isinstance(batch, (tuple, list)) else "batch"
        raise InputError(
            f"{where}: calibration batch {index} cannot be fed to the model as model({style}): "
            f"{type(exc).__name__}: {' '.join(str(exc).split())}; every batch must be a valid model input (a dict "
            f"is passed as keyword arguments, a tuple/list as positional arguments)"
        ) from exc


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor (also inside mappings, tuples and lists) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        moved = [to_device(value, device) for value in batch]
        return tuple(moved) if isinstance(batch, tuple) else moved
    return batch


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (or buffer); CPU for a model with neither."""
    return next((t.device for t in itertools.chain(model.parameters(), model.buffers())), torch.device("cpu"))


def token_mask(batch: Any) -> torch.Tensor | None:
    """``attention_mask`` of a transformers-style batch (``[B, T]``, True = real token), else ``None``."""
    mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
    return mask != 0 if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None


def token_rows(x: torch.Tensor, token: torch.Tensor | None) -> torch.Tensor | None:
    """Which rows of a ``[B, T, C]`` layer input (flattened to ``[B*T, C]``) are real tokens, by the batch's
    ``token`` mask (:func:`token_mask`); ``None`` (keep every row) without one or for an input of another shape."""
    if token is None or x.dim() != 3 or tuple(x.shape[:2]) != tuple(token.shape):
        return None
    return token.reshape(-1).to(x.device)


def materialise(calibration: Iterable[Any], *, where: str = "adaprune_") -> list[Any]:
    """The calibration batches as a list (a one-shot iterator is read once).

    Raises:
        InputError: a single tensor/mapping instead of an iterable of batches, a non-iterable, or no batch.
    """
    if isinstance(calibration, (torch.Tensor, str, bytes, Mapping)):
        raise InputError(
            f"{where}: calibration must be an iterable of batches (a list, a DataLoader, ...), got a single "
            f"{type(calibration).__name__}; wrap one batch in a list: [batch]"
        )
    try:
        batches = list(calibration)
    except TypeError as exc:
        raise InputError(
            f"{where}: calibration must be an iterable of batches, got {type(calibration).__name__}"
        ) from exc
    if not batches:
        raise InputError(
            f"{where}: the calibration set is empty; pass at least one batch (e.g. a list of input tensors, "
            "or dicts of tokenizer outputs)"
        )
    return batches


def batch_samples(batch: Any) -> int:
    """Samples in a batch: dim 0 of its first tensor (``1`` when it has none)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (tuple, list)) else ()
    return next((int(v.shape[0]) for v in values if isinstance(v, torch.Tensor) and v.dim()), 1)
