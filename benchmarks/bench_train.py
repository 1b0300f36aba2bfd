"""Training step time: dense vs static masks vs dynamic masks (refreshed every k steps, greedy and exact).

Each model trains on random data with SGD (momentum 0.9). Variants, all measured in the same run:

* ``dense``           plain model
* ``static``          ``prune_`` (masks fixed, masked gradients)
* ``dynamic-greedy``  ``DynamicSparsifier`` (straight-through + SR-STE), masks refreshed with ``greedy``
* ``dynamic-exact``   the same, refreshed with ``exact``

The variants run interleaved, one step each in turn, so load from other processes hits them alike. The table
shows the median step time after warm-up (refresh steps are rare outliers, so the median is a step without
refresh) and its ratio to ``dense``, the ratio of mean step times (refreshes included), the mean time of one
refresh, and the refresh overhead as a share of the dense step: ``(mean refresh time / refresh_every) / dense
median step``. Masked steps are dense GEMMs on
``W * mask`` here (no sparse kernels), so ratios above 1 are the cost of the mask parametrization itself.

    python benchmarks/bench_train.py                  # ResNet-ish CNN and MLP, 120 steps each
    python benchmarks/bench_train.py --smoke --out /tmp/results   # seconds: tiny models, few steps
    python benchmarks/bench_train.py --device cuda --threads 4

The mask solvers are compiled (numba) or loaded from the cache by ``nmsparse.solvers.warmup`` before any timed
step; the time it took is printed and saved as ``compile_seconds`` (what a first run on a fresh machine pays).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, print_environment, write_result  # noqa: E402

import nmsparse  # noqa: E402


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """ResNet-ish CNN for 32x32 inputs: stem, one basic block per stage, global pool, fc."""

    def __init__(self, width: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = BasicBlock(width, width, 1)
        self.layer2 = BasicBlock(width, 2 * width, 2)
        self.layer3 = BasicBlock(2 * width, 4 * width, 2)
        self.fc = nn.Linear(4 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(x.mean(dim=(2, 3)))


def mlp(width: int, classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Linear(width, 4 * width),
        nn.ReLU(),
        nn.Linear(4 * width, 4 * width),
        nn.ReLU(),
        nn.Linear(4 * width, width),
        nn.ReLU(),
        nn.Linear(width, classes),
    )


def build(name: str, smoke: bool, batch: int | None, device: torch.device) -> tuple[nn.Module, torch.Tensor]:
    """Model and one input batch (random data: step time does not depend on the values)."""
    if name == "resnet":
        model = SmallResNet(width=16 if smoke else 32)
        x = torch.randn(batch or (8 if smoke else 16), 3, 16 if smoke else 32, 16 if smoke else 32)
    elif name == "mlp":
        model = mlp(width=64 if smoke else 256)
        x = torch.randn(batch or (16 if smoke else 128), 64 if smoke else 256)
    else:
        raise SystemExit(f"bench_train: unknown model {name!r}; choose resnet or mlp")
    return model.to(device), x.to(device)


class Runner:
    """One variant: a model, its optimizer, and (for dynamic variants) its sparsifier."""

    def __init__(
        self, name: str, model: nn.Module, x: torch.Tensor, sparsifier: nmsparse.DynamicSparsifier | None
    ) -> None:
        self.name, self.model, self.x, self.sparsifier = name, model, x, sparsifier
        self.opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-5)
        self.target = torch.randint(0, 10, (x.shape[0],), device=x.device)
        self.times: list[float] = []
        self.refresh_start = (0, 0.0)  # (refreshes, refresh_seconds) when timing began

    def step(self, timed: bool) -> None:
        """One training step: zero_grad, forward, backward, optimizer step, sparsifier step."""
        sync = torch.cuda.synchronize if self.x.device.type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(self.model(self.x), self.target).backward()
        self.opt.step()
        if self.sparsifier is not None:
            self.sparsifier.step()
        sync()
        if timed:
            self.times.append(time.perf_counter() - start)


def run_model(name: str, args: argparse.Namespace, device: torch.device) -> list[dict[str, object]]:
    torch.manual_seed(args.seed)
    dense_model, x = build(name, args.smoke, args.batch, device)
    state = dense_model.state_dict()

    def fresh() -> nn.Module:
        model, _ = build(name, args.smoke, args.batch, device)
        model.load_state_dict(state)
        return model

    runners = [
        Runner("dense", fresh(), x, None),
        Runner("static", nmsparse.prune_(fresh(), args.pattern, method="greedy").model, x, None),
    ]
    pattern = nmsparse.NMPattern.parse(args.pattern)
    for method in args.methods:
        model = fresh()
        # initial masks with greedy too: the initial solve is not part of the timed loop
        sparsifier = nmsparse.DynamicSparsifier(
            model, pattern, method=method, initial_method="greedy", refresh_every=args.refresh_every
        )
        runners.append(Runner(f"dynamic-{method}", model, x, sparsifier))

    # Interleave the variants step by step, so load from other processes hits them all alike.
    for i in range(args.warmup + args.steps):
        timed = i >= args.warmup
        if i == args.warmup:
            for r in runners:
                if r.sparsifier is not None:
                    r.refresh_start = (r.sparsifier.refreshes, r.sparsifier.refresh_seconds)
        for r in runners:
            r.step(timed)

    dense_median = statistics.median(runners[0].times)
    rows: list[dict[str, object]] = []
    for r in runners:
        median = statistics.median(r.times)
        mean = statistics.fmean(r.times)
        row: dict[str, object] = {
            "model": name,
            "variant": r.name,
            "median_ms": median * 1e3,
            "mean_ms": mean * 1e3,
            "ratio": median / dense_median,
            "mean_ratio": mean / statistics.fmean(runners[0].times),
        }
        if r.sparsifier is not None:
            refreshes = r.sparsifier.refreshes - r.refresh_start[0]
            per_refresh = (r.sparsifier.refresh_seconds - r.refresh_start[1]) / max(refreshes, 1)
            row.update(
                refreshes=refreshes,
                refresh_ms=per_refresh * 1e3,
                refresh_share=per_refresh / args.refresh_every / dense_median,
                masks_valid=r.sparsifier.masks_valid(),
                layers=len(r.sparsifier.layers),
            )
        rows.append(row)
    return rows


def print_table(rows: list[dict[str, object]], refresh_every: int, *, header_line: bool = True) -> None:
    header = (
        f"{'model':<8} {'variant':<16} {'median ms':>10} {'vs dense':>9} {'mean vs dense':>13} {'refreshes':>9} "
        f"{'ms/refresh':>11} {f'share@{refresh_every}':>10}"
    )
    if header_line:
        print(header)
        print("-" * len(header))
    for r in rows:
        refresh = (
            f"{r['refreshes']:>9} {r['refresh_ms']:>11.2f} {100 * r['refresh_share']:>9.2f}%"
            if "refreshes" in r
            else f"{'':>9} {'':>11} {'':>10}"
        )
        print(
            f"{r['model']:<8} {r['variant']:<16} {r['median_ms']:>10.2f} {r['ratio']:>8.2f}x "
            f"{r['mean_ratio']:>12.2f}x {refresh}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny models, few steps, seconds")
    parser.add_argument("--models", nargs="+", default=["resnet", "mlp"], choices=["resnet", "mlp"])
    parser.add_argument("--pattern", default="4:8-T")
    parser.add_argument("--methods", nargs="+", default=["greedy", "exact"], help="refresh methods to time")
    parser.add_argument("--refresh-every", type=int, default=40)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 120, smoke 10)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5, smoke 2)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch and numba CPU threads (default: min(cores, 4), which does not oversubscribe)",
    )
    parser.add_argument(
        "--out", metavar="DIR", default=None, help="where the result JSON goes (default benchmarks/results/)"
    )
    parser.add_argument("--no-save", action="store_true", help="write no result JSON")
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 10 if args.smoke else 120
    if args.warmup is None:
        args.warmup = 2 if args.smoke else 5
    if args.smoke:
        args.refresh_every = min(args.refresh_every, 4)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("bench_train: --device cuda asked for, but torch.cuda.is_available() is False")
    device = torch.device(args.device)
    threads = args.threads or max(1, min(os.cpu_count() or 1, 4))
    torch.set_num_threads(threads)
    try:
        import numba

        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    except ImportError:
        pass
    start = time.perf_counter()
    from nmsparse.solvers import warmup

    warmup([args.pattern], args.methods, device=device, dtypes=(torch.float32,))
    compile_seconds = time.perf_counter() - start
    torch.set_num_threads(threads)  # numba's OpenMP layer may have reset it

    env = environment(args.device)
    print_environment(env)
    print(
        f"pattern {args.pattern}, refresh every {args.refresh_every} steps, {args.steps} timed steps after "
        f"{args.warmup} warm-up steps, SGD momentum 0.9, {threads} thread(s); solver compile/load before timing: "
        f"{compile_seconds:.2f} s"
    )
    rows: list[dict[str, object]] = []
    for i, name in enumerate(args.models):
        model_rows = run_model(name, args, device)
        print_table(model_rows, args.refresh_every, header_line=i == 0)  # per model: long runs show progress
        sys.stdout.flush()
        rows += model_rows
    if not args.no_save:
        tag = "smoke" if args.smoke else "full"
        path = write_result(
            f"bench_train_{tag}_{args.device.replace(':', '')}_{args.pattern.replace(':', '-')}",
            {"env": env, "args": vars(args), "threads": threads, "compile_seconds": compile_seconds, "rows": rows},
            args.out,
        )
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
