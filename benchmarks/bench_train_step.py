"""One training step of a GPT-2-style decoder: dense vs 2:4-T masked-dense vs 2:4-T on sparse tensor cores.

Every mode trains the same decoder (same seed, random tokens, cross-entropy, AdamW) for ``--warmup`` untimed and
``--steps`` timed steps and reports the mean step time (which includes the mask refreshes) and the median:

* ``dense``: plain ``nn.Linear`` layers;
* ``masked``: :class:`nmsparse.DynamicSparsifier` 2:4-T on every block linear (exact masks, refresh every
  ``--refresh-every`` steps, SR-STE), products masked-dense;
* ``sparse``: the same, then :func:`nmsparse.accelerate.accelerate_` swaps the block linears whose measured
  speed-up at this shape reaches ``--min-speedup`` for ``SparseLinear`` (forward and dX on sparse tensor cores,
  W and W^T re-packed after every optimizer step);
* ``sparse-all`` (``--all``): every block linear swapped, whatever the measurement says.

The decoder is ``nmsparse.recipes.lm``'s GPT.
The ideal for two of three products at 2x is 1.5x (DESIGN §2); the issue's target is >= 1.1x dense.

    python benchmarks/bench_train_step.py                 # GPU, bf16, d_model 2048, 8 layers, 8 x 2048 tokens
    python benchmarks/bench_train_step.py --all --out /tmp/results
    python benchmarks/bench_train_step.py --smoke         # CPU, tiny decoder, seconds
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))
sys.path.insert(0, str(ROOT))

from bench_linear import DTYPES, environment  # noqa: E402

import nmsparse  # noqa: E402
from nmsparse.accelerate import accelerate_  # noqa: E402
from nmsparse.nn import SparseLinear  # noqa: E402

SPARSE_GLOB = "transformer.h.*"


def build_decoder(args: argparse.Namespace) -> tuple[nn.Module, str]:
    """The LM recipe's GPT-2-style decoder (it imports no optional dependency) at the benchmark's size."""
    from nmsparse.recipes.lm.model import GPT, GPTConfig

    config = GPTConfig(vocab_size=args.vocab, context=args.seq, d_model=args.d_model, n_layer=args.layers,
                       n_head=args.heads)
    return GPT(config), "nmsparse.recipes.lm.GPT"


def run_mode(mode: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    model, source = build_decoder(args)
    model = model.to(device=device, dtype=dtype)
    sparsifier = None
    report = None
    if mode != "dense":
        sparsifier = nmsparse.DynamicSparsifier(model, "2:4-T", method="exact", initial_method="exact",
                                                refresh_every=args.refresh_every, decay=2e-4, include=[SPARSE_GLOB])
    if mode in ("sparse", "sparse-all"):
        report = accelerate_(model, tokens=args.batch * args.seq, include=[SPARSE_GLOB],
                             min_speedup=args.min_speedup, force=mode == "sparse-all" or device.type != "cuda")
    gen = torch.Generator().manual_seed(args.seed + 1)
    idx = torch.randint(0, args.vocab, (args.batch, args.seq), generator=gen).to(device)
    targets = torch.randint(0, args.vocab, (args.batch, args.seq), generator=gen).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        logits = model(idx)
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1))
        loss.backward()
        opt.step()
        if sparsifier is not None:
            sparsifier.step()
        return float(loss.detach())  # synchronises

    losses = [step() for _ in range(args.warmup)]
    refresh_before = 0.0 if sparsifier is None else sparsifier.refresh_seconds
    refreshes_before = 0 if sparsifier is None else sparsifier.refreshes
    times = []
    for _ in range(args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        losses.append(step())
        times.append((time.perf_counter() - t0) * 1e3)
    swapped = sum(isinstance(m, SparseLinear) for m in model.modules())
    on_cores = 0 if report is None else len(report.accelerated)
    row: dict[str, Any] = {
        "mode": mode, "decoder": source, "mean_ms": statistics.fmean(times), "median_ms": statistics.median(times),
        "tokens_per_s": args.batch * args.seq / (statistics.fmean(times) / 1e3),
        "refreshes_timed": 0 if sparsifier is None else sparsifier.refreshes - refreshes_before,
        "refresh_ms_timed": 0.0 if sparsifier is None else (sparsifier.refresh_seconds - refresh_before) * 1e3,
        "swapped_layers": swapped, "sparse_core_layers": on_cores, "first_loss": losses[0], "last_loss": losses[-1],
        "finite": all(math.isfinite(v) for v in losses),
        "accelerate_report": None if report is None else report.to_dict(),
    }
    if device.type == "cuda":
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny decoder on the CPU (masked-dense), seconds")
    parser.add_argument("--d-model", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=8, help="sequences per step (tokens = batch x seq)")
    parser.add_argument("--vocab", type=int, default=50304, help="GPT-2's 50257 padded to a multiple of 128")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 40, smoke 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5, smoke 1)")
    parser.add_argument("--refresh-every", type=int, default=None, help="mask refresh period (default 40, smoke 2)")
    parser.add_argument("--min-speedup", type=float, default=1.05, help="accelerate_'s per-layer threshold")
    parser.add_argument("--all", action="store_true", help="also time every block linear swapped (sparse-all)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for bench_train_step.json (default: benchmarks/results; with --smoke: none)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.d_model, args.layers, args.heads, args.seq, args.batch, args.vocab = 64, 2, 2, 32, 2, 256
    args.steps = args.steps if args.steps is not None else (3 if args.smoke else 40)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 5)
    args.refresh_every = args.refresh_every if args.refresh_every is not None else (2 if args.smoke else 40)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.smoke else "cpu"))
    dtype = DTYPES[args.dtype] if device.type == "cuda" else torch.float32
    env = environment(device)
    print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()), flush=True)
    modes = ["dense", "masked", "sparse"] + (["sparse-all"] if args.all else [])
    rows = []
    for mode in modes:
        rows.append(run_mode(mode, args, device, dtype))
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(f"  done {mode}: {rows[-1]['mean_ms']:.1f} ms/step", flush=True)
    dense = rows[0]["mean_ms"]
    tokens = args.batch * args.seq
    dtype_name = str(dtype).replace("torch.", "")
    print(f"\nbench_train_step ({env.get('gpu', device.type)}, {dtype_name}, {rows[0]['decoder']}: "
          f"d_model {args.d_model}, {args.layers} layers, {args.batch} x {args.seq} = {tokens} tokens/step, "
          f"refresh every {args.refresh_every}; {args.steps} timed steps after {args.warmup})")
    print(f"{'mode':<11} {'mean ms':>9} {'median ms':>10} {'vs dense':>9} {'tokens/s':>11} {'sparse-core':>12} "
          f"{'refresh ms':>11} {'loss first->last':>18}")
    for r in rows:
        layers = f"{r['sparse_core_layers']}/{r['swapped_layers']}" if r["mode"].startswith("sparse") else "-"
        print(f"{r['mode']:<11} {r['mean_ms']:9.2f} {r['median_ms']:10.2f} {dense / r['mean_ms']:8.3f}x "
              f"{r['tokens_per_s']:11.0f} {layers:>12} {r['refresh_ms_timed']:11.1f} "
              f"{r['first_loss']:8.3f}->{r['last_loss']:.3f}")
        if not r["finite"]:
            print(f"  WARNING: non-finite loss in mode {r['mode']}")
    sparse = next(r for r in rows if r["mode"] == "sparse")
    ratio = dense / sparse["mean_ms"]
    print(f"target: sparse step (refresh + re-pack included) >= 1.1x dense: {ratio:.3f}x -> "
          f"{'met' if ratio >= 1.1 and sparse['sparse_core_layers'] else 'NOT met'} (ceiling 1.5x)")
    out = args.out if args.out is not None else (None if args.smoke else ROOT / "results")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        path = out / "bench_train_step.json"
        path.write_text(json.dumps({"environment": env, "args": vars(args) | {"out": str(args.out)}, "rows": rows},
                                   indent=1, default=str))
        print(f"wrote {path}")
    return 0 if all(r["finite"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
