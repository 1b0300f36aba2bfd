"""GPU mask kernels: median time, bandwidth against the read-W-once floor, and kept magnitude, per method and size.

Sizes: 4096^2, 8192^2, the ResNet-50 weight set (matrix views that tile into the pattern's blocks) and a
GPT-2-medium weight set (24 layers x qkv/proj/fc/fc-proj). Methods: the Triton kernels of nmsparse.kernels
(exact 2:4-T, the same with the masked W written, greedy 2:4-T/4:8-T/8:16-T, the exact 4:8-T/8:16-T flow,
plain 2:4 top-n), their torch twins (the flow's runs on the device too), the CPU numba exact solver, and on
CUDA torch's own transposable 2:4 tile kernel (``torch._sparse_semi_structured_tile(W,
algorithm="largest_abs_values_greedy")``) as the same-run baseline. The floor is the time to read W once at
the copy bandwidth measured in the same run (a device-to-device copy, bytes read plus written).

    python benchmarks/bench_kernels.py                       # CUDA (bf16) when visible, else CPU (fp32)
    python benchmarks/bench_kernels.py --smoke --out DIR     # seconds on a CPU: tiny sizes, one repeat
    python benchmarks/bench_kernels.py --sizes 8192x8192 --methods exact24-triton tile24-torch

Targets (H100/H200, bf16, 8192^2): exact 2:4-T <= 0.15 ms, greedy 4:8-T <= 1 ms, exact 4:8-T <= 20 ms.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, environment, print_environment, write_result  # noqa: E402

import nmsparse.kernels as K  # noqa: E402
from nmsparse.recipes.shapes import resnet50_weight_shapes  # noqa: E402

MaskFn = Callable[[torch.Tensor], torch.Tensor]
TimedFn = Callable[[torch.Tensor], object]


def gpt2_medium_shapes(scale: int = 1) -> list[tuple[str, tuple[int, int]]]:
    """Linear weights ``[out, in]`` of GPT-2 medium (d_model 1024, 24 layers; ``scale`` divides the sizes)."""
    d = 1024 // scale
    shapes = []
    for layer in range(24 if scale == 1 else 1):
        shapes += [
            (f"h.{layer}.attn.c_attn", (3 * d, d)),
            (f"h.{layer}.attn.c_proj", (d, d)),
            (f"h.{layer}.mlp.c_fc", (4 * d, d)),
            (f"h.{layer}.mlp.c_proj", (d, 4 * d)),
        ]
    return shapes


def weight_set(size: str, *, smoke: bool) -> list[tuple[int, int]]:
    """Matrix shapes of one benchmark size."""
    if size == "resnet50":
        views = []
        for _, shape in resnet50_weight_shapes():
            out = shape[0]
            k = math.prod(shape[1:])
            if out % 16 == 0 and k % 16 == 0:  # tiles into 4x4, 8x8 and 16x16 blocks
                views.append((out, k))
        return views[:3] if smoke else views
    if size == "gpt2-medium":
        return [s for _, s in gpt2_medium_shapes(16 if smoke else 1)][: 2 if smoke else None]
    rows, cols = (int(v) for v in size.lower().split("x"))
    return [(rows, cols)]


def copy_bandwidth(device: str, *, smoke: bool) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    nbytes = (8 << 20) if smoke else (1 << 30 if device == "cuda" else 256 << 20)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    seconds = time_median(lambda: dst.copy_(src), device=device, repeats=3 if smoke else 20, budget_s=5.0)
    return 2 * nbytes / seconds


def time_median(fn: Callable[[], object], *, device: str, repeats: int, budget_s: float) -> float:
    """Median seconds of ``fn`` after one warm-up call (compilation); stops early past ``budget_s``."""
    fn()
    times: list[float] = []
    start_all = time.perf_counter()
    for _ in range(repeats):
        if device == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        if time.perf_counter() - start_all > budget_s:
            break
    return statistics.median(times)


def tile24(w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """torch's transposable 2:4 greedy over 4x4 tiles, packing W and W^T for cuSPARSELt (the timed call)."""
    return torch._sparse_semi_structured_tile(w, algorithm="largest_abs_values_greedy", use_cutlass=False)


def tile24_mask(w: torch.Tensor) -> torch.Tensor:
    """The mask :func:`tile24` chose, read back by applying its thread masks to W (W has no exact zeros)."""
    bitmask = tile24(w)[-1]
    return torch._sparse_semi_structured_apply_dense(w, bitmask) != 0


def methods(device: str) -> dict[str, tuple[str, TimedFn, MaskFn]]:
    """``name -> (pattern, timed fn(W), fn(W) -> mask)`` of every method that can run on ``device``."""
    # The plain kernels and solvers, resolved once: the timings hold no per-call input checks.
    from nmsparse import find_mask
    from nmsparse.pattern import NMPattern
    from nmsparse.solvers import resolve

    def solver(method: str, pattern: str, backend: str) -> MaskFn:
        solve = resolve(method, pattern, device, backend=backend)
        return lambda w: solve(w.abs())

    def numba_exact(pattern: str) -> MaskFn:
        return lambda w: find_mask(w, pattern, method="exact", backend="numba")

    out: dict[str, tuple[str, MaskFn]] = {}  # timed fn = mask fn, except for the baseline below
    if K.triton_runnable(device) is None:
        from nmsparse.kernels import triton_kernels as tk

        out["exact24-triton"] = ("2:4-T", lambda w: tk.exact4_triton(w, 2, absolute=True))
        out["exact24-masked-triton"] = (
            "2:4-T",
            lambda w: tk.exact4_triton(w, 2, absolute=True, out=torch.empty_like(w)),
        )
        out["greedy24-triton"] = ("2:4-T", lambda w: tk.greedy_t_triton(w, 2, 4, absolute=True))
        out["greedy48-triton"] = ("4:8-T", lambda w: tk.greedy_t_triton(w, 4, 8, absolute=True))
        out["greedy816-triton"] = ("8:16-T", lambda w: tk.greedy_t_triton(w, 8, 16, absolute=True))
        out["exact48-triton"] = ("4:8-T", lambda w: tk.flow_t_triton(w, 4, 8, absolute=True))
        out["exact816-triton"] = ("8:16-T", lambda w: tk.flow_t_triton(w, 8, 16, absolute=True))
        out["topn24-triton"] = ("2:4", lambda w: tk.topn_triton(w, 2, 4, absolute=True))
    out["exact24-torch"] = ("2:4-T", lambda w: K.reference.exact_2_4_t_reference(w.abs()))
    out["greedy48-torch"] = ("4:8-T", solver("greedy", "4:8-T", "torch"))
    out["exact48-torchflow"] = ("4:8-T", lambda w: K.flow_matrix_torch(w.abs(), NMPattern(4, 8, True)))
    out["exact816-torchflow"] = ("8:16-T", lambda w: K.flow_matrix_torch(w.abs(), NMPattern(8, 16, True)))
    out["exact48-numba"] = ("4:8-T", numba_exact("4:8-T"))
    out["topn24-torch"] = ("2:4", solver("topn", "2:4", "torch"))
    table: dict[str, tuple[str, TimedFn, MaskFn]] = {name: (pat, fn, fn) for name, (pat, fn) in out.items()}
    if device == "cuda" and hasattr(torch, "_sparse_semi_structured_tile"):
        table["tile24-torch"] = ("2:4-T", tile24, tile24_mask)
    return table


def rotating(fn: TimedFn, copies: list[list[torch.Tensor]]) -> Callable[[], list[object]]:
    """A call that runs ``fn`` over the next copy of the weight set each time."""
    turn = [0]

    def run() -> list[object]:
        batch = copies[turn[0] % len(copies)]
        turn[0] += 1
        return [fn(w) for w in batch]

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat (runs on a CPU in seconds)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "float16", "bfloat16"],
        help="weight dtype (default: bfloat16 on CUDA, float32 on CPU)",
    )
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=None,
        help="RxC, resnet50 or gpt2-medium (default: 4096x4096 8192x8192 resnet50 gpt2-medium)",
    )
    parser.add_argument("--methods", nargs="+", default=None, help="subset of method names (default: all)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--budget", type=float, default=10.0, help="seconds of timed repeats per row at most")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for bench_kernels.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--gpu-only",
        action="store_true",
        help="only the methods that run on the device without host synchronisation (Triton kernels, "
        "torch twins of the one-pass kernels, torch's tile kernel): no numba, no torch flow",
    )
    parser.add_argument("--dry-run", action="store_true", help="parse the arguments, print the plan, exit 0")
    args = parser.parse_args(argv)

    device = args.device
    dtype = getattr(torch, args.dtype or ("bfloat16" if device == "cuda" else "float32"))
    sizes = args.sizes or (
        ["64x64", "resnet50", "gpt2-medium"] if args.smoke else ["4096x4096", "8192x8192", "resnet50", "gpt2-medium"]
    )
    repeats = 1 if args.smoke else args.repeats
    table = methods(device)
    if args.methods:
        unknown = sorted(set(args.methods) - set(table))
        if unknown:
            parser.error(f"unknown or unavailable methods {unknown}; here: {sorted(table)}")
        table = {name: table[name] for name in args.methods}
    if args.gpu_only:
        table = {name: v for name, v in table.items() if not name.endswith(("-numba", "-torchflow"))}
    print(
        f"bench_kernels plan: sizes {sizes}, methods {sorted(table)}, {device}, {str(dtype).removeprefix('torch.')}, "
        f"{repeats} repeats or {args.budget:g} s per row",
        flush=True,
    )
    if args.dry_run:
        return 0

    env = environment(device)
    env["kernels"] = K.capabilities().summary()
    print_environment(env)
    bandwidth = copy_bandwidth(device, smoke=args.smoke)
    print(f"copy bandwidth (read + write): {bandwidth / 1e9:.1f} GB/s")

    gen = torch.Generator().manual_seed(args.seed)
    rows_out: list[dict[str, object]] = []
    print(
        f"{'size':>12} {'method':<22} {'pattern':<7} {'median ms':>10} {'floor ms':>9} {'GB/s':>8} "
        f"{'x floor':>8} {'kept |w|':>9}",
        flush=True,
    )

    def flush_rows() -> None:  # rewritten per row: a run cut short keeps what it measured
        write_result(
            "bench_kernels", {"environment": env, "copy_bandwidth_bytes_per_s": bandwidth, "rows": rows_out}, args.out
        )

    for size in sizes:
        shapes = weight_set(size, smoke=args.smoke)
        weights = [torch.randn(shape, generator=gen).to(device=device, dtype=dtype) for shape in shapes]
        nbytes = sum(w.numel() * w.element_size() for w in weights)
        # Several copies when W fits in cache, so repeated runs read memory rather than L2 (~60 MB on H200).
        copies = [weights] + [[w.clone() for w in weights] for _ in range(min(7, (256 << 20) // max(nbytes, 1)))]
        floor_s = nbytes / (bandwidth / 2)
        for name, (pattern, timed, mask_fn) in table.items():
            try:
                seconds = time_median(rotating(timed, copies), device=device, repeats=repeats, budget_s=args.budget)
                masks = [mask_fn(w) for w in weights]
            except Exception as exc:  # one method failing (e.g. a torch build without the tile kernel) is a row
                print(f"{size:>12} {name:<22} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}")
                rows_out.append({"size": size, "method": name, "pattern": pattern, "error": repr(exc)})
                flush_rows()
                continue
            kept = sum(float((w.abs().float() * mk).sum()) for w, mk in zip(weights, masks))
            total = sum(float(w.abs().float().sum()) for w in weights)
            rows_out.append(
                {
                    "size": size,
                    "method": name,
                    "pattern": pattern,
                    "matrices": len(weights),
                    "bytes": nbytes,
                    "median_ms": seconds * 1e3,
                    "floor_ms": floor_s * 1e3,
                    "gb_per_s": nbytes / seconds / 1e9,
                    "x_floor": seconds / floor_s,
                    "kept_fraction": kept / total,
                    "dtype": str(dtype).removeprefix("torch."),
                }
            )
            print(
                f"{size:>12} {name:<22} {pattern:<7} {seconds * 1e3:>10.3f} {floor_s * 1e3:>9.3f} "
                f"{nbytes / seconds / 1e9:>8.1f} {seconds / floor_s:>8.1f} {kept / total:>9.4f}",
                flush=True,
            )
            flush_rows()
        del copies, weights

    flush_rows()
    print(f"results: {args.out / 'bench_kernels.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
