"""Worker of ``test_distributed_masks.py``: run under ``torchrun --nproc_per_node 2`` (gloo); rank 0 writes JSON.

Every scenario trains the same small MLP twice from the same seed: once in this process on the whole batch
(the reference), once data-parallel (FSDP2 via the raw ``fully_shard`` order, or DDP) on this rank's half of the
batch. It records the largest weight difference, whether the masks agree, mask memory per rank and the collectives
that a refresh issues.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

import nmsparse
from nmsparse.nn import SparseLinear
from nmsparse.nn.sharding import local_tensor
from nmsparse.nn.state import raw_state_dict

PATTERN = "4:8-T"
STEPS = 6


def build(out_features: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, out_features), nn.ReLU(), nn.Linear(out_features, 8)
    )


def attach(model: nn.Module, mode: str) -> nmsparse.DynamicSparsifier | None:
    if mode == "static":
        nmsparse.prune_(model, PATTERN, include=["0", "2"])
        return None
    if mode == "sparselinear":  # SparseLinear layers (accelerate_'s swap), masked-dense on CPU
        nmsparse.prune_(model, "2:4-T", include=["0", "2"])
        for index in (0, 2):
            model[index] = SparseLinear.from_dense(model[index])
        return None
    return nmsparse.DynamicSparsifier(model, PATTERN, include=["0", "2"], refresh_every=2, decay=1e-2)


def full(value: torch.Tensor) -> torch.Tensor:
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def train(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sparsifier: Any,
    batches: list[tuple[torch.Tensor, ...]],
) -> None:
    for x, y in batches:
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sparsifier is not None:
            sparsifier.step()


def shard(model: nn.Module) -> nn.Module:
    for layer in (model[0], model[2], model[4]):
        fully_shard(layer)
    fully_shard(model)
    return model


def scenario(parallel: str, mode: str, out_features: int, folder: str) -> dict[str, Any]:
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(1)
    data = [(torch.randn(8, 16), torch.randn(8, 8)) for _ in range(STEPS + 3)]
    half = 8 // world
    local = [(x[rank * half : (rank + 1) * half], y[rank * half : (rank + 1) * half]) for x, y in data]

    ref = build(out_features)
    ref_sparsifier = attach(ref, mode)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    train(ref, ref_opt, ref_sparsifier, data[:STEPS])

    model = build(out_features)
    sparsifier = attach(model, mode)
    wrapped: nn.Module = shard(model) if parallel == "fsdp" else DistributedDataParallel(model)
    opt = torch.optim.AdamW(wrapped.parameters(), lr=1e-2)
    train(wrapped, opt, sparsifier, local[:STEPS])

    result: dict[str, Any] = {"keys": list(model.state_dict())}
    state = {k: full(v) for k, v in model.state_dict().items()}
    result["max_diff"] = max(float((state[k] - v).abs().max()) for k, v in ref.state_dict().items())
    masks = nmsparse.get_masks(model) or {f"{i}.weight": model[i].mask for i in (0, 2)}
    result["masks_equal"] = all(torch.equal(full(masks[k]), v) for k, v in nmsparse.get_masks(ref).items())
    result["mask_elements_per_rank"] = sum(local_tensor(m).numel() for m in masks.values())
    result["mask_elements_total"] = sum(m.numel() for m in masks.values())
    result["sharded"] = all(type(m).__name__ == "DTensor" for m in masks.values())
    result["valid"] = sparsifier.masks_valid() if sparsifier is not None else None

    with torch.no_grad():  # an evaluation forward leaves the local shards masked (stashed) ...
        wrapped(local[0][0])
    with raw_state_dict():  # ... but nmsparse's raw record still shows the dense values
        raw = {k: full(v) for k, v in model.state_dict().items()}
        ref_raw = ref.state_dict()
    result["raw_after_eval_diff"] = max(
        float((raw[k] - v).abs().max()) for k, v in ref_raw.items() if v.dtype != torch.bool and k in raw
    )

    if sparsifier is not None:  # collectives a refresh issues
        counts = {"all_gather": 0}
        originals: dict[str, Callable[..., Any]] = {}
        for name in ("all_gather", "all_gather_into_tensor", "all_gather_object"):
            originals[name] = getattr(dist, name)

            def counting(*args: Any, _name: str = name, **kwargs: Any) -> Any:
                counts["all_gather"] += 1
                return originals[_name](*args, **kwargs)

            setattr(dist, name, counting)
        try:
            sparsifier.refresh()
        finally:
            for name, fn in originals.items():
                setattr(dist, name, fn)
        result["refresh_all_gathers"] = counts["all_gather"]
        ref_sparsifier.refresh()  # type: ignore[union-attr]

    if parallel == "fsdp":  # torch.distributed.checkpoint: save, continue, reload into a fresh model, continue
        model_sd, optim_sd = get_state_dict(model, opt)
        dcp.save({"model": model_sd, "optim": optim_sd, "sparse": nmsparse.SparseState(model)}, checkpoint_id=folder)
        saved_counters = None if sparsifier is None else sparsifier.state_dict()
        train(model, opt, sparsifier, local[STEPS:])
        continued = {k: full(v) for k, v in model.state_dict().items()}
        torch.manual_seed(7)  # other initial weights and masks: everything must come from the checkpoint
        fresh = build(out_features)
        fresh_sparsifier = attach(fresh, mode)
        shard(fresh)
        fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
        model_sd, optim_sd = get_state_dict(fresh, fresh_opt)
        loaded = {"model": model_sd, "optim": optim_sd, "sparse": nmsparse.SparseState(fresh)}
        dcp.load(loaded, checkpoint_id=folder)
        set_state_dict(fresh, fresh_opt, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
        if fresh_sparsifier is not None and saved_counters is not None:
            fresh_sparsifier.load_state_dict(saved_counters)
        train(fresh, fresh_opt, fresh_sparsifier, local[STEPS:])
        resumed = {k: full(v) for k, v in fresh.state_dict().items()}
        result["resume_exact"] = all(torch.equal(continued[k], resumed[k]) for k in continued)
    return result


def gpt2_scenario() -> dict[str, Any]:
    """GPT-2's Conv1D layers (weights stored [in, out]): FSDP2 shards their input dimension, along which the
    pattern's groups run; dynamic 4:8-T under FSDP2 against one process."""
    import transformers

    rank, world = dist.get_rank(), dist.get_world_size()

    def make() -> tuple[nn.Module, Any]:
        torch.manual_seed(0)
        config = transformers.GPT2Config(
            n_embd=32,
            n_layer=1,
            n_head=2,
            vocab_size=64,
            n_positions=16,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
        model = transformers.GPT2LMHeadModel(config)
        return model, nmsparse.DynamicSparsifier(
            model, PATTERN, include=["transformer.h.*"], refresh_every=2, decay=1e-2
        )

    torch.manual_seed(3)
    batches = [torch.randint(0, 64, (4, 16)) for _ in range(STEPS)]
    ref, ref_sparsifier = make()
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    model, sparsifier = make()
    for block in model.transformer.h:
        fully_shard(block)
    fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    half = 4 // world
    for batch in batches:
        for net, optimizer, sp, x in (
            (ref, ref_opt, ref_sparsifier, batch),
            (model, opt, sparsifier, batch[rank * half : (rank + 1) * half]),
        ):
            loss = net(x, labels=x).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            sp.step()
    state = {k: full(v) for k, v in model.state_dict().items()}
    masks = nmsparse.get_masks(model)
    return {
        "max_diff": max(float((state[k] - v).abs().max()) for k, v in ref.state_dict().items()),
        "masks_equal": all(torch.equal(full(masks[k]), v) for k, v in nmsparse.get_masks(ref).items()),
        "sharded": all(type(m).__name__ == "DTensor" for m in masks.values()),
        "valid": sparsifier.masks_valid(),
    }


def pruning_after_fully_shard_is_refused() -> str:
    model = shard(build(16))
    try:
        nmsparse.prune_(model, PATTERN, include=["0", "2"])
    except nmsparse.NMSparseError as exc:
        return str(exc)
    return ""


def main() -> None:
    out, folder = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    results = {}
    for parallel, mode, out_features in [
        ("fsdp", "static", 16),
        ("fsdp", "dynamic", 16),
        ("fsdp", "dynamic", 24),
        ("fsdp", "sparselinear", 16),
        ("ddp", "static", 16),
        ("ddp", "dynamic", 16),
    ]:
        name = f"{parallel}-{mode}-{out_features}"
        results[name] = scenario(parallel, mode, out_features, f"{folder}/{name}")
    results["prune-after-shard"] = {"error": pruning_after_fully_shard_is_refused()}
    results["fsdp-gpt2-conv1d"] = gpt2_scenario()
    if dist.get_rank() == 0:
        with open(out, "w") as handle:
            json.dump(results, handle)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
