"""``nmsparse train``: train a model with n:m masks (dynamic SR-STE or static fine-tuning) and a dense baseline.

With no arguments it runs the shipped recipe ``digits_cnn_4x8t_dynamic``: a small CNN on scikit-learn's 8x8
digits with 4:8-T dynamic masks from scratch, then the same model dense, and prints both test accuracies.
Settings come from that recipe (or ``--config FILE.yaml`` / another shipped recipe name), then flags; every
setting has a flag (generated from the config's fields). ``--task lm`` trains the decoder language model of
``nmsparse.recipes.lm`` instead. Under ``torchrun --nproc_per_node=N -m nmsparse train ...`` it runs
data-parallel (gloo on CPU, nccl on GPU): DDP for --task classify; FSDP2 (default) or DDP (--parallel ddp) for
--task lm. The global batch is split over the processes and rank 0 alone writes the run directory.

A run killed at any moment continues with ``--resume DIR`` (bit-identical to an uninterrupted run); one killed
before its first checkpoint also restarts with the same ``--out DIR``. Files of another run are never replaced
without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ._runtime import configure_runtime
from .main import CLIError, torchrun_world_size

TASKS = ("classify", "lm")
PARALLEL_CHOICES = ("fsdp", "ddp")

def lm_config_class() -> Any:
    """``nmsparse.recipes.lm.LMTrainConfig``, or ``None`` when that recipe is not installed."""
    try:
        from nmsparse.recipes.lm import LMTrainConfig
    except ImportError:
        return None
    return LMTrainConfig


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``train`` and ``compare``: the task, every config field of both tasks, files, threads, progress."""
    from nmsparse.recipes.train.config import DEFAULT_RECIPE, TrainConfig

    from ._flags import add_config_arguments

    parser.add_argument("--task", choices=TASKS, default=None,
                        help="classify: image classification (default); lm: the decoder language model "
                             "(nmsparse.recipes.lm)")
    classes = [TrainConfig] + [c for c in (lm_config_class(),) if c is not None]
    add_config_arguments(parser, *classes)
    parser.add_argument("--config", metavar="FILE.yaml",
                        help=f"YAML settings under the flags (flags win), or a shipped recipe name (see "
                             f"--list-recipes); default for --task classify: {DEFAULT_RECIPE}")
    parser.add_argument("--list-recipes", action="store_true", help="list the shipped recipes and exit")
    parser.add_argument("--print-config", action="store_true", help="print the resolved settings as YAML and exit")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bars (default: on a terminal)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the files of an existing run in the output directory")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train", help="train with n:m masks (4:8-T dynamic by default) and a dense baseline",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_arguments(parser)
    parser.add_argument("--out", metavar="DIR", help="run directory (default: runs/train-<date>-<time>)")
    parser.add_argument("--resume", metavar="DIR",
                        help="continue the run in DIR from its last checkpoint (settings from its config.yaml; a "
                             "run without a checkpoint starts again)")
    parser.add_argument("--parallel", choices=PARALLEL_CHOICES, default=None,
                        help="data-parallel engine under torchrun: fsdp (FSDP2, the default of --task lm) or ddp "
                             "(--task classify runs ddp)")
    return parser


def print_recipes() -> None:
    from nmsparse.recipes.train.config import list_recipes, recipe_path

    for name in list_recipes():
        first = recipe_path(name).read_text().splitlines()[0].lstrip("# ").strip()
        print(f"{name:40s} {first}")


def resolve_task(args: argparse.Namespace, resume_dir: str | None = None) -> str:
    """The task of this command: ``--task``, else the one recorded in a resumed run, else ``classify``."""
    from nmsparse.recipes.train.rundir import RunDir

    recorded = RunDir.task_of(resume_dir) if resume_dir else None
    if recorded is not None and args.task is not None and recorded != args.task:
        raise CLIError(f"{resume_dir} is a --task {recorded} run; drop --task {args.task}")
    return args.task or recorded or "classify"


def classify_config(args: argparse.Namespace) -> Any:
    """TrainConfig of the flags: defaults < ``--config`` (or the default recipe) < flags given."""
    from nmsparse.recipes.train.config import DEFAULT_RECIPE, TrainConfig, read_config_file

    from ._flags import config_from_args

    values, where = read_config_file(args.config or DEFAULT_RECIPE)
    return config_from_args(TrainConfig, args, base=values, where=where, context="--task classify")


def lm_module() -> Any:
    """``nmsparse.recipes.lm``, imported when a command needs it."""
    try:
        import nmsparse.recipes.lm as lm
    except ImportError as exc:
        raise CLIError(f"--task lm needs nmsparse.recipes.lm, which cannot be imported here ({exc})") from None
    for name in ("LMTrainConfig", "run_lm_training"):
        if not hasattr(lm, name):
            raise CLIError(f"--task lm: nmsparse.recipes.lm has no {name} in this nmsparse version")
    return lm


def lm_config(args: argparse.Namespace, lm: Any, *, resume_dir: str | None = None) -> Any:
    """LMTrainConfig of the flags (or of a resumed run's config.yaml)."""
    from nmsparse.recipes.train.config import read_config_file

    from ._flags import config_from_args, explicit_overrides

    if resume_dir is not None:
        from nmsparse.recipes.lm.config import load_lm_config

        return load_lm_config(Path(resume_dir) / "config.yaml")
    given = explicit_overrides(args, lm.LMTrainConfig, context="--task lm")
    values, where = read_config_file(args.config) if args.config else ({}, "--task lm")
    config = config_from_args(lm.LMTrainConfig, args, base=values, where=where, context="--task lm")
    from nmsparse.recipes.lm.pretrained import settings_from_folder  # --model hf:FOLDER pruned by nmsparse oneshot

    return settings_from_folder(config, given=set(values) | set(given))


def _fmt_pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}%"


def print_summary(summary: Any, out_dir: Path) -> None:
    """Human-readable :class:`~nmsparse.recipes.train.summary.RunSummary`."""
    s = summary
    print(f"nmsparse train: {s.model} on {s.data_description}")
    if s.mode == "dense":
        print("  structure          dense")
    else:
        if s.mode == "dynamic":
            how = f"SR-STE, {s.refreshes} refreshes with {s.method}, initial masks {s.initial_method}"
        else:
            how = f"masks computed once with {s.initial_method}, then fixed"
        print(f"  structure          {s.pattern} {s.mode} ({how})")
    line = f"  test accuracy      {_fmt_pct(s.test_accuracy)}"
    if s.baseline_test_accuracy is not None:
        line += (f"   dense baseline {_fmt_pct(s.baseline_test_accuracy)}, gap {s.accuracy_gap:+.2f} points "
                 f"(dense - sparse)")
    print(line)
    if s.mode != "dense":
        valid = "yes" if s.mask_valid else "NO"
        dense = ", ".join(s.dense_layers) or "none"
        print(f"  masks valid        {valid}: {len(s.sparse_layers)} sparse layer(s) holding "
              f"{s.sparse_weight_fraction:.1%} of the weights, {s.mask_density:.1%} kept; dense: {dense}")
        for name, why in s.dense_layers.items():
            print(f"    left dense       {name}: {why}")
    if s.refresh_overhead is not None:
        print(f"  refresh overhead   {s.refresh_overhead:.1%} of training-step time ({s.refreshes} refreshes, "
              f"{s.refresh_seconds:.2f} s; kernel compile/load before training: {s.compile_seconds:.1f} s)")
    times = f"{s.wall_seconds:.1f} s (sparse {s.train_seconds:.1f} s of training"
    if s.baseline_train_seconds is not None:
        times += f", dense {s.baseline_train_seconds:.1f} s"
    session = ", this session of a resumed run" if s.resumed else ""
    print(f"  wall time          {times}; {s.world_size} process(es) on {s.device}, {s.threads} thread(s){session})")
    print(f"  outputs            {out_dir}/ (summary.json, metrics.jsonl, model.safetensors, curves.png, "
          f"config.yaml, checkpoint.safetensors)")


def _epoch_printer(total_epochs: int) -> Any:
    every = max(1, total_epochs // 5)

    def on_epoch_end(label: str, record: dict[str, Any]) -> None:
        if record["epoch"] % every == 0 or record["epoch"] == total_epochs:
            print(f"  [{label}] epoch {record['epoch']:>3}/{total_epochs}  loss {record['train_loss']:.4f}  "
                  f"test {record['test_accuracy']:.2f}%", flush=True)

    return on_epoch_end


def _check_resume_args(args: argparse.Namespace) -> None:
    from ._flags import given_flags

    given = sorted(given_flags(args)) + (["config"] if args.config else [])
    if given:
        raise CLIError(f"--resume takes every setting from {args.resume}/config.yaml; drop "
                       f"{', '.join('--' + k.replace('_', '-') for k in given)}")
    if args.out is not None and Path(args.out).resolve() != Path(args.resume).resolve():
        raise CLIError("--resume DIR continues in DIR; drop --out or pass the same directory")


def print_lm_summary(s: Any, out_dir: Path) -> None:
    """Human-readable ``LMRunSummary`` of :func:`nmsparse.recipes.lm.run_lm_training` (losses in nats/token)."""
    print(f"nmsparse train --task lm: {getattr(s, 'parameters', 0):,}-parameter decoder, structure {s.pattern}")
    line = f"  held-out loss      {s.heldout_loss:.4f} (perplexity {s.heldout_perplexity:.2f})"
    if getattr(s, "baseline_heldout_loss", None) is not None:
        line += (f"   dense baseline {s.baseline_heldout_loss:.4f} (perplexity {s.baseline_heldout_perplexity:.2f}), "
                 f"gap {s.loss_gap_percent:+.2f}%")
    print(line)
    if getattr(s, "mask_valid", None) is not None:
        print(f"  masks valid        {'yes' if s.mask_valid else 'NO'}: {len(s.sparse_layers)} sparse layer(s), "
              f"{s.mask_density:.1%} kept; {s.refreshes} refreshes ({s.refresh_seconds:.2f} s)")
    dense = f", dense {s.baseline_train_seconds:.1f} s" if getattr(s, "baseline_train_seconds", None) else ""
    world = getattr(s, "world_size", 1)
    procs = f", {world} processes ({s.parallel})" if world > 1 else ""
    print(f"  wall time          {s.wall_seconds:.1f} s (training {s.train_seconds:.1f} s{dense}); "
          f"{s.threads} thread(s) on {s.device}{procs}")
    print(f"  outputs            {out_dir}/")


def _run_lm(args: argparse.Namespace) -> int:
    from nmsparse.recipes.train.distributed import broadcast_object, init_distributed, shutdown_distributed

    from .._logging import progress_enabled

    lm = lm_module()
    resume = args.resume is not None
    config = None if resume else lm_config(args, lm)
    if args.print_config:
        import yaml

        shown = lm_config(args, lm, resume_dir=args.resume) if resume else config
        assert shown is not None
        print(yaml.safe_dump(shown.to_dict(), sort_keys=False), end="")
        return 0
    configure_runtime(getattr(config, "threads", None) if config is not None else None, None)
    out_dir = Path(args.resume or args.out or Path("runs") / time.strftime("train-lm-%Y%m%d-%H%M%S"))
    ctx = init_distributed(device=_lm_device(args, lm, config))
    completed = False
    try:
        out_dir = Path(broadcast_object(str(out_dir), ctx))
        progress = progress_enabled(args.progress) and ctx.is_main
        if ctx.enabled and ctx.is_main:
            print(f"nmsparse train --task lm: {'resuming' if resume else 'training'} on {ctx.world_size} processes "
                  f"({args.parallel or 'fsdp'}, {ctx.backend}) -> {out_dir}", flush=True)
        summary = lm.run_lm_training(config, out_dir, resume=resume, overwrite=args.overwrite, progress=progress,
                                     dist=ctx, parallel=args.parallel or "fsdp")
        if summary is not None and ctx.is_main:
            print_lm_summary(summary, out_dir)
        completed = True
    finally:
        shutdown_distributed(ctx, completed=completed)
    return 0


def _lm_device(args: argparse.Namespace, lm: Any, config: Any) -> str:
    """The device setting of an LM run (of a resumed run's config.yaml; ``auto`` when it cannot be read: the run
    itself then reports why)."""
    if config is not None:
        return str(config.device)
    try:
        return str(lm_config(args, lm, resume_dir=args.resume).device)
    except Exception:  # noqa: BLE001 - reported by the run with its own message
        return "auto"


def _check_parallel(args: argparse.Namespace) -> None:
    """``--parallel`` needs torchrun; ``--task classify`` runs DDP only."""
    if args.parallel is None:
        return
    if torchrun_world_size() <= 1:
        raise CLIError(f"--parallel {args.parallel} needs several processes: start the run with 'torchrun "
                       f"--nproc_per_node N -m nmsparse train ...' (WORLD_SIZE is unset or 1 here), or drop "
                       f"--parallel")


def run(args: argparse.Namespace) -> int:
    from nmsparse.recipes.train.config import config_to_yaml
    from nmsparse.recipes.train.distributed import broadcast_object, init_distributed, shutdown_distributed
    from nmsparse.recipes.train.trainer import prepare_run, resume_config, run_training

    from .._logging import progress_enabled

    if args.list_recipes:
        print_recipes()
        return 0
    if args.resume is not None:
        _check_resume_args(args)
    _check_parallel(args)
    if resolve_task(args, args.resume) == "lm":
        return _run_lm(args)
    if args.parallel == "fsdp":
        raise CLIError("--parallel fsdp: --task classify runs data-parallel with DDP only; drop --parallel or pass "
                       "--parallel ddp")
    if args.resume is not None:
        config = resume_config(args.resume, overwrite=args.overwrite)
        out_dir = Path(args.resume)
    else:
        config = classify_config(args)
        out_dir = Path(args.out) if args.out else Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")
    if args.print_config:
        print(config_to_yaml(config), end="")
        return 0
    prepare_run(config, out_dir, resume=args.resume is not None, overwrite=args.overwrite)  # refuse early
    threads = configure_runtime(config.threads, config.model)
    ctx = init_distributed(device=config.device)
    completed = False
    try:
        out_dir = Path(broadcast_object(str(out_dir), ctx))
        show_bar = progress_enabled(args.progress)
        callback = None if show_bar or not ctx.is_main else _epoch_printer(config.epochs)

        def on_start(trainer: Any) -> None:
            what = "dense" if config.mode == "dense" else f"{config.structure} {config.mode}"
            extra = " + dense baseline" if config.baseline and config.sparse else ""
            world = f" on {ctx.world_size} processes ({ctx.backend})" if ctx.enabled else ""
            verb = "resuming" if args.resume else "training"
            if trainer.run is not None and trainer.run.restarting:
                verb = "restarting (no checkpoint yet)"
            where = f"{trainer.device}" + (f", {threads} thread{'s' if threads > 1 else ''}"
                                           if trainer.device.type == "cpu" else "")
            print(f"nmsparse train: {verb} {config.model} {what}{extra}, {config.epochs} epochs{world} on "
                  f"{where} -> {out_dir}", flush=True)

        summary = run_training(config, out_dir, resume=args.resume is not None, overwrite=args.overwrite,
                               dist=ctx, progress=show_bar, on_epoch_end=callback, on_start=on_start)
        if ctx.is_main and summary is not None:
            print_summary(summary, out_dir)
        completed = True
    finally:
        shutdown_distributed(ctx, completed=completed)
    return 0
