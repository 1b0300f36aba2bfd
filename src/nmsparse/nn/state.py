"""How a masked module shows itself to ``state_dict``/``load_state_dict``: exactly as the dense module would.

nmsparse attaches a mask through :mod:`torch.nn.utils.parametrize`, which moves ``weight`` to
``parametrizations.weight.original`` (and an order-keeping ``bias`` to ``parametrizations.bias.original``) and adds
the mask buffer and its extra state. Left alone, that renames the model's keys: ``save_pretrained`` then writes a
folder that ``from_pretrained`` reads with random weights, and a dense model's strict ``load_state_dict`` fails.

Two module hooks, registered by :func:`install_state_hooks` on every module that carries an
:class:`~nmsparse.NMMask`, keep the model's contract instead:

* ``state_dict()`` holds the dense model's keys, and ``weight`` holds the **effective** weight (zeros where
  pruned), the interchange convention. ``save_pretrained``/``from_pretrained``, ``torch.save`` followed by a
  strict ``load_state_dict`` into a dense model, ``torch.distributed.checkpoint`` and PEFT work without nmsparse.
* ``load_state_dict()`` accepts those keys (and still the raw parametrize keys). The loaded ``weight`` sets the
  effective weight: the module keeps its mask. Under a straight-through mask, a weight that is zero wherever the
  mask prunes (an effective weight) leaves the dense values of the pruned entries as they were; any other weight
  replaces the dense values entirely.

What nmsparse needs beyond that (masks, pattern, mode, the dense values of pruned entries during straight-through
training) travels in nmsparse's own record (:func:`nmsparse.io.pruned_state_dict`, ``nmsparse/1`` files) and, for
``torch.distributed.checkpoint``, in :class:`nmsparse.SparseState`. Inside :func:`raw_state_dict` the hooks step
aside, and ``state_dict()`` shows the parametrize layout (what :mod:`nmsparse.io` reads to build its record).

Why hooks on top of ``parametrize`` rather than a new mechanism: the parameter objects, their order and every
optimizer built before pruning stay as they are, ``parametrize`` keeps the gradient rules in one place
(:class:`~nmsparse.NMMask`), and the hooks touch nothing but the keys (see ``docs/distributed.md``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["raw_state_dict", "install_state_hooks", "remove_state_hooks", "is_raw"]

_LOCAL = threading.local()


def is_raw() -> bool:
    """Whether the current thread is inside :func:`raw_state_dict`."""
    return getattr(_LOCAL, "depth", 0) > 0


@contextmanager
def raw_state_dict() -> Iterator[None]:
    """Inside this block, masked modules' ``state_dict`` shows the raw ``parametrize`` layout.

    nmsparse's own record is built from it: ``parametrizations.weight.original`` (the dense weight),
    ``parametrizations.weight.0.mask`` and the mask's extra state. Re-entrant and per thread.

    Example:
        >>> import torch, nmsparse
        >>> model = nmsparse.prune_(torch.nn.Linear(8, 4), "2:4").model
        >>> sorted(model.state_dict())
        ['bias', 'weight']
        >>> with raw_state_dict():
        ...     sorted(model.state_dict())[:2]
        ['parametrizations.bias.original', 'parametrizations.weight.0._extra_state']
    """
    _LOCAL.depth = getattr(_LOCAL, "depth", 0) + 1
    try:
        yield
    finally:
        _LOCAL.depth -= 1


def _mask_of(module: nn.Module) -> Any:
    from .parametrize import NMMask

    plists = getattr(module, "parametrizations", None)
    if plists is None or "weight" not in plists:
        return None
    for p in plists["weight"]:
        if isinstance(p, NMMask):
            return p
    return None


def _original(module: nn.Module) -> torch.Tensor:
    """The dense weight parameter behind ``module.weight`` (a ``DTensor`` shard under FSDP2)."""
    plists: Any = module.parametrizations
    return plists["weight"]._parameters["original"]


def _renamed(module: nn.Module) -> list[str]:
    """Names of the module's tensors that ``parametrize`` moved (``weight`` first), in their original order."""
    plists = getattr(module, "parametrizations", None)
    return [] if plists is None else list(plists.keys())


def _state_dict_hook(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """``state_dict`` post-hook: raw parametrize keys -> the dense module's keys, weight = effective weight."""
    nm = _mask_of(module)
    raw = f"{prefix}parametrizations."
    if nm is None or f"{raw}weight.original" not in state_dict:
        return
    nm.adopt_sharding(_original(module))
    # Under FSDP2 the local shard may hold the effective weight since the last forward (NMMask.stash): put the
    # dense values back first (in place, so the raw entry already in ``state_dict`` shows them too).
    nm.unstash()
    if is_raw():
        return
    # This module's entries are the tail of ``state_dict`` (children were added just before this hook ran):
    # rebuild that tail in place so the dense keys keep their position.
    tail = [key for key in state_dict if key.startswith(prefix)]
    values = {key: state_dict.pop(key) for key in tail}
    for key, value in values.items():
        if not key.startswith(raw):
            state_dict[key] = value
            continue
        name, _, rest = key[len(raw) :].partition(".")
        if rest != "original":
            continue  # the mask buffer and its extra state: nmsparse's record, not the model's
        if name == "weight":
            value = nm.effective_weight(value)
        state_dict[f"{prefix}{name}"] = value


def _load_pre_hook(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """``load_state_dict`` pre-hook: the dense module's keys -> the raw parametrize keys this module expects."""
    nm = _mask_of(module)
    raw = f"{prefix}parametrizations."
    if nm is None or f"{raw}weight.original" in state_dict:
        return  # a raw state dict (nmsparse's own layout) loads as before
    for name in _renamed(module):
        key = f"{prefix}{name}"
        if key not in state_dict:
            continue
        value = state_dict.pop(key)
        if name == "weight" and isinstance(value, torch.Tensor):
            current = _original(module)
            nm.adopt_sharding(current)
            value = nm.dense_from_effective(value, current)
            state_dict.setdefault(f"{raw}weight.0.mask", nm.mask)
            state_dict.setdefault(f"{raw}weight.0._extra_state", nm.get_extra_state())
        state_dict[f"{raw}{name}.original"] = value


def _ours(hooks: dict[int, Any]) -> list[int]:
    return [
        key
        for key, hook in hooks.items()
        if hook in (_state_dict_hook, _load_pre_hook) or getattr(hook, "hook", None) is _load_pre_hook
    ]


def install_state_hooks(module: nn.Module) -> None:
    """Register the two hooks on a module that now carries an :class:`~nmsparse.NMMask` (idempotent)."""
    if not _ours(module._state_dict_hooks):
        module._register_state_dict_hook(_state_dict_hook)
    if not _ours(module._load_state_dict_pre_hooks):
        module._register_load_state_dict_pre_hook(_load_pre_hook, with_module=True)


def remove_state_hooks(module: nn.Module) -> None:
    """Remove what :func:`install_state_hooks` registered (when the mask goes)."""
    for hooks in (module._state_dict_hooks, module._load_state_dict_pre_hooks):
        for key in _ours(hooks):
            del hooks[key]
