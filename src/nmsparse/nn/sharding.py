"""Masks under FSDP2 (``fully_shard``): sharded with their weights, applied before the all-gather.

The conventional order (attach masks, ``fully_shard`` each block and the root, build the optimizer) works with no
nmsparse call in between. What happens:

* **Sharded masks.** The first time nmsparse meets a masked weight that FSDP2 has sharded (dim 0, a 1-D mesh),
  the layer's :class:`~nmsparse.NMMask` keeps only the rows of its mask that this rank owns, as a ``DTensor`` with
  the weight's placement: mask memory per rank is ``1/N`` of the total, and ``state_dict`` stays sharded.
* **No extra communication.** Just before an FSDP module all-gathers its parameters, a forward pre-hook (one
  process-wide hook, :func:`install_forward_hook`) zeroes the pruned entries of each masked *local shard* in place
  (a straight-through mask first stashes their dense values). FSDP2 then gathers effective weights, the layer uses
  them as they are, and nothing but FSDP's own collectives run.
* **Gradients on the shard.** After FSDP2's reduce-scatter, a post-accumulate-grad hook on the sharded parameter
  restores the stashed dense values and applies the mask's gradient rule to the local gradient: ``g * mask``
  (static) or ``g + decay * (~mask) * w`` (straight-through, SR-STE). Both are elementwise, so doing them on the
  shard after the reduction equals doing them before it.
* **Refreshes on the shard.** :meth:`nmsparse.DynamicSparsifier.refresh` solves each rank's own rows when they hold
  whole ``m x m`` blocks (the rows per rank are a multiple of ``m``; for ``Conv1D`` weights, stored ``[in, out]``,
  always needed) and gathers the weight otherwise (:func:`local_layer_mask`, logged once).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .._logging import logger

__all__ = [
    "is_dtensor",
    "local_tensor",
    "ShardState",
    "install_forward_hook",
    "gather_rows",
    "local_layer_mask",
    "rows_aligned",
    "bump_generation",
]

try:  # torch >= 2.5
    from torch.distributed.tensor import DTensor, Shard
except ImportError:  # pragma: no cover - torch 2.4
    from torch.distributed._tensor import DTensor, Shard  # type: ignore[no-redef,unused-ignore]

try:  # torch >= 2.6
    from torch.distributed.fsdp import FSDPModule
except ImportError:  # pragma: no cover - older torch
    try:
        from torch.distributed._composable.fsdp import FSDPModule  # type: ignore[no-redef,unused-ignore]
    except ImportError:
        FSDPModule = None  # type: ignore[assignment,misc]


def is_dtensor(value: object) -> bool:
    """Whether ``value`` is a ``torch.distributed`` ``DTensor`` (a sharded parameter or mask)."""
    return isinstance(value, DTensor)


def local_tensor(value: torch.Tensor) -> torch.Tensor:
    """The part of ``value`` this process holds: ``value`` itself unless it is a ``DTensor``."""
    if isinstance(value, DTensor):
        with torch.no_grad():
            return value.to_local()
    return value


@dataclass
class ShardState:
    """Where this rank's rows of a sharded masked weight lie, and the stash of their pruned dense values."""

    param: nn.Parameter
    rows: int
    start: int
    count: int
    chunk: int
    stashed: bool = False
    pruned: torch.Tensor | None = None

    @classmethod
    def of(cls, param: nn.Parameter) -> ShardState:
        """Describe a parameter FSDP2 sharded along dim 0 of a 1-D mesh (``torch.chunk`` rows per rank)."""
        mesh = param.device_mesh  # type: ignore[attr-defined]
        placements = tuple(param.placements)  # type: ignore[attr-defined]
        if mesh.ndim != 1 or len(placements) != 1 or not isinstance(placements[0], Shard) or placements[0].dim != 0:
            raise NotImplementedError(
                f"nmsparse masks support FSDP2 sharding along dim 0 of a 1-D device mesh (fully_shard's default); "
                f"got mesh of {mesh.ndim} dims with placements {placements}: use fully_shard without HSDP or "
                f"tensor parallelism on masked layers"
            )
        rows = int(param.shape[0])
        world = mesh.size()
        chunk = math.ceil(rows / world) if rows else 0
        start = min(mesh.get_local_rank() * chunk, rows)
        count = int(local_tensor(param).shape[0])
        return cls(param=param, rows=rows, start=start, count=count, chunk=chunk)

    def group(self) -> Any:
        """The process group of the parameter's mesh."""
        return self.param.device_mesh.get_group()  # type: ignore[attr-defined]

    def as_dtensor(self, local: torch.Tensor) -> torch.Tensor:
        """A tensor of this rank's rows as a ``DTensor`` laid out like the parameter."""
        shape = (self.rows, *local.shape[1:])
        stride = torch.empty(shape, device="meta").stride()
        return DTensor.from_local(
            local,
            self.param.device_mesh,  # type: ignore[attr-defined]
            self.param.placements,  # type: ignore[attr-defined]
            run_check=False,
            shape=torch.Size(shape),
            stride=stride,
        )


def gather_rows(local: torch.Tensor, state: ShardState) -> torch.Tensor:
    """All ranks' rows of a dim-0-sharded tensor, as one full tensor (one ``all_gather``)."""
    group = state.group()
    world = dist.get_world_size(group)
    dtype = torch.uint8 if local.dtype == torch.bool else local.dtype
    buffer = torch.zeros((state.chunk, *local.shape[1:]), dtype=dtype, device=local.device)
    buffer[: local.shape[0]] = local
    out = [torch.empty_like(buffer) for _ in range(world)]
    dist.all_gather(out, buffer, group=group)
    full = torch.cat(out)[: state.rows]
    return full.bool() if local.dtype == torch.bool else full


def rows_aligned(state: ShardState, m: int, *, transposed: bool, transposable: bool) -> bool:
    """Whether every rank's rows hold whole groups of the pattern, so masks can be solved on the local shard.

    Dim 0 is the output dimension of a Linear (plain ``n:m`` groups lie within a row: always local; ``-T`` needs
    whole ``m x m`` blocks) and the input dimension of a ``Conv1D`` stored ``[in, out]`` (groups run along it).
    """
    if not (transposed or transposable):
        return True
    return state.chunk % m == 0


_warned_gather: set[str] = set()


def local_layer_mask(
    name: str,
    state: ShardState,
    local_weight: torch.Tensor,
    m: int,
    *,
    transposed: bool,
    transposable: bool,
    solve: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """This rank's rows of the mask that ``solve`` finds for the whole weight.

    On aligned shards ``solve`` runs on the local rows alone, with no communication; otherwise the weight is
    gathered, solved whole, and this rank's rows kept (said once per layer in the log).
    """
    if rows_aligned(state, m, transposed=transposed, transposable=transposable):
        if local_weight.shape[0] == 0:
            return torch.zeros(local_weight.shape, dtype=torch.bool, device=local_weight.device)
        return solve(local_weight)
    if name not in _warned_gather:
        _warned_gather.add(name)
        logger.info(
            "%s: %d rows per rank are not a multiple of m=%d, so its masks are solved on the gathered "
            "weight (one all_gather per refresh); shard sizes that are multiples of m avoid it",
            name or "layer",
            state.chunk,
            m,
        )
    full = solve(gather_rows(local_weight, state))
    return full[state.start : state.start + state.count]


# ----------------------------------------------------------------------------------------------- forward hook

_generation = 0
_cache: weakref.WeakKeyDictionary[nn.Module, tuple[int, list[Callable[[], None]]]] = weakref.WeakKeyDictionary()
_hook: Any = None


def bump_generation() -> None:
    """Forget which masks sit under which FSDP module (a mask was attached or removed)."""
    global _generation
    _generation += 1


def _prepare(nm: Any, plist: nn.Module) -> Callable[[], None]:
    def prepare() -> None:
        original = plist._parameters.get("original")
        if isinstance(original, DTensor):
            nm.adopt_sharding(original)
            nm.stash()

    return prepare


def _masks_under(module: nn.Module) -> list[Callable[[], None]]:
    """One "shard and mask the local rows" call per masked weight under ``module`` (cached per generation).

    An ``NMMask`` is recognised by what this module calls on it (``adopt_sharding`` and ``stash``), not by class:
    ``nn.parametrize`` imports this module, and this module does not import it back.
    """
    cached = _cache.get(module)
    if cached is not None and cached[0] == _generation:
        return cached[1]
    found: list[Callable[[], None]] = []
    for sub in module.modules():
        prepare_shard = getattr(sub, "prepare_shard_", None)
        if callable(prepare_shard):  # SparseLinear
            found.append(prepare_shard)
            continue
        plists = getattr(sub, "parametrizations", None)
        if plists is None or "weight" not in plists:
            continue
        plist = plists["weight"]
        found += [
            _prepare(p, plist)
            for p in plist
            if callable(getattr(p, "adopt_sharding", None)) and callable(getattr(p, "stash", None))
        ]
    _cache[module] = (_generation, found)
    return found


def _before_forward(module: nn.Module, args: Any) -> None:
    """Process-wide forward pre-hook: before an FSDP module gathers, mask the local shards beneath it."""
    if FSDPModule is None or not isinstance(module, FSDPModule):
        return
    for prepare in _masks_under(module):
        prepare()


def install_forward_hook() -> None:
    """Register :func:`_before_forward` once per process, when a process group is up (FSDP2 needs one).

    Called when a mask is attached and when a sharded weight is first met. It runs before every module's own
    hooks, so before FSDP2's pre-forward all-gather; for modules that are not FSDP modules it returns after one
    ``isinstance`` check. Single-process runs never install it (``torch.compile`` warns about global hooks). Masks
    attached before the process group existed work all the same: until the hook is installed, a layer multiplies
    FSDP2's gathered weight by its full mask.
    """
    global _hook
    if _hook is None and FSDPModule is not None and dist.is_available() and dist.is_initialized():
        _hook = torch.nn.modules.module.register_module_forward_pre_hook(_before_forward)
