"""SparseGPT speed: the whole ``prune_oneshot_`` call against a straightforward reference, on one linear layer.

The model is one bias-free ``nn.Linear`` (LLaMA-7B-like MLP shapes by default: 5632 x 2048 and 2048 x 5632,
``[out, in]``), calibrated on random tokens (default 4 sequences of 128 = 512 tokens), one torch thread.

The reference is written here, after the public IST-DASLab/sparsegpt code (``SparseGPT.add_batch`` from a
forward hook, then ``fasterprune``: damping 1% of the mean Hessian diagonal, lazy blocks of 128 columns, n:m
masks chosen per group of m columns as the sweep reaches it, its loss estimate included). nmsparse's time is the
whole ``prune_oneshot_(model, calibration, pattern, algorithm="sparsegpt")`` call: forward passes, statistics,
the solve, the relative error it reports and the attached mask. Variants run interleaved (round-robin over
``--repeats`` rounds, after one untimed warm-up round), each on a fresh copy of the model; the medians are
compared within the run only.

Checks (exit status 1 when one fails): nmsparse's 2:4 result equals the reference's up to float rounding (masks
agree on >= 99.5% of the weights, the rest being near-ties; on the rows whose masks agree, the weights agree to
1e-3 of the largest weight; relative output errors within 1%), and every nmsparse mask obeys its pattern.
Targets (printed, not checked: timings depend on the machine's load): nmsparse / reference <= 1.0 at 2:4, and
n:m-T / n:m <= 1.2 within nmsparse. CPU seconds (``time.process_time``) are printed beside wall seconds: on a
shared machine their ratios are the steadier ones.

    python benchmarks/bench_sparsegpt.py --smoke --out DIR      # seconds: small shapes
    python benchmarks/bench_sparsegpt.py                         # both LLaMA shapes, median of 3
    python benchmarks/bench_sparsegpt.py --shapes 5632x2048 --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import functools
import inspect
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_out_argument, environment, print_environment, write_result  # noqa: E402

import nmsparse  # noqa: E402
from nmsparse.oneshot import OneShotConfig, prune_oneshot_  # noqa: E402

PATTERNS = ("2:4", "2:4-T", "4:8", "4:8-T")
#: Near-tie flips: two float32 runs of the same SparseGPT (or float32 against float64) agree on 99.8-99.95% of the
#: mask at 2048-5632 inputs and 512 tokens.
MIN_MASK_AGREEMENT = 0.995


# ------------------------------------------------------------------------------------------ the reference


class ReferenceSparseGPT:
    """SparseGPT as the public reference code computes it, for one ``nn.Linear``.

    ``add_batch`` keeps ``H`` as a running mean of ``2 x x^T`` over samples (the reference's scaling); ``prune``
    zeroes dead inputs, damps, takes the upper Cholesky factor of ``H^-1`` (Cholesky, inverse, Cholesky) and
    sweeps the columns in lazy blocks, choosing each group's pruned ``m - n`` by the smallest ``w^2 / U_jj^2``
    of the weights as updated so far.
    """

    def __init__(self, layer: nn.Linear) -> None:
        self.layer = layer
        columns = layer.weight.shape[1]
        self.hessian = torch.zeros(columns, columns, device=layer.weight.device)
        self.samples = 0

    def add_batch(self, inputs: torch.Tensor) -> None:
        if inputs.dim() == 2:
            inputs = inputs.unsqueeze(0)
        count = inputs.shape[0]
        inputs = inputs.reshape(-1, inputs.shape[-1]).t()
        self.hessian *= self.samples / (self.samples + count)
        self.samples += count
        inputs = math.sqrt(2 / self.samples) * inputs.float()
        self.hessian += inputs.matmul(inputs.t())

    def prune(self, n: int, m: int, *, block_size: int = 128, damping: float = 0.01) -> tuple[torch.Tensor, float]:
        """Prune the layer in place; returns the kept mask and the reference's loss estimate."""
        weight = self.layer.weight.data.clone().float()
        rows, columns = weight.shape
        hessian = self.hessian
        dead = torch.diag(hessian) == 0
        hessian[dead, dead] = 1
        weight[:, dead] = 0
        losses = torch.zeros(rows, device=weight.device)
        diagonal = torch.arange(columns, device=weight.device)
        hessian[diagonal, diagonal] += damping * torch.mean(torch.diag(hessian))
        hessian = torch.linalg.cholesky(hessian)
        hessian = torch.cholesky_inverse(hessian)
        inverse = torch.linalg.cholesky(hessian, upper=True)
        pruned = torch.zeros(rows, columns, dtype=torch.bool, device=weight.device)
        for i1 in range(0, columns, block_size):
            i2 = min(i1 + block_size, columns)
            w1 = weight[:, i1:i2].clone()
            q1 = torch.zeros_like(w1)
            err1 = torch.zeros_like(w1)
            losses1 = torch.zeros_like(w1)
            inverse1 = inverse[i1:i2, i1:i2]
            mask1 = torch.zeros_like(w1) == 1
            for i in range(i2 - i1):
                w = w1[:, i]
                d = inverse1[i, i]
                if i % m == 0:
                    saliency = w1[:, i : i + m] ** 2 / (torch.diag(inverse1)[i : i + m].reshape((1, -1))) ** 2
                    mask1.scatter_(1, i + torch.topk(saliency, m - n, dim=1, largest=False)[1], True)
                q = w.clone()
                q[mask1[:, i]] = 0
                q1[:, i] = q
                losses1[:, i] = (w - q) ** 2 / d**2
                err = (w - q) / d
                w1[:, i:] -= err.unsqueeze(1).matmul(inverse1[i, i:].unsqueeze(0))
                err1[:, i] = err
            weight[:, i1:i2] = q1
            pruned[:, i1:i2] = mask1
            losses += torch.sum(losses1, 1) / 2
            weight[:, i2:] -= err1.matmul(inverse[i1:i2, i2:])
        self.layer.weight.data = weight.to(self.layer.weight.dtype)
        return ~pruned, float(losses.sum())


def reference_prune(model: nn.Sequential, calibration: list[torch.Tensor], n: int, m: int) -> torch.Tensor:
    """Calibrate the model's one linear through a forward hook, then prune it; returns the kept mask."""
    layer = _linear(model)
    sparsegpt = ReferenceSparseGPT(layer)
    handle = layer.register_forward_hook(lambda _module, inputs, _output: sparsegpt.add_batch(inputs[0].data))
    try:
        with torch.no_grad():
            for batch in calibration:
                model(batch)
    finally:
        handle.remove()
    keep, _loss = sparsegpt.prune(n, m)
    return keep


# ------------------------------------------------------------------------------------------ nmsparse


def nmsparse_prune(model: nn.Sequential, calibration: list[torch.Tensor], pattern: str, refit: int = 0) -> torch.Tensor:
    """``prune_oneshot_`` with SparseGPT (``refit`` > 0: its re-fit option); returns the attached mask of the model's
    one linear."""
    if refit:
        config = OneShotConfig(algorithm="sparsegpt", options={"refit": refit})
        prune_oneshot_(model, calibration, pattern, config=config)
    elif "algorithm" in inspect.signature(prune_oneshot_).parameters:
        prune_oneshot_(model, calibration, pattern, algorithm="sparsegpt")
    else:  # before the algorithm/method split
        prune_oneshot_(model, calibration, pattern, method="sparsegpt")
    (mask,) = nmsparse.get_masks(model).values()
    return mask


# ------------------------------------------------------------------------------------------ the run


def pin_threads(count: int) -> None:
    """``count`` threads for torch and for numba (the exact n:m-T solver's kernels).

    Starting numba's thread pool resets the OpenMP thread count that torch reads, so this runs before every
    timed call (outside the timing).
    """
    try:
        import numba
    except ImportError:
        pass
    else:
        numba.set_num_threads(max(1, min(count, int(getattr(numba.config, "NUMBA_NUM_THREADS", count)))))
    torch.set_num_threads(count)


def _relative_error(dense: torch.Tensor, pruned: torch.Tensor, calibration: list[torch.Tensor]) -> float:
    """``||X (W - W')^T|| / ||X W^T||`` over the calibration tokens, in float64."""
    x = torch.cat([b.reshape(-1, b.shape[-1]) for b in calibration]).double()
    return float((x @ (dense.double() - pruned.double()).T).norm() / (x @ dense.double().T).norm())


def _compare(
    dense: torch.Tensor,
    ours: tuple[torch.Tensor, torch.Tensor],
    theirs: tuple[torch.Tensor, torch.Tensor],
    calibration: list[torch.Tensor],
) -> tuple[dict[str, float], list[str]]:
    """How far nmsparse's result is from the reference's, and what breaks "equal up to float rounding".

    Float rounding flips the mask where two saliencies of a group nearly tie; a flipped row then follows its own
    OBS updates. So: masks agree almost everywhere, the rows whose masks agree carry the same weights, and the
    output errors are the same.
    """
    (w_ours, m_ours), (w_ref, m_ref) = ours, theirs
    agree = float((m_ours == m_ref).float().mean())
    rows = (m_ours == m_ref).all(dim=1)
    scale = float(dense.abs().max())
    deviation = float((w_ours - w_ref)[rows].abs().max()) / scale if bool(rows.any()) else 0.0
    e_ours, e_ref = _relative_error(dense, w_ours, calibration), _relative_error(dense, w_ref, calibration)
    measures = {
        "mask_agreement": agree,
        "rows_with_equal_masks": float(rows.float().mean()),
        "max_weight_deviation_equal_rows": deviation,
        "relative_error_nmsparse": e_ours,
        "relative_error_reference": e_ref,
    }
    failures = []
    if agree < MIN_MASK_AGREEMENT:
        failures.append(f"masks agree on only {agree:.5f} of the weights (< {MIN_MASK_AGREEMENT})")
    if deviation > 1e-3:
        failures.append(f"weights differ by {deviation:.2e} of the largest weight on equal-mask rows (> 1e-3)")
    if abs(e_ours / e_ref - 1) > 0.01:
        failures.append(f"relative output errors {e_ours:.6f} vs {e_ref:.6f} differ by more than 1%")
    return measures, failures


def _linear(model: nn.Sequential) -> nn.Linear:
    layer = model[0]
    assert isinstance(layer, nn.Linear)
    return layer


def _reference_variant(calibration: list[torch.Tensor], n: int, m: int, model: nn.Sequential) -> torch.Tensor:
    return reference_prune(model, calibration, n, m)


def _nmsparse_variant(
    calibration: list[torch.Tensor], pattern: str, model: nn.Sequential, refit: int = 0
) -> torch.Tensor:
    return nmsparse_prune(model, calibration, pattern, refit)


def _run_shape(out_features: int, in_features: int, args: argparse.Namespace) -> dict[str, Any]:
    shape = f"{out_features}x{in_features}"
    generator = torch.Generator().manual_seed(0)
    linear = nn.Linear(in_features, out_features, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(out_features, in_features, generator=generator) / math.sqrt(in_features))
    base = nn.Sequential(linear)
    calibration = [torch.randn(1, args.seq, in_features, generator=generator) for _ in range(args.samples)]
    dense = linear.weight.detach().clone()

    variants: list[tuple[str, Callable[[nn.Sequential], torch.Tensor]]] = []
    for pattern in args.reference_patterns:
        n, m = (int(v) for v in pattern.split(":"))
        variants.append((f"reference {pattern}", functools.partial(_reference_variant, calibration, n, m)))
    for pattern in args.patterns:
        variants.append((f"nmsparse {pattern}", functools.partial(_nmsparse_variant, calibration, pattern)))
    for pattern in args.refit_patterns:
        refit = functools.partial(_nmsparse_variant, calibration, pattern, refit=args.refit)
        variants.append((f"nmsparse {pattern} refit", refit))

    times: dict[str, list[float]] = {name: [] for name, _ in variants}
    cpu_times: dict[str, list[float]] = {name: [] for name, _ in variants}
    results: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for round_ in range(args.repeats + 1):  # round 0: warm-up (numba, MKL), not timed
        for name, fn in variants:
            model = copy.deepcopy(base)
            pin_threads(args.threads)
            began, cpu_began = time.perf_counter(), time.process_time()
            mask = fn(model)
            seconds, cpu_seconds = time.perf_counter() - began, time.process_time() - cpu_began
            if round_:
                times[name].append(seconds)
                cpu_times[name].append(cpu_seconds)
            else:
                results[name] = (_linear(model).weight.detach().clone(), mask.detach().clone())
    medians = {name: statistics.median(t) for name, t in times.items()}
    cpu_medians = {name: statistics.median(t) for name, t in cpu_times.items()}

    failures: list[str] = []
    for name, (_, mask) in results.items():
        variant_pattern = name.removeprefix("nmsparse ").removesuffix(" refit")
        if name.startswith("nmsparse ") and not nmsparse.is_nm_sparse(mask.float(), variant_pattern):
            failures.append(f"{shape}: the {name} mask breaks its pattern")
    checks: dict[str, Any] = {}
    for pattern in args.reference_patterns:
        if f"nmsparse {pattern}" in results:
            checks[pattern], failed = _compare(
                dense, results[f"nmsparse {pattern}"], results[f"reference {pattern}"], calibration
            )
            failures += [f"{shape} {pattern}: {f}" for f in failed]
    ratios: dict[str, dict[str, float]] = {}
    for kind, table in (("wall", medians), ("cpu", cpu_medians)):
        for pattern in args.reference_patterns:
            if f"nmsparse {pattern}" in table:
                label = f"nmsparse {pattern} / reference {pattern}"
                ratios.setdefault(label, {})[kind] = table[f"nmsparse {pattern}"] / table[f"reference {pattern}"]
        for pattern in args.patterns:
            plain = pattern.removesuffix("-T")
            if pattern != plain and f"nmsparse {plain}" in table:
                label = f"nmsparse {pattern} / nmsparse {plain}"
                ratios.setdefault(label, {})[kind] = table[f"nmsparse {pattern}"] / table[f"nmsparse {plain}"]
        for pattern in args.refit_patterns:
            if f"nmsparse {pattern}" in table:
                label = f"nmsparse {pattern} refit / nmsparse {pattern}"
                ratios.setdefault(label, {})[kind] = table[f"nmsparse {pattern} refit"] / table[f"nmsparse {pattern}"]

    tokens = args.samples * args.seq
    print(
        f"\nlayer [out, in] = {shape}, {tokens} calibration tokens ({args.samples} x {args.seq}), "
        f"{torch.get_num_threads()} thread(s), median of {args.repeats}"
    )
    print(f"{'variant':<20} {'wall s':>8} {'cpu s':>8}  wall s of each round (cpu s)")
    for name, _ in variants:
        rounds = " ".join(f"{t:.3f} ({c:.3f})" for t, c in zip(times[name], cpu_times[name]))
        print(f"{name:<20} {medians[name]:>8.3f} {cpu_medians[name]:>8.3f}  {rounds}")
    for label, values in ratios.items():
        target = "" if "refit" in label else f" (target <= {1.0 if 'reference' in label else 1.2:.1f})"
        print(f"  {label}: wall {values['wall']:.3f}, cpu {values['cpu']:.3f}{target}")
    for pattern, measures in checks.items():
        print(f"  nmsparse vs reference at {pattern}: " + ", ".join(f"{k} {v:.6g}" for k, v in measures.items()))
    for failure in failures:
        print(f"  FAIL {failure}")
    return {
        "shape": [out_features, in_features],
        "tokens": tokens,
        "seconds": times,
        "cpu_seconds": cpu_times,
        "failures": failures,
        "median_seconds": medians,
        "median_cpu_seconds": cpu_medians,
        "ratios": ratios,
        "checks": checks,
    }


def _shape(text: str) -> tuple[int, int]:
    try:
        out_features, in_features = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected OUTxIN such as 5632x2048, got {text!r}") from None
    return out_features, in_features


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="small shapes, one round (seconds)")
    parser.add_argument(
        "--shapes",
        nargs="*",
        type=_shape,
        default=None,
        metavar="OUTxIN",
        help="linear layers [out, in] (default: 5632x2048 2048x5632)",
    )
    parser.add_argument("--samples", type=int, default=4, help="calibration sequences (default: 4)")
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence (default: 128)")
    parser.add_argument("--patterns", nargs="*", default=list(PATTERNS), help="nmsparse patterns")
    parser.add_argument(
        "--reference-patterns",
        nargs="*",
        default=["2:4"],
        help="patterns also run by the reference (plain n:m only; default: 2:4)",
    )
    parser.add_argument(
        "--refit-patterns",
        nargs="*",
        default=[],
        help="also time SparseGPT with its refit option at these patterns (default: none)",
    )
    parser.add_argument("--refit", type=int, default=25, help="refit steps of --refit-patterns (default: 25)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (default: 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    add_out_argument(parser)
    args = parser.parse_args(argv)
    if any(p.endswith("-T") for p in args.reference_patterns):
        parser.error("the reference makes plain n:m masks only")
    if args.smoke:
        args.shapes = args.shapes or [(128, 64), (64, 128)]
        args.samples, args.seq, args.repeats = 2, 32, 1
        args.refit_patterns = args.refit_patterns or ["2:4-T"]
    shapes = args.shapes or [(5632, 2048), (2048, 5632)]
    pin_threads(args.threads)
    env = environment()
    env["load_average"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print_environment(env)
    runs = [_run_shape(out_features, in_features, args) for out_features, in_features in shapes]
    env_after = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"\nload average after: {env_after}")
    payload = {"environment": env, "load_average_after": env_after, "smoke": args.smoke, "runs": runs}
    path = write_result("sparsegpt-smoke" if args.smoke else "sparsegpt", payload, args.out)
    print(f"wrote {path}")
    failures = [f for run in runs for f in run["failures"]]
    if failures:
        print("not equal up to float rounding, or an invalid mask:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    print("checks passed: every mask valid; nmsparse equals the reference up to float rounding")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
