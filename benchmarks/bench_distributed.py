"""FSDP2 with n:m masks on 2 CPU processes (gloo): step time sparse vs dense, refresh local vs gathered, mask bytes.

Launches itself under ``torch.distributed.run --nproc_per_node 2``. Each rank builds the same LLaMA-shaped
``transformers`` model from a config (nothing downloaded), attaches masks (``DynamicSparsifier``, 2:4-T, exact)
to every decoder-layer linear, then shards it the conventional way (``fully_shard`` on each decoder layer, then the
root) and builds AdamW. A dense twin is sharded the same way. In the same run:

* **step time**: forward + backward + AdamW step, dense and sparse steps interleaved, median over the timed steps
  (refreshes excluded: the refresh period is longer than the run);
* **refresh time**: ``DynamicSparsifier.refresh()`` on each rank's own shard (no all-gather) against the same
  refresh with the weights gathered (the fallback for shards that do not hold whole m x m blocks), median;
* **mask memory**: bool bytes of the masks each rank holds against the bytes of all masks.

Usage:
    python benchmarks/bench_distributed.py            # hidden 512, MLP 1408, 2 layers, 4 x 128 tokens per rank
    python benchmarks/bench_distributed.py --smoke    # tiny, a few seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_out_argument, environment, print_environment, write_result  # noqa: E402


def _worker(settings: dict[str, Any], out: str) -> None:
    import torch
    import torch.distributed as dist
    import transformers
    from torch.distributed.fsdp import fully_shard

    import nmsparse
    from nmsparse.nn import sharding
    from nmsparse.nn.sharding import local_tensor

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    config = transformers.LlamaConfig(
        hidden_size=settings["hidden"],
        intermediate_size=settings["mlp"],
        num_hidden_layers=settings["layers"],
        num_attention_heads=settings["heads"],
        num_key_value_heads=settings["kv_heads"],
        vocab_size=settings["vocab"],
        max_position_embeddings=settings["tokens"],
    )

    def build(sparse: bool) -> tuple[Any, Any, Any]:
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(config)
        sparsifier = None
        if sparse:
            sparsifier = nmsparse.DynamicSparsifier(
                model, "2:4-T", include=["model.layers.*"], method="exact", refresh_every=10**9, decay=2e-4
            )
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-4), sparsifier

    dense, dense_opt, _ = build(False)
    sparse, sparse_opt, sparsifier = build(True)
    generator = torch.Generator().manual_seed(rank)
    batch = torch.randint(0, settings["vocab"], (settings["batch"], settings["tokens"]), generator=generator)

    def step(model: Any, opt: Any) -> float:
        start = time.perf_counter()
        loss = model(batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"dense": [], "sparse": []}
    for i in range(settings["warmup"] + settings["steps"]):
        order = [("dense", dense, dense_opt), ("sparse", sparse, sparse_opt)]
        for name, model, opt in order if i % 2 == 0 else order[::-1]:
            seconds = step(model, opt)
            if i >= settings["warmup"]:
                times[name].append(seconds)

    assert sparsifier is not None
    refresh: dict[str, list[float]] = {"local": [], "gathered": []}
    aligned = sharding.rows_aligned
    for i in range(settings["refreshes"]):
        for name in ["local", "gathered"] if i % 2 == 0 else ["gathered", "local"]:
            if name == "gathered":
                sharding.rows_aligned = lambda *a, **k: False  # type: ignore[assignment]
            dist.barrier()
            start = time.perf_counter()
            sparsifier.refresh()
            refresh[name].append(time.perf_counter() - start)
            sharding.rows_aligned = aligned
    valid = sparsifier.masks_valid()

    masks = nmsparse.get_masks(sparse)
    local_bytes = sum(local_tensor(m).numel() * local_tensor(m).element_size() for m in masks.values())
    total_bytes = sum(m.numel() * m.element_size() for m in masks.values())
    per_rank = [0] * dist.get_world_size()
    dist.all_gather_object(per_rank, local_bytes)
    result = {
        "step_ms": {k: 1e3 * statistics.median(v) for k, v in times.items()},
        "refresh_ms": {k: 1e3 * statistics.median(v) for k, v in refresh.items()},
        "mask_bytes_per_rank": per_rank,
        "mask_bytes_total": total_bytes,
        "masks_valid": bool(valid),
        "sparse_layers": len(masks),
    }
    result["step_ratio"] = result["step_ms"]["sparse"] / result["step_ms"]["dense"]
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, a few steps")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model")
    add_out_argument(parser)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(json.loads(args.settings), args.worker)
        return
    settings = dict(
        hidden=512,
        mlp=1408,
        layers=2,
        heads=8,
        kv_heads=4,
        vocab=1024,
        tokens=128,
        batch=4,
        warmup=3,
        steps=args.steps,
        refreshes=5,
    )
    if args.smoke:
        settings.update(
            hidden=64,
            mlp=128,
            layers=1,
            heads=4,
            kv_heads=2,
            vocab=128,
            tokens=16,
            batch=2,
            warmup=1,
            steps=2,
            refreshes=1,
        )
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            __file__,
            "--worker",
            str(out),
            "--settings",
            json.dumps(settings),
        ]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0 or not out.exists():
            sys.exit(f"bench_distributed: the torchrun workers failed:\n{done.stderr[-3000:]}")
        result = json.loads(out.read_text())
    env_info = environment("cpu")
    env_info["processes"] = 2
    print_environment(env_info)
    print(
        f"LLaMA-shaped: hidden {settings['hidden']}, MLP {settings['mlp']}, {settings['layers']} layers, "
        f"{settings['batch']} x {settings['tokens']} tokens per rank, 2:4-T on {result['sparse_layers']} linears, "
        f"FSDP2 (fully_shard per decoder layer + root), gloo, 1 thread per process"
    )
    print(f"{'measure':<34}{'dense / local':>15}{'sparse / gathered':>19}{'ratio':>8}")
    step = result["step_ms"]
    print(f"{'FSDP2 step, median ms':<34}{step['dense']:>15.1f}{step['sparse']:>19.1f}{result['step_ratio']:>8.2f}")
    refresh = result["refresh_ms"]
    print(
        f"{'refresh, median ms':<34}{refresh['local']:>15.1f}{refresh['gathered']:>19.1f}"
        f"{refresh['gathered'] / refresh['local']:>8.2f}"
    )
    share = max(result["mask_bytes_per_rank"]) / result["mask_bytes_total"]
    print(
        f"mask bytes per rank {result['mask_bytes_per_rank']} of {result['mask_bytes_total']} in all "
        f"({share:.2f} per rank); masks valid: {result['masks_valid']}"
    )
    write_result(
        "bench_distributed" + ("_smoke" if args.smoke else ""),
        {"environment": env_info, "settings": settings, **result},
        args.out,
    )


if __name__ == "__main__":
    main()
