"""``nmsparse adaprune --model MODEL --pattern 4:8-T --out DIR``: one-shot pruning with AdaPrune.

The AdaPrune settings' flags are generated from :class:`nmsparse.adaprune.AdaPruneConfig` (names, defaults and
help in one place); the flags written here are the command's own: model, calibration, output, threads, progress.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import ConfigError, OverwriteError
from ._runtime import configure_runtime

REPORT_FILE = "adaprune.json"
MODEL_FILE = "model.safetensors"
def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from ..adaprune import AdaPruneConfig
    from ._flags import add_config_arguments

    parser = subparsers.add_parser(
        "adaprune", help="one-shot n:m / n:m-T pruning of a trained model with AdaPrune (no training)",
        description="Prune a trained model to an n:m or transposable n:m pattern with AdaPrune: masks with "
                    "absorb-mean, then every layer is fitted to its dense output on a small calibration set "
                    "with the mask fixed, then batch-norm statistics are re-estimated. Writes the pruned model "
                    f"({MODEL_FILE}, masks included: load it with nmsparse.io.load_pruned_) and a JSON report "
                    f"({REPORT_FILE}: settings, every pruned layer, every layer left dense and why) to --out.",
    )
    parser.add_argument("--model", required=True,
                        help="'minilm' (the packaged all-MiniLM-L6-v2), 'hf:FOLDER' (a transformers model folder) "
                             "or a model.safetensors written by 'nmsparse train' (or its run folder)")
    parser.add_argument("--calibration", default="builtin",
                        help="'builtin' (text models: English sentences shipped with Python; image models: the "
                             "training split of their data set) or, for text models, a file with one sentence "
                             "per line (default: builtin)")
    parser.add_argument("--data", nargs="+", metavar="PATH", default=None,
                        help="text models: calibration and held-out text from text files, .jsonl files with a "
                             "\"text\" field, or folders of them (instead of --calibration)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace {MODEL_FILE} / {REPORT_FILE} already in --out (e.g. the source run's)")
    parser.add_argument("--calibration-size", type=int, default=None, metavar="N",
                        help="calibration sentences or images (default: 256)")
    parser.add_argument("--eval-size", type=int, default=300,
                        help="held-out sentences for text models, 0 to skip evaluation (default: 300)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads of torch and numba (default: min(cores, 4); on a busy machine 1 is "
                             "often fastest)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bars (default: on a terminal)")
    add_config_arguments(parser, AdaPruneConfig)
    return parser


def _refuse_overwrite(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; pass a folder")
    existing = [name for name in (MODEL_FILE, REPORT_FILE) if (out / name).exists()]
    if existing and not overwrite:
        raise OverwriteError(f"--out {str(out)!r} already holds {' and '.join(existing)} (e.g. the source run's "
                             f"weights); pass another folder, or --overwrite to replace them")


def _config(args: argparse.Namespace, source: Any) -> Any:
    """AdaPruneConfig from the flags given; the model source supplies ``include`` and ``keep_first_last`` when
    they are not given (a recipe choice, printed and recorded)."""
    from ..adaprune import AdaPruneConfig
    from ._flags import explicit_overrides

    values = explicit_overrides(args, AdaPruneConfig)
    values.setdefault("include", source.include)
    values.setdefault("keep_first_last", source.keep_first_last)
    return AdaPruneConfig.from_dict(values, where="nmsparse adaprune")


def run(args: argparse.Namespace) -> int:
    from ..adaprune import AdaPruneConfig, adaprune_
    from ..io import save_pruned, write_text_atomic
    from ..metrics import is_nm_sparse
    from ..prune import get_masks
    from ..recipes.integrations.sources import resolve_source
    from ._flags import DEST_PREFIX
    from ._table import format_table

    threads = configure_runtime(args.threads)
    if getattr(args, DEST_PREFIX + "pattern", None) is None:
        raise ConfigError("nmsparse adaprune: --pattern is required, e.g. --pattern 4:8-T")
    if args.eval_size < 0:
        raise ConfigError(f"--eval-size must be >= 0, got {args.eval_size}")
    AdaPruneConfig.from_dict({"pattern": getattr(args, DEST_PREFIX + "pattern")}, where="nmsparse adaprune")
    if args.data and args.calibration != "builtin":
        raise ConfigError("--data gives the calibration text; drop --calibration (or --data)")
    _refuse_overwrite(args.out, args.overwrite)
    began = time.perf_counter()
    source = resolve_source(args.model, args.calibration, calibration_size=args.calibration_size,
                            eval_size=args.eval_size, seed=0, data=args.data)
    config = _config(args, source)
    print(f"model: {source.description}")
    print(f"settings: {config.pattern}, {config.optimizer} x {config.iterations} steps per layer, include "
          f"{list(config.include) if config.include else 'all'}, keep_first_last={config.keep_first_last}, "
          f"{threads} thread(s)")
    before = source.evaluate(source.model) if source.evaluate is not None else None
    report = adaprune_(source.model, source.calibration, config, progress=args.progress)
    after = source.evaluate(source.model) if source.evaluate is not None else None
    masks = get_masks(source.model)
    valid = all(f"{r.name}.weight" in masks and is_nm_sparse(masks[f"{r.name}.weight"], config.pattern)
                for r in report)

    rows = [[r.name, "x".join(map(str, r.shape)), r.rows, f"{r.relative_before:.4f}", f"{r.relative_after:.4f}",
             r.best_iteration, f"{r.seconds:.1f}"] for r in report]
    print(format_table(["layer", "shape", "rows", "rel.err masked", "rel.err adaprune", "best step", "s"], rows))
    if report.skipped:
        print(f"\nleft dense ({len(report.skipped)}):")
        for name, reason in report.skipped.items():
            print(f"  {name}: {reason}")
    seconds = time.perf_counter() - began
    record = {
        "format": "nmsparse.adaprune.report", "nmsparse_version": __version__, "model": args.model,
        "description": source.description, "calibration": args.calibration, "data": args.data,
        "calibration_batches": len(source.calibration), "threads": threads, "masks_valid": valid,
        "evaluation": {"dense": before, "pruned": after}, **report.as_dict(), "seconds": seconds,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    metadata = {"source": args.model, "adaprune": json.dumps(config.to_dict()), **source.metadata}
    save_pruned(source.model, args.out / MODEL_FILE, metadata=metadata, overwrite=args.overwrite)
    write_text_atomic(args.out / REPORT_FILE, json.dumps(record, indent=2) + "\n", overwrite=args.overwrite)
    print(f"\n{len(report)} layer(s) pruned to {config.pattern}, {len(report.skipped)} left dense, in "
          f"{seconds:.1f} s; masks valid: {valid}")
    if before is not None and after is not None:
        for key in before:
            if isinstance(before[key], float) and key != "sentences":
                print(f"  {key}: dense {before[key]:.4f} -> pruned {after[key]:.4f}")
    print(f"wrote {args.out / MODEL_FILE} and {args.out / REPORT_FILE}")
    return 0
