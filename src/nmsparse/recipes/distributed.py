"""Data-parallel training helpers: process-group set-up from ``torchrun``'s environment and mask agreement checks.

``torchrun --nproc_per_node=N -m nmsparse train ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address; :func:`init_distributed` reads them and joins the group (``nccl`` on CUDA, ``gloo`` on CPU).
Every rank computes masks from its own copy of the weights. The copies are identical (same seed, DDP's initial
broadcast, all-reduced gradients), so the masks are too, and :func:`check_masks_identical` verifies it after
every refresh by all-gathering a checksum of the masks: a mismatch raises instead of training silently apart.
"""

from __future__ import annotations

import gc
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from nmsparse.errors import ConfigError, MaskMismatchError, NMSparseError
from nmsparse.prune import get_masks

__all__ = [
    "DistContext",
    "init_distributed",
    "shutdown_distributed",
    "mask_checksum",
    "check_masks_identical",
    "all_reduce_sum",
    "average_batchnorm_stats_",
    "gather_objects",
    "broadcast_object",
    "collective_device",
    "barrier",
    "main_first",
]

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a data-parallel job (``world_size == 1``: a single process).

    Attributes:
        rank: global rank.
        world_size: number of processes.
        local_rank: rank on this machine (the CUDA device index under ``torchrun``).
        backend: ``"gloo"``, ``"nccl"`` or ``None`` for a single process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """Whether a process group with more than one process is in use."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prints and writes files."""
        return self.rank == 0


def init_distributed(*, device: str = "auto") -> DistContext:
    """Join the process group described by ``torchrun``'s environment, or return a single-process context.

    Args:
        device: the run's device setting; ``"cpu"`` forces ``gloo``, otherwise ``nccl`` is used when CUDA is
            available.

    Raises:
        ConfigError: ``WORLD_SIZE > 1`` without ``RANK`` (not started by ``torchrun``).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    if "RANK" not in os.environ:
        raise ConfigError(
            f"WORLD_SIZE={world_size} is set but RANK is not; start data-parallel runs with "
            f"'torchrun --nproc_per_node=N -m nmsparse train ...'"
        )
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, backend=dist.get_backend())


def shutdown_distributed(ctx: DistContext, *, completed: bool = False) -> None:
    """Leave the process group joined by :func:`init_distributed` (no-op for a single process).

    With ``completed`` (every rank finished its work) the ranks first meet at a barrier: a rank that tore its
    gloo group down while another still finished its last collective aborted the other one ("terminate called
    without an active exception", seen in 2-process runs). After an error there is no barrier, which could wait
    for a rank that is not coming.
    """
    if ctx.enabled and dist.is_initialized():
        if completed:
            dist.barrier()
        # Free unreferenced collectives' work objects (DDP's among them) while the interpreter is fully alive:
        # gloo worker threads that still hold tensors at interpreter finalization abort the process (pytorch
        # discussion of an atexit destroy, 2026). Observed rarely in 2-process runs even after the barrier.
        gc.collect()
        dist.destroy_process_group()


def collective_device(ctx: DistContext) -> torch.device:
    """Where tensors of collectives live: the current GPU under nccl, else the CPU."""
    if ctx.backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def mask_checksum(model: nn.Module) -> tuple[int, int]:
    """``(checksum, kept)`` of every mask of ``model``: a 63-bit BLAKE2 hash of the bit-packed masks (with their
    names and shapes) and the number of kept weights.

    Two models with the same masks give the same pair; any differing entry changes the checksum. The masks are
    copied to the CPU and packed 8 per byte, so hashing ResNet-50's 23.5M mask entries reads about 3 MB.
    """
    digest = hashlib.blake2b(digest_size=8)
    kept = 0
    for name, mask in sorted(get_masks(model).items()):
        digest.update(f"{name}:{tuple(mask.shape)};".encode())
        flat = mask.reshape(-1).cpu().numpy()
        digest.update(np.packbits(flat).tobytes())
        kept += int(np.count_nonzero(flat))
    return int.from_bytes(digest.digest(), "little") >> 1, kept  # >> 1: fits a signed int64 tensor


def check_masks_identical(model: nn.Module, ctx: DistContext, *, where: str) -> int:
    """All-gather :func:`mask_checksum` and raise if any rank's masks differ from rank 0's.

    Returns:
        The checksum (identical on every rank).

    Raises:
        MaskMismatchError: naming the ranks whose masks differ, with their checksums.
    """
    checksum, kept = mask_checksum(model)
    if not ctx.enabled:
        return checksum
    device = collective_device(ctx)
    local = torch.tensor([checksum, kept], dtype=torch.int64, device=device)
    gathered = [torch.zeros_like(local) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, local)
    values = [tuple(int(v) for v in t.cpu()) for t in gathered]
    differing = [rank for rank, value in enumerate(values) if value != values[0]]
    if differing:
        raise MaskMismatchError(
            f"{where}: masks differ between ranks (checksum, kept) per rank: {values}; ranks {differing} disagree "
            f"with rank 0. Data-parallel training needs identical masks on every rank: check that every rank "
            f"uses the same seed, pattern, method and weights"
        )
    return checksum


def all_reduce_sum(values: list[float], ctx: DistContext) -> list[float]:
    """Sum a short list of numbers over ranks (float64; identity for a single process)."""
    if not ctx.enabled:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=collective_device(ctx))
    dist.all_reduce(tensor)
    return [float(v) for v in tensor.cpu()]


def average_batchnorm_stats_(model: nn.Module, ctx: DistContext) -> None:
    """Average batch-norm running means and variances over ranks, in place.

    Without synchronised batch norm each rank accumulates statistics of its own shard; averaging them before
    evaluation and checkpointing makes every rank hold the same model.
    """
    if not ctx.enabled:
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            for buffer in (module.running_mean, module.running_var):
                if buffer is not None:
                    dist.all_reduce(buffer)
                    buffer.div_(ctx.world_size)


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op for one process)."""
    if ctx.enabled:
        dist.barrier()


def main_first(action: Callable[[], T], ctx: DistContext) -> T:
    """``action()`` on rank 0, then (when it succeeded) on the other ranks; rank 0's error is raised everywhere.

    For steps that may write (opening a run directory to resume reconciles its files): the other ranks repeat
    them once rank 0 is done, when there is nothing left to write.
    """
    if not ctx.enabled:
        return action()
    result: T | None = None
    error: NMSparseError | None = None
    if ctx.is_main:
        try:
            result = action()
        except NMSparseError as exc:
            error = exc
    error = broadcast_object(error, ctx)
    if error is not None:
        raise error
    if not ctx.is_main:
        result = action()
    return result  # type: ignore[return-value]
