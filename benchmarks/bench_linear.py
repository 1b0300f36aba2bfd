"""One linear layer, dense vs 2:4-T sparse (cuSPARSELt), per product: forward, dX, dW, re-pack and the total.

Shapes are transformer MLP and attention products (tokens x in x out). For each shape the same run times
the dense products on a random weight and the sparse ones on its 2:4-T masked twin (``SparseLinear``'s packed
``W``/``W^T``), each the median pipelined time per call (5 consecutive calls between two CUDA events,
``--repeats`` calls in all) after ``--warmup``; the sparse products go through the route SparseLinear uses (the
direct ``torch._cslt_sparse_mm`` call where its self-test passes, else the tensor subclass). Two totals are given:
``sum`` (forward + dX + dW + one re-pack, from the per-product medians) and ``step`` (one measured forward +
backward through ``nn.Linear`` vs ``SparseLinear`` with re-packing forced every step, as after an optimizer step).
Where the sparse path cannot run (CPU, ``--smoke``) the "sparse" side is the masked-dense fallback, and the
table says so.

    python benchmarks/bench_linear.py                     # GPU, bf16, all shapes
    python benchmarks/bench_linear.py --dtype fp16 --out /tmp/results
    python benchmarks/bench_linear.py --smoke             # CPU, tiny shapes, seconds

Target (issue 8, H100/H200 bf16): the 8192-token x 4096 x 16384 ``step`` >= 1.2x dense with re-packing.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))
sys.path.insert(0, str(ROOT))

from common import write_result  # noqa: E402

from nmsparse.accelerate import _Clock, _periodic_2_4_t_mask, measure_linear  # noqa: E402
from nmsparse.nn import SparseLinear  # noqa: E402
from nmsparse.nn.linear import _cslt_mm, direct_cslt_reason, sparse_unavailable_reason  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

#: (label, tokens, in, out): GPT-style d=4096 and d=2048 blocks, plus DESIGN §6's reference shapes.
SHAPES = [
    ("mlp.fc1 d4096", 8192, 4096, 16384),
    ("mlp.fc2 d4096", 8192, 16384, 4096),
    ("attn.qkv d4096", 8192, 4096, 12288),
    ("attn.proj d4096", 8192, 4096, 4096),
    ("mlp.fc1 d2048", 8192, 2048, 8192),
    ("mlp.fc2 d2048", 8192, 8192, 2048),
    ("attn.qkv d2048", 8192, 2048, 6144),
    ("attn.proj d2048", 8192, 2048, 2048),
    ("square 8192", 16384, 8192, 8192),
    ("small 1024", 2048, 1024, 1024),
]
SMOKE_SHAPES = [("smoke mlp", 64, 64, 256), ("smoke proj", 64, 64, 64)]
TARGET = ("mlp.fc1 d4096", 1.2)


def environment(device: torch.device) -> dict[str, object]:
    """Machine and library versions printed beside the table."""
    env: dict[str, object] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "device": str(device),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        sm = torch.cuda.get_device_capability(device)
        env["sm"] = f"{sm[0]}{sm[1]}"
    cusparselt = getattr(torch.backends, "cusparselt", None)
    env["cusparselt"] = cusparselt.version() if cusparselt is not None and cusparselt.is_available() else None
    try:
        import subprocess

        env["commit"] = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                cwd=ROOT,
                check=False,
                timeout=10,
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        env["commit"] = "unknown"
    return env


def _time_ms(fn: Callable[[], object], *, device: torch.device, warmup: int, repeats: int, calls: int = 5) -> float:
    """Median over ``repeats`` of the pipelined time per call of ``calls`` consecutive calls (host time overlapped
    with device time, as in a training step; the anatomy probe reports the synchronised times)."""
    for _ in range(warmup):
        fn()
    clock = _Clock(device)
    return statistics.median(clock.pipelined_ms(fn, calls) for _ in range(max(1, repeats // calls)))


def bench_shape(
    label: str,
    tokens: int,
    d_in: int,
    d_out: int,
    dtype: torch.dtype,
    device: torch.device,
    *,
    warmup: int,
    repeats: int,
) -> dict[str, object]:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(d_out, d_in, generator=gen).to(device=device, dtype=dtype)
    x = torch.randn(tokens, d_in, generator=gen).to(device=device, dtype=dtype)
    dy = torch.randn(tokens, d_out, generator=gen).to(device=device, dtype=dtype)
    mask = _periodic_2_4_t_mask(d_out, d_in, device)
    layer = SparseLinear(d_in, d_out, bias=False, device=device, dtype=dtype, mask=mask.cpu())
    with torch.no_grad():
        layer.weight.copy_(w)
    reason = sparse_unavailable_reason(device, dtype, in_features=d_in, out_features=d_out)
    kw = {"warmup": warmup, "repeats": repeats}
    row: dict[str, object] = {
        "label": label,
        "tokens": tokens,
        "in": d_in,
        "out": d_out,
        "dtype": str(dtype).replace("torch.", ""),
        "path": "sparse" if reason is None else f"masked-dense ({reason})",
    }
    dense = {
        "forward": _time_ms(lambda: F.linear(x, w), device=device, **kw),
        "dX": _time_ms(lambda: torch.mm(dy, w), device=device, **kw),
        "dW": _time_ms(lambda: torch.mm(dy.t(), x), device=device, **kw),
    }
    if reason is None:
        packed: Any = layer.packed_weight(dtype)
        direct = direct_cslt_reason(device, dtype) is None
        row["route"] = "direct torch._cslt_sparse_mm" if direct else "tensor subclass"

        def fwd() -> torch.Tensor:
            return _cslt_mm(packed.packed, x, None) if direct else F.linear(x, packed)

        def dgrad() -> torch.Tensor:
            return _cslt_mm(packed.packed_t, dy, None) if direct else torch.mm(dy, packed)

        def repack() -> object:
            layer.invalidate_()
            return layer.packed_weight(dtype)

        sparse = {
            "forward": _time_ms(fwd, device=device, **kw),
            "dX": _time_ms(dgrad, device=device, **kw),
            "repack": _time_ms(repack, device=device, **kw),
        }
        # correctness of the timed operands, against the masked dense product (bf16 tolerance)
        masked = torch.where(mask, w, 0)
        for name, got, ref in (("forward", fwd(), F.linear(x, masked)), ("dX", dgrad(), torch.mm(dy, masked))):
            err = float((got.float() - ref.float()).norm() / ref.float().norm())
            row[f"rel_err_{name}"] = err
    else:
        masked = w * mask
        sparse = {
            "forward": _time_ms(lambda: F.linear(x, w * mask), device=device, **kw),
            "dX": _time_ms(lambda: torch.mm(dy, w * mask), device=device, **kw),
            "repack": 0.0,
        }
    sparse["dW"] = _time_ms(lambda: torch.mm(dy.t(), x) * mask, device=device, **kw)
    dense["sum"] = dense["forward"] + dense["dX"] + dense["dW"]
    sparse["sum"] = sparse["forward"] + sparse["dX"] + sparse["dW"] + sparse["repack"]
    dense["step"], sparse["step"] = measure_linear(tokens, d_in, d_out, dtype, device, training=True, **kw)
    row["dense_ms"], row["sparse_ms"] = dense, sparse
    row["speedup"] = {k: dense[k] / sparse[k] for k in ("forward", "dX", "dW", "sum", "step")}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (masked-dense), seconds")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 10, smoke 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls (default 50, smoke 3)")
    parser.add_argument("--shapes", nargs="+", default=None, help="labels to run (default: all)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for bench_linear.json (default: benchmarks/results; with --smoke: none); "
        "rewritten after every shape",
    )
    parser.add_argument("--dry-run", action="store_true", help="parse the arguments, print the plan, exit 0")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.smoke else "cpu"))
    dtype = DTYPES[args.dtype]
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    if args.smoke and device.type == "cpu":
        dtype = torch.float32  # CPU half-precision products are emulated and slow; the smoke checks the plumbing
    if args.shapes:
        shapes = [s for s in shapes if s[0] in args.shapes]
    warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 10)
    repeats = args.repeats if args.repeats is not None else (3 if args.smoke else 50)
    print(
        f"bench_linear plan: {len(shapes)} shape(s) {[s[0] for s in shapes]}, {device}, "
        f"{str(dtype).replace('torch.', '')}, {warmup} warm-up + {repeats} timed calls per product",
        flush=True,
    )
    if args.dry_run:
        return 0
    env = environment(device)
    print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()), flush=True)
    out = args.out if args.out is not None else (None if args.smoke else ROOT / "results")
    rows = []
    for label, tokens, d_in, d_out in shapes:
        rows.append(bench_shape(label, tokens, d_in, d_out, dtype, device, warmup=warmup, repeats=repeats))
        if device.type == "cuda":
            torch.cuda.empty_cache()
        r = rows[-1]
        x = r["speedup"]
        print(
            f"  done {label}: forward {x['forward']:.2f}x, dX {x['dX']:.2f}x, dW {x['dW']:.2f}x, "  # type: ignore[index]
            f"re-pack {r['sparse_ms']['repack']:.3f} ms, step {x['step']:.2f}x ({r['path']})",  # type: ignore[index]
            flush=True,
        )
        if out is not None:  # rewritten per row: a run cut short keeps what it measured
            write_result(
                "bench_linear",
                {
                    "environment": env,
                    "warmup": warmup,
                    "repeats": repeats,
                    "rows": rows,
                    "complete": len(rows) == len(shapes),
                },
                out,
            )

    print(
        f"\nbench_linear ({env.get('gpu', device.type)}, {str(dtype).replace('torch.', '')}, pipelined ms per call, "
        f"{repeats} calls after {warmup} warm-up; ms dense / sparse, speed-up = dense / sparse)"
    )
    header = (
        f"{'shape':<16} {'tokens x in x out':>20} {'forward':>17} {'dX':>17} {'dW':>17} {'repack':>7} "
        f"{'sum':>17} {'step':>17}"
    )
    print(header)
    for r in rows:
        d, s, x = r["dense_ms"], r["sparse_ms"], r["speedup"]  # type: ignore[assignment]
        cells = [f"{d[k]:6.3f}/{s[k]:6.3f} {x[k]:4.2f}x" for k in ("forward", "dX", "dW")]  # type: ignore[index]
        print(
            f"{r['label']:<16} {r['tokens']:>6}x{r['in']:>6}x{r['out']:>6} {cells[0]:>17} {cells[1]:>17} "
            f"{cells[2]:>17} {s['repack']:7.3f} {d['sum']:6.2f}/{s['sum']:6.2f} {x['sum']:4.2f}x "  # type: ignore[index]
            f"{d['step']:6.2f}/{s['step']:6.2f} {x['step']:4.2f}x"
        )  # type: ignore[index]
    paths = {str(r["path"]) for r in rows}
    print("path: " + "; ".join(sorted(paths)))
    target = next((r for r in rows if r["label"] == TARGET[0]), None)
    if target is not None:
        got = target["speedup"]["step"]  # type: ignore[index]
        verdict = "met" if got >= TARGET[1] and target["path"] == "sparse" else "NOT met"
        print(f"target {TARGET[0]} step (fwd + dX + dW + re-pack) >= {TARGET[1]}x dense: {got:.2f}x -> {verdict}")
    if out is not None:
        print(f"wrote {out / 'bench_linear.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
