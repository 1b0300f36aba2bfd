"""``NMMask``: the parametrization that applies an n:m mask to a module's ``weight``.

The dense weight stays a plain :class:`torch.nn.Parameter` (``<module>.parametrizations.weight.original``) and
the mask a persistent bool buffer (``<module>.parametrizations.weight.0.mask``), so any optimizer, ``model.to``,
``state_dict`` and ``torch.compile`` keep working unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, MaskMismatchError
from ..pattern import NMPattern, PatternLike

__all__ = ["NMMask"]


class _StraightThroughMask(torch.autograd.Function):
    """``w * mask`` forward; dense gradient backward, plus SR-STE decay on the pruned entries.

    Backward: ``dL/dw = g + decay * (~mask) * w`` (Zhou et al., ICLR 2021, eq. 4). The mask is saved for
    backward, so refreshing it in place between a forward and its backward raises autograd's version error
    instead of silently mixing two masks.
    """

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, mask: torch.Tensor, decay: float) -> torch.Tensor:
        ctx.decay = decay
        if decay:
            ctx.save_for_backward(weight, mask)
        else:
            ctx.save_for_backward(mask)
        return weight * mask

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None
        if not ctx.decay:
            return grad, None, None
        weight, mask = ctx.saved_tensors
        # one fused pass over the weight (measured 3-5x faster on CPU than masked_fill + mul + add)
        return torch.addcmul(grad, weight, ~mask, value=ctx.decay), None, None


class NMMask(nn.Module):
    """Parametrization that multiplies a weight by a fixed boolean mask.

    Register it on a module's ``weight`` with :func:`torch.nn.utils.parametrize.register_parametrization`
    (:func:`nmsparse.prune_` does this for you). The module then computes with ``original * mask`` while the
    dense ``original`` stays the trainable :class:`~torch.nn.Parameter`; the parameter object is not replaced,
    so an optimizer built before pruning keeps working.

    Gradient of the dense ``original``:

    * ``straight_through=False`` (static pruning, fine-tuning): ``g * mask``; pruned weights never change
      through the loss (an optimizer's own weight decay may still shrink them; they stay masked).
    * ``straight_through=True`` (dynamic sparse training): ``g`` (straight-through estimator), so pruned weights
      keep learning and can re-enter the mask at the next refresh; with ``decay > 0`` the SR-STE term
      ``decay * (~mask) * original`` is added to it, inside this backward, so it works with any optimizer and
      needs no extra call. The term is added once per forward of the weight: gradient accumulation over ``k``
      micro-batches adds it ``k`` times, as it adds ``k`` loss gradients.

    The mask is a persistent buffer: it moves with ``module.to(...)``, is saved under
    ``"<module>.parametrizations.weight.0.mask"`` and is updated **in place** by
    :class:`~nmsparse.DynamicSparsifier`. ``module.to(dtype)`` leaves it ``torch.bool``.

    Args:
        mask: ``torch.bool`` tensor of the weight's shape, ``True`` = keep (0/1 tensors of another dtype are
            accepted and converted).
        straight_through: pass the gradient densely to the original weight (see above).
        decay: SR-STE decay ``lambda_w`` on pruned weights, ``>= 0``; only with ``straight_through=True``.
        pattern: *optional* pattern the mask was made for; recorded for checks and ``repr``, not saved.

    Raises:
        ConfigError: negative or non-finite ``decay``, or ``decay`` without ``straight_through``.
        MaskMismatchError: a mask with values other than 0/1, or (in ``forward``) a weight of another shape.

    Example:
        >>> import torch
        >>> from torch.nn.utils import parametrize
        >>> from nmsparse import NMMask, find_mask
        >>> layer = torch.nn.Linear(8, 4)
        >>> _ = parametrize.register_parametrization(layer, "weight", NMMask(find_mask(layer.weight, "2:4")))
        >>> bool(((layer.weight != 0).sum(dim=1) == 4).all())
        True
        >>> sorted(k for k in layer.state_dict() if "weight" in k)
        ['parametrizations.weight.0.mask', 'parametrizations.weight.original']
    """

    mask: torch.Tensor

    def __init__(self, mask: torch.Tensor, *, straight_through: bool = False, decay: float = 0.0,
                 pattern: PatternLike | None = None) -> None:
        super().__init__()
        if not isinstance(mask, torch.Tensor):
            raise MaskMismatchError(f"NMMask: mask must be a torch.Tensor, got {type(mask).__name__}")
        self.register_buffer("mask", _as_bool_mask(mask, where="NMMask"), persistent=True)
        self.straight_through = bool(straight_through)
        self.decay = _check_decay(decay, self.straight_through)
        self.pattern = None if pattern is None else NMPattern.parse(pattern)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """Return ``weight * mask`` (gradient as described in the class docstring)."""
        if weight.shape != self.mask.shape:
            raise MaskMismatchError(
                f"NMMask: weight of shape {tuple(weight.shape)} does not match mask of shape "
                f"{tuple(self.mask.shape)}; set a mask of the weight's shape (nmsparse.set_masks_)"
            )
        if self.straight_through:
            return _StraightThroughMask.apply(weight, self.mask, self.decay)
        return weight * self.mask  # measured faster on CPU than where(mask, w, 0) or masked_fill

    def set_decay(self, decay: float) -> None:
        """Change the SR-STE decay (validated like the constructor argument)."""
        self.decay = _check_decay(decay, self.straight_through)

    def extra_repr(self) -> str:
        parts = [f"shape={tuple(self.mask.shape)}"]
        if self.pattern is not None:
            parts.append(f"pattern={self.pattern}")
        parts.append(f"straight_through={self.straight_through}")
        if self.decay:
            parts.append(f"decay={self.decay:g}")
        return ", ".join(parts)


def _check_decay(decay: float, straight_through: bool) -> float:
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not math.isfinite(decay) or decay < 0:
        raise ConfigError(f"NMMask: decay must be a finite number >= 0 (e.g. 2e-4), got {decay!r}")
    if decay and not straight_through:
        raise ConfigError(
            f"NMMask: decay={decay:g} needs straight_through=True: with a static mask the pruned weights get "
            f"no gradient, so SR-STE decay has nothing to act on; pass straight_through=True or decay=0"
        )
    return float(decay)


def _as_bool_mask(mask: torch.Tensor, *, where: str) -> torch.Tensor:
    """``mask`` as ``torch.bool``; other dtypes must hold only 0 and 1."""
    if mask.dtype == torch.bool:
        return mask.detach()
    bad = (mask != 0) & (mask != 1)
    if bool(bad.any()):
        raise MaskMismatchError(
            f"{where}: a mask must be torch.bool or hold only 0 and 1, got dtype {mask.dtype} with "
            f"{int(bad.sum())} other value(s); threshold it first (e.g. mask != 0)"
        )
    return (mask != 0).detach()
