"""Anatomy of one 2:4-T sparse call on a GPU (issue 18): the probe that decides what the speed benchmarks mean.

Five sections, each printed and written to ``<out>/bench_anatomy.json`` as soon as it is done (the file is
rewritten after every row, so a run cut short keeps what it measured):

1. **layout**: bit-compare the fused packer's ``packed`` / ``packed_t`` (``prune_dense_static_sort``, i.e.
   ``torch._sparse_semi_structured_tile(..., use_cutlass=False)``, SparseLinear's packer) with
   ``torch._cslt_compress`` of the masked ``W`` and ``W^T``, plus one product check of each route (the tensor
   subclass, and ``torch._cslt_sparse_mm(packed, x.t(), transpose_result=True)``) against the dense product;
2. **contiguity**: is each route's output row-major (a transposed view would push SDPA onto its math path and add
   a copy before the next sparse layer);
3. **host vs device** time per call, dense and both sparse routes: synchronised per call (what ``accelerate_``
   and ``bench_linear`` used to charge), pipelined (N calls between two events) and replayed in a CUDA graph,
   plus the host's enqueue time per call;
4. **re-pack**: two passes (``where`` + the fused packer, SparseLinear's re-pack) against
   ``torch._sparse_semi_structured_apply(W, bitmask)`` with the bitmask taken once, and whether both pack the same;
5. **algorithm search**: ``torch._cslt_sparse_mm_search`` per timed shape (forward and dX), alg 0 against the best.

The exit status is 0 when the layout is right (products within bf16 tolerance), 3 when it is wrong: then
``device_check.sh`` skips the speed steps and says why. Without CUDA it prints its plan and exits 0.

    python benchmarks/bench_anatomy.py --out DIR          # GPU, about 30 s
    python benchmarks/bench_anatomy.py --smoke            # no CUDA: prints the plan, exits 0
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))
sys.path.insert(0, str(ROOT))

from bench_linear import SHAPES, environment  # noqa: E402
from common import write_result  # noqa: E402

#: (label, tokens, in, out) timed here: the issue's reference linear and the bench_linear shapes of device_check.
ANATOMY_SHAPES = [s for s in SHAPES if s[0] in ("mlp.fc1 d4096", "attn.proj d4096", "mlp.fc1 d2048", "attn.proj d2048")]
SECTIONS = ("layout", "contiguity", "host_vs_device", "repack", "algorithm_search")
#: Relative error above which a sparse product counts as wrong (bf16 products of 4096-long dot products).
PRODUCT_TOLERANCE = 2e-2


class Results:
    """Rows per section, printed and written to JSON after every row."""

    def __init__(self, out: Path | None, env: dict[str, object]) -> None:
        self.out, self.payload = out, {"environment": env, "sections": {s: [] for s in SECTIONS}, "verdict": None}

    def add(self, section: str, row: dict[str, Any]) -> None:
        self.payload["sections"][section].append(row)  # type: ignore[index]
        print(f"[{section}] " + ", ".join(f"{k}={_fmt(v)}" for k, v in row.items()), flush=True)
        self.flush()

    def verdict(self, text: str, layout_ok: bool | None) -> None:
        self.payload["verdict"] = text
        self.payload["layout_ok"] = layout_ok
        print(f"verdict: {text}", flush=True)
        self.flush()

    def flush(self) -> None:
        if self.out is not None:
            write_result("bench_anatomy", self.payload, self.out)


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12))


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw 16-bit words of a packed half-precision tensor (NaN-safe comparison)."""
    return t.contiguous().view(-1).view(torch.int16)


def transposable_mask(rows: int, cols: int, device: torch.device, gen: torch.Generator) -> torch.Tensor:
    """A random valid 2:4-T mask: torch's greedy 4x4 tile rule on random scores (varied per tile)."""
    from nmsparse.nn.linear import greedy_tile_keep

    return greedy_tile_keep(torch.rand(rows, cols, generator=gen).to(device))


def pipelined_ms(fn: Callable[[], object], calls: int) -> float:
    """Device milliseconds per call of ``calls`` back-to-back calls between two events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / calls


def host_enqueue_ms(fn: Callable[[], object], calls: int) -> float:
    """Host milliseconds per call to enqueue ``calls`` calls (no sync inside; the queue is drained first)."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - t0) * 1e3 / calls
    torch.cuda.synchronize()
    return host


def synchronised_ms(fn: Callable[[], object], calls: int) -> float:
    """Median wall milliseconds of one call with a sync before and after (host + device, not overlapped)."""
    times = []
    for _ in range(calls):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def graph_ms(fn: Callable[[], object], calls: int) -> float | str:
    """Device milliseconds per call replaying ``calls`` calls captured in one CUDA graph (or why it failed)."""
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
        graph.replay()
        torch.cuda.synchronize()
        return pipelined_ms(graph.replay, 3) / calls
    except Exception as exc:  # noqa: BLE001 - a route that cannot be captured is a result
        return f"capture failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''}"


def _cslt_call(packed: torch.Tensor, dense: torch.Tensor, alg_id: int) -> Callable[[], object]:
    """``packed @ dense^T`` returned row-major, with a given cuSPARSELt algorithm id."""
    return lambda: torch._cslt_sparse_mm(packed, dense.t(), None, transpose_result=True, alg_id=alg_id)


def plan(args: argparse.Namespace) -> list[str]:
    shapes = ", ".join(f"{label} ({t}x{i}x{o})" for label, t, i, o in ANATOMY_SHAPES)
    return [
        f"layout: fused packer vs torch._cslt_compress of masked W and W^T at {args.rows}x{args.cols}, "
        f"bit-compared; products of both routes vs dense (tolerance {PRODUCT_TOLERANCE:g})",
        "contiguity: output strides of F.linear(x, Ws), torch.mm(dy, Ws), _cslt_sparse_mm(transpose_result=True)",
        f"host_vs_device: dense / class route / direct route, synchronised ({args.calls} calls), pipelined "
        f"({args.calls} calls between two events), CUDA graph ({args.calls} calls), host enqueue per call",
        "repack: where + prune_dense_static_sort (two passes) vs _sparse_semi_structured_apply(W, bitmask)",
        f"algorithm_search: _cslt_sparse_mm_search per shape, forward and dX: {shapes}",
    ]


def run(args: argparse.Namespace, res: Results) -> int:
    from nmsparse.nn.linear import _masked_for_packing, _pack

    device = torch.device("cuda")
    dtype = torch.bfloat16
    gen = torch.Generator().manual_seed(0)
    rows, cols, tokens = args.rows, args.cols, args.tokens
    w = torch.randn(rows, cols, generator=gen).to(device=device, dtype=dtype)
    mask = transposable_mask(rows, cols, device, gen)
    masked = _masked_for_packing(w, mask, dtype)
    x = torch.randn(tokens, cols, generator=gen).to(device=device, dtype=dtype)
    dy = torch.randn(tokens, rows, generator=gen).to(device=device, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ws: Any = _pack(masked)

    # ------------------------------------------------------------------ 1. layout
    ref_packed = torch._cslt_compress(masked)
    ref_packed_t = torch._cslt_compress(masked.t().contiguous())
    values = rows * cols // 2  # the first half-size block holds the kept values, the rest the metadata
    layout_equal = True
    for name, got, ref in (("packed", ws.packed, ref_packed), ("packed_t", ws.packed_t, ref_packed_t)):
        a, b = _bits(got), _bits(ref)
        row: dict[str, Any] = {"tensor": name, "fused_numel": a.numel(), "cslt_compress_numel": b.numel()}
        if a.numel() == b.numel():
            diff = a != b
            row["bit_equal"] = not bool(diff.any())
            row["values_mismatch"] = int(diff[:values].sum())
            row["metadata_mismatch"] = int(diff[values:].sum())
        else:
            row["bit_equal"] = False
        layout_equal &= bool(row["bit_equal"])
        res.add("layout", row)
    ref_y, ref_dx = x @ masked.t(), dy @ masked
    errors: dict[str, float] = {}
    routes: dict[str, Callable[[], torch.Tensor]] = {
        "class forward F.linear(x, Ws)": lambda: torch.nn.functional.linear(x, ws),
        "class dX torch.mm(dy, Ws)": lambda: torch.mm(dy, ws),
        "direct forward _cslt_sparse_mm(packed, x.t())": lambda: torch._cslt_sparse_mm(
            ws.packed, x.t(), None, transpose_result=True
        ),
        "direct dX _cslt_sparse_mm(packed_t, dy.t())": lambda: torch._cslt_sparse_mm(
            ws.packed_t, dy.t(), None, transpose_result=True
        ),
        "cslt_compress forward (reference packing)": lambda: torch._cslt_sparse_mm(
            ref_packed, x.t(), None, transpose_result=True
        ),
    }
    outputs: dict[str, torch.Tensor] = {}
    for name, fn in routes.items():
        try:
            out = fn()
            outputs[name] = out
            ref = ref_dx if "dX" in name else ref_y
            errors[name] = _rel_err(out, ref)
            res.add("layout", {"product": name, "rel_err": errors[name], "ok": errors[name] < PRODUCT_TOLERANCE})
        except Exception as exc:  # noqa: BLE001 - a failing route is a result
            errors[name] = float("inf")
            res.add("layout", {"product": name, "error": f"{type(exc).__name__}: {str(exc)[:120]}"})
    class_ok = all(errors[k] < PRODUCT_TOLERANCE for k in routes if k.startswith("class"))
    direct_ok = all(errors[k] < PRODUCT_TOLERANCE for k in routes if k.startswith("direct"))
    layout_ok = class_ok or direct_ok

    # ------------------------------------------------------------------ 2. contiguity
    for name, out in outputs.items():
        res.add(
            "contiguity",
            {
                "route": name,
                "shape": tuple(out.shape),
                "stride": tuple(out.stride()),
                "contiguous": out.is_contiguous(),
            },
        )

    # ------------------------------------------------------------------ 3. host vs device
    calls = args.calls
    timed: dict[str, tuple[Callable[[], object], str | None]] = {
        "dense forward": (lambda: torch.nn.functional.linear(x, masked), None),
        "class forward": (routes["class forward F.linear(x, Ws)"], "class forward F.linear(x, Ws)"),
        "direct forward": (
            routes["direct forward _cslt_sparse_mm(packed, x.t())"],
            "direct forward _cslt_sparse_mm(packed, x.t())",
        ),
        "dense dX": (lambda: torch.mm(dy, masked), None),
        "class dX": (routes["class dX torch.mm(dy, Ws)"], "class dX torch.mm(dy, Ws)"),
        "direct dX": (
            routes["direct dX _cslt_sparse_mm(packed_t, dy.t())"],
            "direct dX _cslt_sparse_mm(packed_t, dy.t())",
        ),
    }
    host_us: dict[str, float] = {}
    for name, (timed_fn, route) in timed.items():
        if route is not None and errors[route] == float("inf"):
            res.add("host_vs_device", {"call": name, "skipped": "the route raised in the layout check"})
            continue
        for _ in range(5):
            timed_fn()
        row = {
            "call": name,
            "shape": f"{tokens}x{cols}x{rows}",
            "synchronised_ms": synchronised_ms(timed_fn, calls),
            "pipelined_ms": pipelined_ms(timed_fn, calls),
            "host_enqueue_ms": host_enqueue_ms(timed_fn, calls),
            "graph_ms": graph_ms(timed_fn, calls),
        }
        host_us[name] = row["host_enqueue_ms"] * 1e3
        res.add("host_vs_device", row)

    # ------------------------------------------------------------------ 4. re-pack
    def two_pass() -> object:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _pack(_masked_for_packing(w, mask, dtype))

    row = {
        "method": "two-pass: where + prune_dense_static_sort",
        "pipelined_ms": pipelined_ms(two_pass, 10),
        "synchronised_ms": synchronised_ms(two_pass, 10),
    }
    res.add("repack", row)
    bitmask = ws.compressed_swizzled_bitmask
    apply = getattr(torch, "_sparse_semi_structured_apply", None)
    if apply is None or bitmask is None:
        res.add(
            "repack",
            {
                "method": "bitmask apply",
                "skipped": "torch._sparse_semi_structured_apply or the packer's bitmask is missing",
            },
        )
    else:
        try:
            packed_a, packed_t_a = apply(w, bitmask)
            same = (torch.equal(_bits(packed_a), _bits(ws.packed)), torch.equal(_bits(packed_t_a), _bits(ws.packed_t)))
            row = {
                "method": "bitmask apply: _sparse_semi_structured_apply(W, bitmask)",
                "pipelined_ms": pipelined_ms(lambda: apply(w, bitmask), 10),
                "synchronised_ms": synchronised_ms(lambda: apply(w, bitmask), 10),
                "packed_bit_equal": same[0],
                "packed_t_bit_equal": same[1],
                "note": "compared with the fused cuSPARSELt packing; apply has no use_cutlass flag and may "
                "write CUTLASS's layout, in which case it cannot replace the re-pack as is",
            }
        except Exception as exc:  # noqa: BLE001
            row = {"method": "bitmask apply", "error": f"{type(exc).__name__}: {str(exc)[:120]}"}
        res.add("repack", row)

    # ------------------------------------------------------------------ 5. algorithm search
    search = getattr(torch, "_cslt_sparse_mm_search", None)
    for label, t, d_in, d_out in ANATOMY_SHAPES if layout_ok else []:
        if search is None:
            res.add("algorithm_search", {"shape": label, "skipped": "torch._cslt_sparse_mm_search is missing"})
            break
        sw: Any = _pack(
            _masked_for_packing(
                torch.randn(d_out, d_in, generator=gen).to(device, dtype),
                transposable_mask(d_out, d_in, device, gen),
                dtype,
            )
        )
        xs = torch.randn(t, d_in, generator=gen).to(device, dtype)
        dys = torch.randn(t, d_out, generator=gen).to(device, dtype)
        for product, packed, dense in (("forward", sw.packed, xs), ("dX", sw.packed_t, dys)):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    best = search(packed, dense.t(), None, transpose_result=True)
                best_id = int(best[0] if isinstance(best, (tuple, list)) else best)
                ms0 = pipelined_ms(_cslt_call(packed, dense, 0), 20)
                msb = pipelined_ms(_cslt_call(packed, dense, best_id), 20)
                res.add(
                    "algorithm_search",
                    {
                        "shape": label,
                        "product": product,
                        "best_alg_id": best_id,
                        "alg0_ms": ms0,
                        "best_ms": msb,
                        "gain": ms0 / msb,
                    },
                )
            except Exception as exc:  # noqa: BLE001
                res.add(
                    "algorithm_search",
                    {"shape": label, "product": product, "error": f"{type(exc).__name__}: {str(exc)[:120]}"},
                )
        del sw, xs, dys

    if layout_ok:
        text = (
            f"layout OK: products right (class route {'ok' if class_ok else 'WRONG'}, direct route "
            f"{'ok' if direct_ok else 'WRONG'}); fused packer bit-equal to _cslt_compress: {layout_equal}"
        )
    else:
        text = (
            "layout WRONG: sparse products of the fused packer's output disagree with the dense product; the "
            "speed steps would time wrong results"
        )
    if host_us:
        text += "; host enqueue per call (us, target <= 50): " + ", ".join(f"{k} {v:.0f}" for k, v in host_us.items())
    res.verdict(text, layout_ok)
    return 0 if layout_ok else 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="no GPU work: print the plan (CPU rehearsal)")
    parser.add_argument("--dry-run", action="store_true", help="parse the arguments, print the plan, exit 0")
    parser.add_argument("--rows", type=int, default=16384, help="weight rows (out features) of the layout check")
    parser.add_argument("--cols", type=int, default=4096, help="weight columns (in features)")
    parser.add_argument("--tokens", type=int, default=8192, help="input rows of the product checks and timings")
    parser.add_argument("--calls", type=int, default=20, help="calls per timing (synchronised, pipelined, graph)")
    parser.add_argument("--out", type=Path, default=None, help="folder for bench_anatomy.json (default: none)")
    args = parser.parse_args(argv)
    print("bench_anatomy plan:", flush=True)
    for i, line in enumerate(plan(args), 1):
        print(f"  {i}. {line}", flush=True)
    if args.dry_run:
        return 0
    cuda = torch.cuda.is_available() and not args.smoke
    env = environment(torch.device("cuda" if cuda else "cpu"))
    print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()), flush=True)
    res = Results(args.out, env)
    if not cuda:
        res.verdict("no CUDA: nothing measured (plan above)", None)
        return 0
    return run(args, res)


if __name__ == "__main__":
    sys.exit(main())
