"""Mask solvers on every ResNet-50-shaped weight: time and kept magnitude of exact, greedy and topn, against
one networkx min-cost flow per block (sampled and extrapolated) as the baseline measured in the same run.

    python benchmarks/bench_solvers.py            # full: ~400k 8x8 blocks and ~1.6M 4x4 blocks
    python benchmarks/bench_solvers.py --smoke    # seconds: a few layers, one repeat
    python benchmarks/bench_solvers.py --smoke --out /tmp/results   # result JSON only there

The first call of each method is timed separately (``first_call_seconds``): in a fresh process it includes
loading numba's kernels (or compiling them, the first time on a machine) unless ``--warmup`` ran
``nmsparse.solvers.warmup()`` first.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_out_argument, environment, print_environment, write_result  # noqa: E402

from nmsparse.layout import fits, to_blocks, to_matrix  # noqa: E402
from nmsparse.pattern import NMPattern  # noqa: E402
from nmsparse.recipes.compare_methods import random_weights, run_method  # noqa: E402
from nmsparse.recipes.shapes import resnet50_weight_shapes  # noqa: E402
from nmsparse.solvers import warmup  # noqa: E402
from nmsparse.testing import networkx_block_optimum  # noqa: E402


def networkx_seconds_per_block(
    weights: dict[str, torch.Tensor], pattern: NMPattern, sample: int, seed: int = 0
) -> tuple[float, int]:
    """Median-free mean time of one networkx min-cost flow per block over ``sample`` random blocks."""
    blocks = torch.cat([to_blocks(to_matrix(w.abs()), pattern.m) for w in weights.values() if fits(w.shape, pattern)])
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(blocks.shape[0], generator=generator)[:sample]
    start = time.perf_counter()
    for i in chosen.tolist():
        networkx_block_optimum(blocks[i].double().numpy(), pattern.n)
    return (time.perf_counter() - start) / len(chosen), int(blocks.shape[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny run: a few layers, one repeat")
    parser.add_argument("--patterns", nargs="+", default=["4:8-T", "2:4-T"])
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["exact", "greedy", "greedy-repair", "topn"],
        help="topn runs the plain n:m pattern of the same n and m, as the no-transpose reference",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--networkx-sample", type=int, default=300, help="blocks timed with networkx")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="auto", help="find_mask backend (default: auto)")
    parser.add_argument(
        "--warmup",
        action="store_true",
        help="compile/load the solvers' kernels with nmsparse.solvers.warmup() before timing",
    )
    add_out_argument(parser)
    args = parser.parse_args(argv)

    shapes = resnet50_weight_shapes()
    if args.smoke:
        shapes = shapes[1:4]
        args.repeats, args.networkx_sample = 1, min(args.networkx_sample, 5)
    weights = random_weights(shapes, seed=args.seed, device=args.device)
    env = environment(args.device)
    print_environment(env)
    if args.warmup:
        start = time.perf_counter()
        warmup(args.patterns, args.methods, device=args.device)
        print(f"warmup: {time.perf_counter() - start:.2f} s")
    print(
        f"weights: {len(weights)} tensors, {sum(w.numel() for w in weights.values()):,} Gaussian values; "
        f"median of {args.repeats} run(s) after one warm-up (numba compile excluded)\n"
    )

    rows: list[dict[str, Any]] = []
    for spec in args.patterns:
        pattern = NMPattern.parse(spec)
        nx_per_block, nblocks = networkx_seconds_per_block(weights, pattern, args.networkx_sample, args.seed)
        baseline = nx_per_block * nblocks
        rows.append(
            {
                "pattern": str(pattern),
                "method": "networkx flow/block (extrapolated)",
                "seconds": baseline,
                "kept": float("nan"),
                "valid": True,
                "exact_n": True,
                "blocks": nblocks,
            }
        )
        for method in args.methods:
            target = f"{pattern.n}:{pattern.m}" if method == "topn" else str(pattern)
            warm = time.perf_counter()
            first = run_method(weights, target, method, backend=args.backend)
            first_seconds = time.perf_counter() - warm
            results = (
                [first]
                if args.repeats == 0
                else [run_method(weights, target, method, backend=args.backend) for _ in range(args.repeats)]
            )
            seconds = statistics.median(r.seconds for r in results)
            rows.append(
                {
                    "pattern": target,
                    "method": method,
                    "seconds": seconds,
                    "kept": first.kept_magnitude,
                    "valid": first.valid,
                    "exact_n": first.exact_n,
                    "blocks": first.groups,
                    "first_call_seconds": first_seconds,
                    "speedup_vs_networkx": baseline / seconds,
                }
            )
            print(f"  {target:<6} {method:<14} {seconds:8.3f} s", flush=True)

    print(
        f"\n{'pattern':<7} {'method':<36} {'seconds':>10} {'kept |w|':>9} {'valid':>6} {'exactly n':>9} "
        f"{'vs networkx':>12}"
    )
    for row in rows:
        kept = "" if math.isnan(row["kept"]) else f"{100 * row['kept']:.2f}%"
        ratio = f"{row['speedup_vs_networkx']:.0f}x" if "speedup_vs_networkx" in row else "1x"
        print(
            f"{row['pattern']:<7} {row['method']:<36} {row['seconds']:10.3f} {kept:>9} "
            f"{'yes' if row['valid'] else 'NO':>6} {'yes' if row['exact_n'] else 'no':>9} {ratio:>12}"
        )
    name = f"solvers_{'smoke' if args.smoke else 'resnet50'}_{args.device}"
    path = write_result(name, {"environment": env, "rows": rows}, args.out)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
