"""``nmsparse adaprune --model MODEL --pattern 4:8-T --calibration builtin --out DIR``: one-shot pruning."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .._version import __version__
from ..io import atomic_path
from ..errors import ConfigError
from ..pattern import NMPattern
from ..solvers import list_methods
from ._table import format_table

REPORT_FILE = "adaprune.json"
MODEL_FILE = "model.safetensors"


def _batch_size(value: str) -> int | None:
    if value in ("full", "none", "None"):
        return None
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or 'full', got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or 'full', got {value!r}")
    return number


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "adaprune", help="one-shot n:m / n:m-T pruning of a trained model with AdaPrune (no training)",
        description="Prune a trained model to an n:m or transposable n:m pattern with AdaPrune: masks with "
                    "absorb-mean, then every layer is fitted to its dense output on a small calibration set "
                    "(Adam, mask fixed), then batch-norm statistics are re-estimated. Writes the pruned "
                    "checkpoint (model.safetensors, masks included: load it with "
                    "nmsparse.load_pruned_state_dict_) and a JSON report to --out.",
    )
    parser.add_argument("--model", required=True,
                        help="'minilm' (the packaged all-MiniLM-L6-v2), 'hf:FOLDER' (a transformers model folder) "
                             "or a model.safetensors written by 'nmsparse train' (or its run folder)")
    parser.add_argument("--pattern", required=True, help='e.g. "2:4", "4:8-T"')
    parser.add_argument("--calibration", default="builtin",
                        help="'builtin' (text models: English sentences shipped with Python; image models: the "
                             "training split of their data set) or, for text models, a file with one sentence "
                             "per line (default: builtin)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--calibration-size", type=int, default=None, metavar="N",
                        help="calibration sentences or images (default: 256)")
    parser.add_argument("--method", default="auto", choices=list_methods(), help="mask method (default: auto)")
    parser.add_argument("--scores", default="magnitude", choices=("magnitude", "activation"),
                        help="mask importance: |w| or |w| * ||x|| on the calibration data (default: magnitude)")
    parser.add_argument("--iterations", type=int, default=1000, help="Adam steps per layer (default: 1000)")
    parser.add_argument("--batch-size", type=_batch_size, default=50,
                        help="calibration samples per Adam step, or 'full' for exact full-batch steps (default: 50)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of weights (default: 1e-3)")
    parser.add_argument("--bias-lr", type=float, default=1e-2, help="Adam learning rate of biases (default: 1e-2)")
    parser.add_argument("--no-absorb-mean", action="store_true", help="mask without absorb-mean")
    parser.add_argument("--parallel", action="store_true",
                        help="the paper's parallel version: every layer sees dense inputs (default: sequential)")
    parser.add_argument("--target", default="model", choices=("model", "layer"),
                        help="sequential target: the dense model's layer output, or the layer's own dense output "
                             "on its pruned-path input (default: model)")
    parser.add_argument("--include", action="append", metavar="GLOB",
                        help="only prune modules matching (repeatable; minilm default: encoder.*)")
    parser.add_argument("--exclude", action="append", metavar="GLOB", help="keep modules matching dense (repeatable)")
    edge = parser.add_mutually_exclusive_group()
    edge.add_argument("--keep-first-last", dest="keep_first_last", action="store_true", default=None,
                      help="keep the first and last prunable layers dense (default, except for minilm)")
    edge.add_argument("--no-keep-first-last", dest="keep_first_last", action="store_false",
                      help="prune the first and last layers too")
    parser.add_argument("--memory-budget", default="1GiB", help="activations held at once (default: 1GiB)")
    parser.add_argument("--eval-size", type=int, default=300,
                        help="held-out sentences for text models, 0 to skip evaluation (default: 300)")
    parser.add_argument("--seed", type=int, default=0, help="seed of sampling (default: 0)")
    parser.add_argument("--no-progress", action="store_true", help="never show progress bars")
    return parser


def run(args: argparse.Namespace) -> int:
    from nmsparse.recipes.integrations.sources import readable, resolve_source, save_checkpoint
    from ..metrics import is_nm_sparse
    from ..prune import adaprune_, get_masks

    pattern = NMPattern.parse(args.pattern)
    if args.iterations < 0:
        raise ConfigError(f"--iterations must be >= 0, got {args.iterations}")
    if args.eval_size < 0:
        raise ConfigError(f"--eval-size must be >= 0, got {args.eval_size}")
    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out {str(args.out)!r} is a file; pass a folder")
    began = time.perf_counter()
    source = resolve_source(args.model, args.calibration, calibration_size=args.calibration_size,
                            eval_size=args.eval_size, seed=args.seed)
    print(f"model: {source.description}")
    before = source.evaluate(source.model) if source.evaluate is not None else None
    include = args.include if args.include is not None else source.include
    keep_first_last = source.keep_first_last if args.keep_first_last is None else args.keep_first_last
    reports = adaprune_(
        source.model, source.calibration, pattern, method=args.method, scores=args.scores, include=include,
        exclude=args.exclude, iterations=args.iterations, batch_size=args.batch_size, lr=args.lr,
        bias_lr=args.bias_lr, absorb_mean=not args.no_absorb_mean, keep_first_last=keep_first_last,
        sequential=not args.parallel, target=args.target, memory_budget=args.memory_budget, seed=args.seed,
        progress=False if args.no_progress else None,
    )
    after = source.evaluate(source.model) if source.evaluate is not None else None
    masks = get_masks(source.model)
    valid = all(r.name in masks and is_nm_sparse(masks[r.name], pattern) for r in reports)

    rows = [[r.name, "x".join(map(str, r.shape)), r.rows, f"{r.relative_before:.4f}", f"{r.relative_after:.4f}",
             r.best_iteration, f"{r.seconds:.1f}"] for r in reports]
    print(format_table(["layer", "shape", "rows", "rel.err masked", "rel.err adaprune", "best step", "s"], rows))
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {
        "pattern": str(pattern), "method": args.method, "scores": args.scores, "iterations": args.iterations,
        "batch_size": args.batch_size, "lr": args.lr, "bias_lr": args.bias_lr,
        "absorb_mean": not args.no_absorb_mean, "sequential": not args.parallel, "target": args.target,
        "include": include, "exclude": args.exclude, "keep_first_last": keep_first_last,
        "memory_budget": args.memory_budget, "calibration": args.calibration, "calibration_batches":
            len(source.calibration), "seed": args.seed,
    }
    report = {
        "format": "nmsparse.adaprune.report", "nmsparse_version": __version__, "model": args.model,
        "description": source.description, "settings": settings, "masks_valid": valid,
        "evaluation": {"dense": before, "pruned": after}, "layers": [r.as_dict() for r in reports],
        "seconds": time.perf_counter() - began,
    }
    metadata = {"format": "nmsparse.adaprune", "nmsparse_version": __version__, "pattern": str(pattern),
                "source": args.model, **source.metadata}
    save_checkpoint(source.model, args.out / MODEL_FILE, metadata=metadata)
    with atomic_path(args.out / REPORT_FILE) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        readable(tmp)
    print(f"\n{len(reports)} layer(s) pruned to {pattern} in {report['seconds']:.1f} s; masks valid: {valid}")
    if before is not None and after is not None:
        for key in before:
            if isinstance(before[key], float) and key != "sentences":
                print(f"  {key}: dense {before[key]:.4f} -> pruned {after[key]:.4f}")
    print(f"wrote {args.out / MODEL_FILE} and {args.out / REPORT_FILE}")
    return 0
