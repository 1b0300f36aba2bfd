"""``nmsparse mask CHECKPOINT --pattern 4:8-T --out MASKS.safetensors``: masks for every prunable weight."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..io import load_state_dict, save_masks
from ..errors import ConfigError
from ..pattern import NMPattern
from ..solvers import list_methods
from ..tensors import mask_state_dict
from ._table import format_table


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "mask", help="solve masks for every prunable weight of a checkpoint",
        description="Solve an n:m or transposable n:m mask for every 2-D/4-D '*weight' tensor of a state dict "
                    "(.pt/.pth loaded with weights_only=True, or .safetensors) and write them to a safetensors "
                    "file with the pattern and method in its metadata.",
    )
    parser.add_argument("checkpoint", type=Path, help="state dict: .safetensors, .pt, .pth, .bin or .ckpt")
    parser.add_argument("--pattern", required=True, help='e.g. "2:4", "4:8-T", "8:16-T"')
    parser.add_argument("--method", default="auto", choices=list_methods(), help="mask method (default: auto)")
    parser.add_argument("--out", type=Path, required=True, help="output masks file (.safetensors)")
    parser.add_argument("--include", action="append", metavar="GLOB", help="only tensors matching (repeatable)")
    parser.add_argument("--exclude", action="append", metavar="GLOB", help="skip tensors matching (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    return parser


def run(args: argparse.Namespace) -> int:
    pattern = NMPattern.parse(args.pattern)
    if args.out.suffix != ".safetensors":
        raise ConfigError(f"--out must end in .safetensors, got {str(args.out)!r}")
    state_dict = load_state_dict(args.checkpoint)
    solved = mask_state_dict(state_dict, pattern, method=args.method, include=args.include, exclude=args.exclude,
                             progress_bar=False if args.no_progress else None)
    method = args.method if args.method != "auto" else ("exact" if pattern.transposable else "topn")
    save_masks(solved.masks, args.out, metadata={"pattern": str(pattern), "method": method,
                                                 "source": args.checkpoint.name})
    rows = [[r.name, "x".join(map(str, r.shape)), f"{100 * r.kept_magnitude:.2f}%", f"{1000 * r.seconds:.1f}"]
            for r in solved.results]
    print(format_table(["tensor", "shape", "kept |w|", "ms"], rows))
    print(f"\n{len(solved.results)} tensors masked with {pattern} ({method}) in {solved.seconds:.2f} s, "
          f"kept {100 * solved.kept_magnitude:.2f}% of |w|; wrote {args.out}")
    if solved.skipped:
        print(f"skipped {len(solved.skipped)} tensor(s) whose shape cannot take {pattern}:")
        for name, reason in solved.skipped.items():
            print(f"  {name}: {reason}")
    return 0
