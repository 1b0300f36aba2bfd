"""Checks of tensors handed to the public API, with nmsparse's own errors instead of other libraries'."""

from __future__ import annotations

import torch

from .errors import InputError

__all__ = ["FLOAT_DTYPES", "check_tensor"]

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_tensor(value: object, name: str, where: str, *, floating: bool = False, finite: bool = False) -> torch.Tensor:
    """Return ``value`` if it is a dense tensor with data (and floating / finite when asked), else raise.

    Raises:
        InputError: not a tensor (lists, numpy arrays), a meta or sparse tensor, a non-floating dtype when
            ``floating``, non-finite values when ``finite``; the message says how to fix it.

    Example:
        >>> check_tensor([1.0, 2.0], "weight", "find_mask")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        nmsparse.errors.InputError: find_mask: weight must be a torch.Tensor, got list; convert it with ...
    """
    if not isinstance(value, torch.Tensor):
        raise InputError(
            f"{where}: {name} must be a torch.Tensor, got {type(value).__name__}; convert it with "
            f"torch.as_tensor({name})"
        )
    if value.is_meta:
        raise InputError(
            f"{where}: {name} is on the meta device and holds no data; materialise it first (e.g. "
            f"module.to_empty(device='cpu') and load the weights)"
        )
    if value.layout != torch.strided:
        raise InputError(
            f"{where}: {name} is a {str(value.layout).removeprefix('torch.')} tensor; nmsparse works on dense "
            f"(strided) tensors: convert it with {name}.to_dense()"
        )
    if floating and value.dtype not in FLOAT_DTYPES:
        raise InputError(
            f"{where}: {name} must be floating point (float32, float16, bfloat16 or float64), got "
            f"{value.dtype}; convert it with .float()"
        )
    if finite and value.numel() and not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise InputError(
            f"{where}: {name} holds {bad} non-finite value(s) (inf or NaN) out of {value.numel()}; "
            f"masks are only defined for finite scores: fix or replace them (e.g. torch.nan_to_num) first"
        )
    return value
