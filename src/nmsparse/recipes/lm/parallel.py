"""Data-parallel pieces of ``nmsparse train lm`` under ``torchrun``: DDP or FSDP2, batch split, evaluation.

``torchrun --nproc_per_node N -m nmsparse train lm [--parallel fsdp|ddp]`` runs one
:class:`~nmsparse.recipes.lm.task.LMTrainer` per process. The process group comes from
:func:`nmsparse.recipes.distributed.init_distributed` (gloo on CPU, nccl on CUDA), the machinery the
classify task uses. What this module adds:

* :func:`wrap_model`: the conventional order, on a model whose masks are already attached: ``fully_shard`` on
  each decoder block, then on the root (FSDP2, the default), or ``DistributedDataParallel`` with buffers not
  synchronised in the forward (masks are never re-sent from rank 0 every step; they are checked after every
  refresh instead). The optimizer is built afterwards, on the wrapped parameters.
* :func:`local_rows`: the global batch of step ``s`` is a function of ``(seed, s)``
  (:meth:`~nmsparse.recipes.lm.data.LMData.train_batch`), so every rank draws it and keeps its own contiguous
  ``batch_size / N`` rows. Each rank's loss is the mean over its rows and both engines average gradients over
  ranks, so a step's gradient is the one-process gradient up to float summation order.
* :func:`sharded_heldout_loss`: the held-out windows are dealt out to the ranks (window ``i`` to rank
  ``i mod N``); every rank runs the same number of forwards (FSDP2 needs every rank in every forward), padding
  with a window of weight 0, and the sums are all-reduced in float64.
* :func:`full_tensors` / :func:`load_optimizer_state_`: checkpoints hold full tensors, written by rank 0 into the
  one checkpoint file of a single-process run, so a run resumes under any world size (bit-identical under the
  same one). Sharded (DTensor) values are gathered on save; on load the model is restored before it is wrapped,
  and the optimizer's moments are cut back into their parameters' shards.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from nmsparse.errors import ConfigError
from nmsparse.nn.sharding import is_dtensor
from nmsparse.prune import get_masks

from ..distributed import DistContext, check_masks_identical, collective_device
from .data import LMData
from .pretrained import logits_of

__all__ = [
    "PARALLEL_MODES",
    "DEFAULT_PARALLEL",
    "FSDP_ACCELERATE_REASON",
    "check_parallel",
    "wrap_model",
    "local_rows",
    "sharded_heldout_loss",
    "full_tensors",
    "load_optimizer_state_",
    "masks_agree",
    "decoder_blocks",
]


#: Data-parallel engines of ``--parallel``.
PARALLEL_MODES = ("fsdp", "ddp")
#: The engine under ``torchrun`` when ``--parallel`` is not given.
DEFAULT_PARALLEL = "fsdp"
#: Why ``accelerate`` keeps every layer masked-dense under FSDP2 (the run's ``acceleration`` report says so).
FSDP_ACCELERATE_REASON = (
    "FSDP2 shards each weight by output rows across ranks and gathers it per forward, so "
    "there is no whole weight to pack for the sparse kernels once; every layer stays "
    "masked-dense (use --parallel ddp or one process to accelerate)"
)


def check_parallel(mode: str, batch_size: int, ctx: DistContext) -> None:
    """Refuse an unknown engine, or a global batch that does not split evenly over the ranks.

    Raises:
        ConfigError: with the fix.
    """
    if mode not in PARALLEL_MODES:
        raise ConfigError(f"parallel must be one of {list(PARALLEL_MODES)}, got {mode!r}")
    if batch_size % ctx.world_size:
        raise ConfigError(
            f"batch_size {batch_size} is the global batch and must be divisible by the "
            f"{ctx.world_size} processes; pick a multiple of {ctx.world_size}"
        )


def wrap_model(model: nn.Module, mode: str, ctx: DistContext, device: torch.device) -> nn.Module:
    """The module the training step calls: ``model`` sharded in place (FSDP2) or wrapped in DDP.

    ``model`` must already carry its masks; build the optimizer afterwards (FSDP2 replaces the parameters by
    sharded ones). A single process gets ``model`` back.
    """
    if not ctx.enabled:
        return model
    if mode == "ddp":
        # Masks are buffers: never re-sent from rank 0 in the forward (they are checked after every refresh
        # instead). torch 2.13 renamed broadcast_buffers to forward_sync_buffers.
        params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
        no_sync: dict[str, Any] = {
            "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers": False
        }
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, **no_sync
        )
    from torch.distributed.fsdp import fully_shard

    for block in decoder_blocks(model):
        fully_shard(block)
    fully_shard(model)
    return model


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks FSDP2 shards one by one: the first ``ModuleList`` of ``model`` whose entries are
    all of one class and not single layers (the recipe's ``transformer.h``, GPT-2's ``transformer.h``, LLaMA's
    ``model.layers``); empty when there is none (then the root alone is sharded)."""
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            kinds = {type(child) for child in module}
            if len(kinds) == 1 and any(True for _ in next(iter(module)).children()):
                return list(module)
    return []


def local_rows(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This rank's contiguous share of a global batch (dim 0 divisible by the world size)."""
    if not ctx.enabled:
        return tensor
    rows = tensor.shape[0] // ctx.world_size
    return tensor[ctx.rank * rows : (ctx.rank + 1) * rows]


def _windows(data: LMData, context: int, max_tokens: int | None) -> torch.Tensor:
    # The windows of LMData.heldout_batches (which checks the context and the stream's length), all at once.
    return torch.cat(list(data.heldout_batches(context=context, batch_size=1 << 30, max_tokens=max_tokens)))


@torch.no_grad()
def sharded_heldout_loss(
    model: nn.Module,
    data: LMData,
    *,
    context: int,
    batch_size: int,
    ctx: DistContext,
    max_tokens: int | None = None,
    device: torch.device | str = "cpu",
) -> float:
    """Held-out loss (nats per token) of :func:`~nmsparse.recipes.lm.task.heldout_loss`, computed by all ranks.

    Every rank must call it (FSDP2 gathers weights in the forward); the result is the same on every rank.
    """
    windows = _windows(data, context, max_tokens)
    count = windows.shape[0]
    per_rank = -(-count // ctx.world_size)
    mine = list(range(ctx.rank, count, ctx.world_size))
    weights = torch.ones(per_rank, dtype=torch.float64)
    weights[len(mine) :] = 0.0
    index = torch.tensor(mine + [0] * (per_rank - len(mine)), dtype=torch.long)
    training = model.training
    model.eval()
    total = 0.0
    try:
        for rows, w in zip(index.split(batch_size), weights.split(batch_size)):
            batch = windows[rows].to(device)
            logits = logits_of(model(batch))[:, :-1]
            per_token = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1), reduction="none"
            ).view(batch.shape[0], -1)
            total += float((per_token.sum(dim=1).double().cpu() * w).sum())
    finally:
        model.train(training)
    summed = torch.tensor([total], dtype=torch.float64, device=collective_device(ctx))
    if ctx.enabled:
        dist.all_reduce(summed)
    return float(summed.cpu()[0]) / (count * (context - 1))


def full_tensors(obj: Any) -> Any:
    """``obj`` (nested dicts, lists, tuples) with every DTensor replaced by its full tensor, on the CPU.

    A collective: every rank must call it on structures with the same DTensors in the same order.
    """
    if is_dtensor(obj):
        return obj.full_tensor().detach().cpu()
    if isinstance(obj, dict):
        return {key: full_tensors(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [full_tensors(value) for value in obj]
    if isinstance(obj, tuple):
        return tuple(full_tensors(value) for value in obj)
    return obj


def load_optimizer_state_(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a full (unsharded) optimizer state into an optimizer over possibly sharded parameters.

    Moments the shape of a sharded parameter are cut into its shards (each rank holds the full values, read from
    the same checkpoint, so no data moves: ``src_data_rank=None``).
    """
    optimizer.load_state_dict(state)
    from torch.distributed.tensor import distribute_tensor

    for group in optimizer.param_groups:
        for param in group["params"]:
            if not is_dtensor(param):
                continue
            slots = optimizer.state.get(param, {})
            for key, value in list(slots.items()):
                if isinstance(value, torch.Tensor) and not is_dtensor(value) and value.shape == param.shape:
                    slots[key] = distribute_tensor(
                        value.to(param.device), param.device_mesh, param.placements, src_data_rank=None
                    )


def masks_agree(model: nn.Module, ctx: DistContext, *, where: str) -> None:
    """:func:`~nmsparse.recipes.distributed.check_masks_identical` where every rank holds whole masks.

    Masks sharded with their weights (DTensors under FSDP2) differ between ranks by construction; they are
    checked by the mask code itself and skipped here.
    """
    if not ctx.enabled:
        return
    if any(is_dtensor(mask) for mask in get_masks(model).values()):
        return
    check_masks_identical(model, ctx, where=where)
