"""``SparseState``: a model's masks (and straight-through dense values) for ``torch.distributed.checkpoint``.

A masked model's ``state_dict()`` holds the dense model's keys with effective weights (see
:mod:`nmsparse.nn.state`), so ``torch.distributed.checkpoint`` saves and loads it like any model. What it does not
hold is nmsparse's own state: the masks, and under straight-through training the dense values of pruned entries.
:class:`SparseState` carries them, sharded like the weights under FSDP2, as one more entry of the checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import MaskMismatchError
from ..nn.linear import SparseLinear
from ..nn.sharding import local_tensor
from .select import parametrizations_of
from .static import _pruned_modules, tensor_fqn

__all__ = ["SparseState"]


class SparseState:
    """The masks of ``model`` (and dense values of straight-through layers), as a DCP ``Stateful``.

    Covers every masked weight: layers pruned by nmsparse's verbs and :class:`~nmsparse.SparseLinear` layers.

    ``state_dict()`` maps ``"<layer>.weight.mask"`` to each mask and, for straight-through masks,
    ``"<layer>.weight.dense"`` to the dense weight, as the tensors the model holds (``DTensor`` shards under
    FSDP2), so ``torch.distributed.checkpoint`` writes each rank's rows and loads them back in place. Put it next to
    the model and optimizer in the checkpoint; with it, a resumed run continues exactly. Without it, a static mask
    can still be recovered from the effective weights' zeros (``nmsparse.prune_`` on the loaded model).

    Example (one process; the same code runs under ``torchrun`` with FSDP2):
        >>> import tempfile, torch, nmsparse
        >>> import torch.distributed.checkpoint as dcp
        >>> model = nmsparse.prune_(torch.nn.Sequential(torch.nn.Linear(8, 8)), "2:4").model
        >>> folder = tempfile.mkdtemp()
        >>> _ = dcp.save({"model": model.state_dict(), "sparse": nmsparse.SparseState(model)}, checkpoint_id=folder)
        >>> fresh = nmsparse.prune_(torch.nn.Sequential(torch.nn.Linear(8, 8)), "2:4").model
        >>> state = {"model": fresh.state_dict(), "sparse": nmsparse.SparseState(fresh)}
        >>> dcp.load(state, checkpoint_id=folder)
        >>> _ = fresh.load_state_dict(state["model"])
        >>> torch.equal(fresh[0].weight, model[0].weight)
        True
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def _layers(self) -> dict[str, tuple[Any, nn.Parameter]]:
        out = {}
        for name, (module, nm) in _pruned_modules(self.model).items():
            original = parametrizations_of(module).weight._parameters["original"]
            nm.adopt_sharding(original)
            nm.unstash()
            out[tensor_fqn(name)] = (nm, original)
        for name, module in self.model.named_modules():
            if isinstance(module, SparseLinear) and tensor_fqn(name) not in out:
                module.prepare_shard_(stash=False)
                owner = module._shard_owner()
                assert owner is not None
                owner.unstash()
                out[tensor_fqn(name)] = (owner, module.weight)
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Mask (and dense weight of straight-through layers) per masked tensor, as the model holds them."""
        out: dict[str, torch.Tensor] = {}
        for fqn, (nm, original) in self._layers().items():
            out[f"{fqn}.mask"] = nm.mask
            if nm.straight_through:
                out[f"{fqn}.dense"] = original.detach()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copy masks and dense values into the model, in place (each rank its own rows).

        Raises:
            MaskMismatchError: a masked layer missing from ``state``, an entry for a layer that is not masked, or
                a tensor of another shape; nothing is copied then.
        """
        layers = self._layers()
        expected = set(self.state_dict())
        problems = [f"missing: {key!r}" for key in sorted(expected - set(state))]
        problems += [f"unexpected: {key!r}" for key in sorted(set(state) - expected)]
        targets = self.state_dict()
        for key in sorted(expected & set(state)):
            got, want = local_tensor(state[key]), local_tensor(targets[key])
            if tuple(got.shape) != tuple(want.shape):
                problems.append(f"wrong shape: {key!r} is {tuple(got.shape)}, the model holds {tuple(want.shape)}")
        if problems:
            raise MaskMismatchError(
                "SparseState.load_state_dict: the state does not fit the model's masks, "
                "nothing was loaded:\n" + "\n".join(f"  - {p}" for p in problems)
            )
        with torch.no_grad():
            for fqn, (nm, original) in layers.items():
                mask = local_tensor(state[f"{fqn}.mask"])
                local_mask = nm.local_mask()
                if mask.data_ptr() != local_mask.data_ptr():
                    local_mask.copy_(mask.to(device=local_mask.device, dtype=torch.bool))
                if nm.straight_through:
                    dense, target = local_tensor(state[f"{fqn}.dense"]), local_tensor(original)
                    if dense.data_ptr() != target.data_ptr():
                        target.copy_(dense)
