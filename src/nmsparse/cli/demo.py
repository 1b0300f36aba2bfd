"""``nmsparse demo``: exact vs approximate transposable masks for a ResNet-50-shaped network built in code."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from ..recipes.compare_methods import resnet50_weights, run_method
from ._runtime import add_runtime_arguments, configure_runtime
from ._table import format_table

DEFAULT_RUNS = (
    "4:8-T:exact",
    "4:8-T:greedy",
    "4:8-T:greedy-repair",
    "4:8:topn",
    "2:4-T:exact",
    "2:4-T:greedy",
    "2:4-T:greedy-repair",
    "2:4:topn",
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo",
        help="mask a ResNet-50-shaped network with every method and compare",
        description="Solve 4:8-T and 2:4-T masks (exact, greedy, greedy-repair) and plain 4:8 / 2:4 top-n masks "
        "for every weight of a ResNet-50-shaped network with Gaussian weights built in code, and "
        "print kept magnitude, validity and time per method.",
    )
    parser.add_argument(
        "--runs",
        nargs="+",
        default=list(DEFAULT_RUNS),
        metavar="PATTERN:METHOD",
        help="pattern:method pairs (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--backend", default="auto", help="find_mask backend for every run (default: auto; see `nmsparse info`)"
    )
    add_runtime_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    threads = configure_runtime(args.threads)
    weights = resnet50_weights(seed=args.seed)
    print(
        f"ResNet-50-shaped weights: {len(weights)} tensors, {sum(w.numel() for w in weights.values()):,} "
        f"Gaussian weights (seed {args.seed}), {threads} thread(s)\n"
    )
    rows = []
    from .._logging import progress

    for spec in progress(args.runs, desc="demo", enabled=args.progress):
        pattern, _, method = spec.rpartition(":")
        if not pattern:
            raise ConfigError(f"--runs entries look like '4:8-T:exact', got {spec!r}")
        r = run_method(weights, pattern, method, backend=args.backend)
        rows.append(
            [
                r.pattern,
                r.method,
                r.tensors,
                f"{r.groups:,}",
                f"{100 * r.kept_magnitude:.2f}%",
                "yes" if r.valid else "NO",
                "yes" if r.exact_n else "no",
                f"{r.seconds:.2f}",
            ]
        )
        print(f"  {r.pattern:<6} {r.method:<14} {r.seconds:6.2f} s", flush=True)
    print()
    print(
        format_table(
            ["pattern", "method", "tensors", "blocks/groups", "kept |w|", "valid", "exactly n", "seconds"],
            rows,
            align="llrrrrrr",
        )
    )
    print("\nvalid: at most n per group (plain) or per block row and column (-T); exactly n: no wasted capacity.")
    return 0
