"""``nmsparse compare``: train one model under several sparsity structures with identical seeds.

One subcommand per task, each with its own flags (``nmsparse compare classify -h``, ``nmsparse compare lm -h``):

  classify  (the default) the shipped recipe ``digits_cnn_4x8t_dynamic`` (the built-in digits CNN) as dense, 2:4,
            4:8, 2:4-T, 4:8-T and unstructured 50% (per-layer magnitude masks, refreshed like the n:m ones), all
            with dynamic SR-STE masks on the same layers: a table of test accuracy and exact mask diversity (log10,
            per a reference tensor of 4096 weights), compare.json and compare.png (accuracy against diversity)
  lm        the same structures on the decoder language model of ``nmsparse.recipes.lm`` (held-out loss and
            perplexity)

``--task classify|lm`` (older command lines) is the same as the subcommand. An output directory holding another
run or comparison is refused unless ``--overwrite``. A killed comparison continues with ``--resume DIR``: its task,
settings, structures and seeds come from the files it wrote there.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ._runtime import configure_runtime
from .main import CLIError
from .train import add_common_arguments, add_task_command, classify_config, lm_config, lm_module, print_recipes

#: Task of a comparison directory's run.json -> the subcommand that resumes it.
RECORDED_TASKS = {"compare": "classify", "lm-compare": "lm"}


def _add_compare_arguments(parser: argparse.ArgumentParser, task: str) -> None:
    from nmsparse.recipes._common import DEFAULT_REFERENCE_NUMEL, DEFAULT_STRUCTURES

    parser.add_argument(
        "--structures",
        nargs="+",
        default=None,
        metavar="S",
        help=f"structures to train (default: {' '.join(DEFAULT_STRUCTURES)})",
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, metavar="N", help="seeds (every structure trains with each; default: --seed, 0)"
    )
    parser.add_argument(
        "--reference-numel",
        type=int,
        default=DEFAULT_REFERENCE_NUMEL,
        help=f"tensor size of the mask-diversity column (default {DEFAULT_REFERENCE_NUMEL})",
    )
    stamp = "compare-lm" if task == "lm" else "compare"
    parser.add_argument("--out", metavar="DIR", help=f"output directory (default: runs/{stamp}-<date>-<time>)")
    parser.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the interrupted comparison in DIR (settings, structures and seeds from the "
        "files it wrote there; each run from its last checkpoint)",
    )
    add_common_arguments(parser, task)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    return add_task_command(
        subparsers,
        "compare",
        help="train one model under several sparsity structures and compare with mask diversity",
        description=__doc__,
        recorded_tasks=RECORDED_TASKS,
        add_arguments=_add_compare_arguments,
    )


def _check_printable(args: argparse.Namespace) -> None:
    """The comparison's own settings, checked before ``--print-config`` prints anything (issue 16: it printed
    settings the run then refused)."""
    from nmsparse.recipes._common import check_structures

    if args.structures is not None:
        check_structures(args.structures)
    if args.seeds is not None and (not args.seeds or min(args.seeds) < 0 or len(set(args.seeds)) != len(args.seeds)):
        raise CLIError(f"--seeds must be distinct integers >= 0, got {args.seeds}")
    if args.reference_numel < 64 or args.reference_numel % 64:
        raise CLIError(f"--reference-numel must be a positive multiple of 64 (8x8 blocks), got {args.reference_numel}")


def _resume_plan(args: argparse.Namespace) -> str:
    """Check a ``--resume DIR`` command line, fill in the recorded structures, seeds and reference size, and
    return the comparison's task (``"classify"`` or ``"lm"``)."""
    from nmsparse.recipes._common import read_compare_plan
    from nmsparse.recipes.rundir import RunDir

    from .train import _check_resume_args

    _check_resume_args(args)
    folder = Path(args.resume)
    if not folder.is_dir():
        raise CLIError(f"--resume {args.resume}: no such comparison directory")
    recorded = RunDir.task_of(folder)
    if recorded not in RECORDED_TASKS:
        raise CLIError(
            f"--resume {args.resume}: not a comparison directory (its run.json names "
            f"{recorded or 'no task'}); resume a train run with nmsparse train --resume"
        )
    task = RECORDED_TASKS[recorded]
    if args.task is not None and args.task != task:
        raise CLIError(
            f"{args.resume} is a comparison of the {task} task; resume it with nmsparse compare {task} "
            f"--resume {args.resume} (or without a task)"
        )
    plan = read_compare_plan(folder)
    if plan is not None:
        args.structures = args.structures if args.structures is not None else plan["structures"]
        args.seeds = args.seeds if args.seeds is not None else plan["seeds"]
        args.reference_numel = plan["reference_numel"]
    args.out = str(folder)
    return task


def _print_table(rows: list[dict[str, Any]], reference_numel: int, seeds: list[int]) -> None:
    acc_header = "test acc %" if len(seeds) == 1 else f"test acc % (mean +- std, {len(seeds)} seeds)"
    header = (
        f"  {'structure':<14}{acc_header:>{max(12, len(acc_header) + 2)}}  {'log10 MD':>9}  {'masks':>6}  "
        f"{'refresh':>8}  {'train s':>8}"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    for row in rows:
        acc = f"{row['test_accuracy']:.2f}"
        if len(seeds) > 1:
            acc += f" +- {row['test_accuracy_std']:.2f}"
        md = "-" if row["log10_mask_diversity"] is None else f"{row['log10_mask_diversity']:.1f}"
        valid = "-" if row["mask_valid"] is None else ("valid" if row["mask_valid"] else "BAD")
        overhead = "-" if row["refresh_overhead"] is None else f"{row['refresh_overhead']:.1%}"
        print(
            f"  {row['structure']:<14}{acc:>{max(12, len(acc_header) + 2)}}  {md:>9}  {valid:>6}  {overhead:>8}  "
            f"{row['train_seconds']:>8.1f}"
        )
    print(
        f"  log10 MD: exact log10 of the number of masks at 50% density for a tensor of {reference_numel} weights "
        f"(nmsparse.log10_mask_diversity)"
    )


def _print_lm_table(result: Any) -> None:
    seeds = list(result.seeds)
    print(
        f"  {'structure':<14}{'held-out loss':>22}  {'perplexity':>10}  {'gap %':>15}  {'log10 MD':>9}  "
        f"{'masks':>6}  {'train s':>8}"
    )
    for row in result.rows:
        loss = f"{row['heldout_loss']:.4f}" + (f" +- {row['heldout_loss_std']:.4f}" if len(seeds) > 1 else "")
        md = "-" if row.get("log10_mask_diversity") is None else f"{row['log10_mask_diversity']:.1f}"
        gap = "-" if row.get("loss_gap_percent") is None else f"{row['loss_gap_percent']:+.2f}"
        if gap != "-" and len(seeds) > 1 and row.get("loss_gap_percent_std") is not None:
            gap += f" +- {row['loss_gap_percent_std']:.2f}"
        valid = "-" if row.get("mask_valid") is None else ("valid" if row["mask_valid"] else "BAD")
        print(
            f"  {row['structure']:<14}{loss:>22}  {row['heldout_perplexity']:>10.2f}  {gap:>15}  {md:>9}  "
            f"{valid:>6}  {row['train_seconds']:>8.1f}"
        )
    if len(seeds) > 1:
        print(
            "  gap %: mean gap to dense +- the std of the per-seed gaps (each seed against the dense run of that seed)"
        )
    rho = getattr(result, "spearman_loss_vs_diversity", None)
    if rho is not None:
        print(f"  Spearman rank correlation of held-out loss with mask diversity (sparse structures): {rho:+.2f}")
    pairs = getattr(result, "separation", None) or {}
    if pairs:
        apart = [k for k, v in pairs.items() if v]
        close = [k for k, v in pairs.items() if not v]
        print(
            f"  separated beyond seed noise (|mean difference| > sum of the stds): {len(apart)} of {len(pairs)} "
            f"pairs" + (f"; not separated: {', '.join(close)}" if close else "")
        )
    paired = getattr(result, "paired_separation", None) or {}
    if paired:
        apart = [
            k + (f" (t {v['t']:.1f})" if v["t"] is not None else " (same difference on every seed)")
            for k, v in paired.items()
            if v["separates"]
        ]
        print(
            f"  separated by a paired t-test of the per-seed differences (95%, {len(seeds)} seeds): {len(apart)} "
            f"of {len(paired)} pairs" + (f": {', '.join(apart)}" if apart else "")
        )


def _run_lm(args: argparse.Namespace) -> int:
    from .._logging import progress_enabled

    lm = lm_module()
    if not hasattr(lm, "compare_lm"):
        raise CLIError("compare lm: nmsparse.recipes.lm has no compare_lm in this nmsparse version")
    resume = args.resume is not None
    config = lm_config(args, lm, resume_dir=args.resume) if resume else lm_config(args, lm)
    _check_printable(args)
    if config.model is not None or config.mode != "dynamic":  # what compare_lm refuses: refused before printing
        raise CLIError(
            "nmsparse compare lm compares structures trained from scratch on the recipe's decoder with "
            "dynamic masks; --model and --mode are for nmsparse train lm"
        )
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    configure_runtime(getattr(config, "threads", None), None)
    out_dir = Path(args.out) if args.out else Path("runs") / time.strftime("compare-lm-%Y%m%d-%H%M%S")
    kwargs: dict[str, Any] = {
        "overwrite": args.overwrite,
        "progress": progress_enabled(args.progress),
        "reference_numel": args.reference_numel,
        "resume": resume,
    }
    if args.structures is not None:
        kwargs["structures"] = args.structures
    if args.seeds is not None:
        kwargs["seeds"] = args.seeds
    print(f"nmsparse compare lm {'(resuming) ' if resume else ''}-> {out_dir}", flush=True)
    result = lm.compare_lm(None if resume else config, out_dir, **kwargs)
    print()
    _print_lm_table(result)
    print(f"  outputs: {out_dir}/compare.json, {out_dir}/compare.png")
    return 0


def run(args: argparse.Namespace) -> int:
    from nmsparse.recipes._common import COMPARE_JSON, COMPARE_PLOT, DEFAULT_STRUCTURES
    from nmsparse.recipes.classify.compare import compare_structures
    from nmsparse.recipes.classify.config import config_to_yaml
    from nmsparse.recipes.distributed import broadcast_object, init_distributed, shutdown_distributed

    from .._logging import progress_enabled

    if args.list_recipes:
        print_recipes()
        return 0
    task = _resume_plan(args) if args.resume is not None else (args.task or "classify")
    if task == "lm":
        return _run_lm(args)
    if args.reference_numel < 64 or args.reference_numel % 64:
        raise CLIError(f"--reference-numel must be a positive multiple of 64 (8x8 blocks), got {args.reference_numel}")
    if args.resume is not None:
        from nmsparse.recipes.classify.config import load_config

        config = load_config(Path(args.resume) / "config.yaml")
    else:
        config = classify_config(args)
    _check_printable(args)
    if args.print_config:
        print(config_to_yaml(config), end="")
        return 0
    threads = configure_runtime(config.threads, config.model)
    structures = args.structures if args.structures is not None else list(DEFAULT_STRUCTURES)
    ctx = init_distributed(device=config.device)
    try:
        out_dir = Path(args.out) if args.out else Path("runs") / time.strftime("compare-%Y%m%d-%H%M%S")
        out_dir = Path(broadcast_object(str(out_dir), ctx))
        seeds = args.seeds if args.seeds else [config.seed]
        if ctx.is_main:
            print(
                f"nmsparse compare: {config.model} on {config.data}, {len(structures)} structures x "
                f"{len(seeds)} seed(s), {config.epochs} epochs each, {threads} thread(s) -> {out_dir}",
                flush=True,
            )

        def on_run_end(record: dict[str, Any]) -> None:
            print(
                f"  {record['structure']:<14} seed {record['seed']}: {record['test_accuracy']:.2f}% "
                f"({record['seconds']:.1f} s)",
                flush=True,
            )

        result = compare_structures(
            config,
            structures=structures,
            seeds=seeds,
            out_dir=out_dir,
            reference_numel=args.reference_numel,
            dist=ctx,
            progress=progress_enabled(args.progress),
            on_run_end=on_run_end,
            overwrite=args.overwrite,
            resume=args.resume is not None,
        )
        if ctx.is_main:
            print()
            _print_table(result.rows, result.reference_numel, result.seeds)
            print(f"  kernel compile/load before training: {result.compile_seconds:.1f} s (not in the times above)")
            print(f"  outputs: {out_dir / COMPARE_JSON}, {out_dir / COMPARE_PLOT}")
    finally:
        shutdown_distributed(ctx)
    return 0
