"""``nmsparse train``: train a model with n:m masks (dynamic SR-STE or static fine-tuning) and a dense baseline.

With no arguments it trains the built-in default: a small CNN on scikit-learn's 8x8 digits with 4:8-T dynamic
masks from scratch, then the same model dense, and prints both test accuracies. Settings come from defaults,
then ``--config FILE.yaml`` (or a shipped recipe name), then flags. Under
``torchrun --nproc_per_node=N -m nmsparse train ...`` it runs data-parallel (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from .main import CLIError

# Flag dest -> TrainConfig key, for every flag that sets a config value.
_CONFIG_FLAGS = {
    "data": "data", "test_fraction": "test_fraction", "image_size": "image_size", "num_classes": "num_classes",
    "augment": "augment", "num_workers": "num_workers", "model": "model", "width": "width", "mode": "mode",
    "pattern": "pattern", "method": "method", "initial_method": "initial_method", "refresh_every": "refresh_every",
    "decay": "decay", "include": "include", "exclude": "exclude", "keep_first_last": "keep_first_last",
    "init": "init", "epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "momentum": "momentum",
    "weight_decay": "weight_decay", "label_smoothing": "label_smoothing", "schedule": "schedule", "warmup_epochs": "warmup_epochs",
    "steps_per_epoch": "steps_per_epoch", "seed": "seed", "baseline": "baseline", "device": "device",
    "threads": "threads",
}

#: Models small enough that one CPU thread is fastest (see ``TrainConfig.threads``).
_SMALL_MODELS = ("cnn", "mlp")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by ``train`` and ``compare`` (all default to "not given", so YAML values survive)."""
    data = parser.add_argument_group("data and model")
    data.add_argument("--data", help="'digits' (built in, default), 'fake' (synthetic), or a folder: CIFAR-10 "
                                     "(python format), train/ + val/ class folders, or class folders")
    data.add_argument("--test-fraction", type=float, help="held-out fraction for data without a test split (0.4)")
    data.add_argument("--image-size", type=int, help="image side for image folders and fake data")
    data.add_argument("--num-classes", type=int, help="classes of fake data (10)")
    data.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                      help="augment training images (default: on)")
    data.add_argument("--num-workers", type=int, help="DataLoader worker processes (0)")
    data.add_argument("--model", help="cnn (default), mlp, resnet18, resnet34, resnet50")
    data.add_argument("--width", type=int, help="channels of the cnn / hidden width of the mlp (32)")
    sparse = parser.add_argument_group("sparsity")
    sparse.add_argument("--pattern", help="'4:8-T' (default), '2:4', '2:4-T', ... or 'unstructured'")
    sparse.add_argument("--mode", choices=("dynamic", "static", "dense"),
                        help="dynamic: masks follow the weights (SR-STE, default); static: masks fixed from "
                             "--init; dense: no masks")
    sparse.add_argument("--method", help="mask method of refreshes (greedy)")
    sparse.add_argument("--initial-method", help="mask method of the initial/static masks (exact)")
    sparse.add_argument("--refresh-every", type=int, help="steps between mask refreshes (40)")
    sparse.add_argument("--decay", type=float, help="SR-STE decay of pruned weights (2e-4)")
    sparse.add_argument("--include", nargs="+", metavar="GLOB", help="prune only layers matching these globs")
    sparse.add_argument("--exclude", nargs="+", metavar="GLOB", help="keep layers matching these globs dense")
    sparse.add_argument("--keep-first-last", action=argparse.BooleanOptionalAction, default=None,
                        help="keep the first and last layer dense")
    sparse.add_argument("--init", metavar="CHECKPOINT",
                        help="start from this checkpoint (a run's model.safetensors); required by --mode static")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, help="epochs (40)")
    optim.add_argument("--batch-size", type=int, help="global batch size (64)")
    optim.add_argument("--lr", type=float, help="peak learning rate (0.1)")
    optim.add_argument("--momentum", type=float, help="SGD momentum (0.9)")
    optim.add_argument("--weight-decay", type=float, help="weight decay (5e-4)")
    optim.add_argument("--label-smoothing", type=float, help="label smoothing of the loss (0.1)")
    optim.add_argument("--schedule", choices=("cosine", "step", "constant"), help="learning-rate schedule")
    optim.add_argument("--warmup-epochs", type=float, help="linear warm-up epochs (2)")
    optim.add_argument("--steps-per-epoch", type=int, help="cap on training batches per epoch (quick looks)")
    optim.add_argument("--seed", type=int, help="seed of weights, data order and augmentation (0)")
    optim.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    optim.add_argument("--threads", type=int,
                       help="CPU threads for torch (default: 1 for cnn/mlp, torch's default otherwise)")
    parser.add_argument("--config", metavar="FILE.yaml",
                        help="YAML settings under the flags (flags win); or a shipped recipe name, see "
                             "--list-recipes")
    parser.add_argument("--list-recipes", action="store_true", help="list the shipped recipes and exit")
    parser.add_argument("--print-config", action="store_true", help="print the resolved settings as YAML and exit")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bars (default: on a terminal)")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train", help="train with n:m masks (4:8-T dynamic by default) and a dense baseline",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=None,
                        help="also train the model dense with the same seed (default: on)")
    parser.add_argument("--out", metavar="DIR", help="run directory (default: runs/train-<date>-<time>)")
    parser.add_argument("--resume", metavar="DIR",
                        help="continue the interrupted run in DIR from its last checkpoint (settings from its "
                             "config.yaml)")
    return parser


def configure_runtime(config: Any) -> int:
    """Apply the run's CPU thread count to torch and keep numba's solver threads from spinning; returns threads.

    numba's default OpenMP threading layer (used by the compiled mask solvers) shares the OpenMP runtime with
    torch: a solver call resets torch's thread count (1 -> 2 here) and leaves worker threads that compete with
    torch's. On a busy 2-core machine a dynamic-sparse epoch of the digits CNN took 7x longer after the first
    mask computation. The ``workqueue`` layer has neither effect; a ``NUMBA_THREADING_LAYER`` set by the user
    is respected. Only effective before the first solver call, hence done here, first thing.
    """
    import os

    import torch

    os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")
    threads = config.threads
    if threads is None and config.model in _SMALL_MODELS:
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config values given on the command line (flags left out are absent)."""
    return {key: getattr(args, dest) for dest, key in _CONFIG_FLAGS.items()
            if getattr(args, dest, None) is not None}


def print_recipes() -> None:
    from nmsparse.recipes.train.config import list_recipes, recipe_path

    for name in list_recipes():
        first = recipe_path(name).read_text().splitlines()[0].lstrip("# ").strip()
        print(f"{name:40s} {first}")


def _fmt_pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}%"


def print_summary(summary: dict[str, Any], out_dir: Path) -> None:
    """Human-readable summary of :func:`nmsparse.recipes.train.run_training`'s result."""
    structure = summary["pattern"]
    mode = summary["mode"]
    print(f"nmsparse train: {summary['model']} on {summary['data_description']}")
    if mode == "dense":
        print("  structure          dense")
    else:
        if mode == "dynamic":
            how = (f"SR-STE, {summary['refreshes']} refreshes with {summary['method']}, initial masks "
                   f"{summary['initial_method']}")
        else:
            how = f"masks computed once with {summary['initial_method']}, then fixed"
        print(f"  structure          {structure} {mode} ({how})")
    line = f"  test accuracy      {_fmt_pct(summary['test_accuracy'])}"
    if summary.get("baseline_test_accuracy") is not None:
        line += (f"   dense baseline {_fmt_pct(summary['baseline_test_accuracy'])}, gap "
                 f"{summary['accuracy_gap']:+.2f} points (dense - sparse)")
    print(line)
    if mode != "dense":
        valid = "yes" if summary["mask_valid"] else "NO"
        dense = ", ".join(summary["dense_layers"]) or "none"
        print(f"  masks valid        {valid}: {len(summary['sparse_layers'])} sparse layer(s) holding "
              f"{summary['sparse_weight_fraction']:.1%} of the weights, {summary['mask_density']:.1%} kept; "
              f"dense: {dense}")
    if summary.get("refresh_overhead") is not None:
        print(f"  refresh overhead   {summary['refresh_overhead']:.1%} of training-step time "
              f"({summary['refreshes']} refreshes, {summary['refresh_seconds']:.2f} s)")
    times = f"{summary['wall_seconds']:.1f} s (sparse {summary['train_seconds']:.1f} s of training"
    if summary.get("baseline_train_seconds") is not None:
        times += f", dense {summary['baseline_train_seconds']:.1f} s"
    session = ", this session of a resumed run" if summary.get("resumed") else ""
    print(f"  wall time          {times}; {summary['world_size']} process(es) on {summary['device']}{session})")
    print(f"  outputs            {out_dir}/ (summary.json, metrics.jsonl, model.safetensors, curves.png, "
          f"config.yaml)")


def _epoch_printer(total_epochs: int) -> Any:
    every = max(1, total_epochs // 5)

    def on_epoch_end(label: str, record: dict[str, Any]) -> None:
        if record["epoch"] % every == 0 or record["epoch"] == total_epochs:
            print(f"  [{label}] epoch {record['epoch']:>3}/{total_epochs}  loss {record['train_loss']:.4f}  "
                  f"test {record['test_accuracy']:.2f}%", flush=True)

    return on_epoch_end


def run(args: argparse.Namespace) -> int:
    from .._logging import progress_enabled
    from nmsparse.recipes.train.config import config_to_yaml, load_config
    from nmsparse.recipes.train.distributed import broadcast_object, init_distributed, shutdown_distributed
    from nmsparse.recipes.train.trainer import CONFIG_FILE, STATE_FILE, resume_config, run_training

    if args.list_recipes:
        print_recipes()
        return 0
    overrides = config_overrides(args)
    if args.resume is not None:
        given = sorted(overrides) + (["config"] if args.config else [])
        if given:
            raise CLIError(
                f"--resume takes every setting from {args.resume}/config.yaml; drop "
                f"{', '.join('--' + k.replace('_', '-') for k in given)}"
            )
        if args.out is not None and Path(args.out).resolve() != Path(args.resume).resolve():
            raise CLIError("--resume DIR continues in DIR; drop --out or pass the same directory")
        config = resume_config(args.resume)
        out_dir = Path(args.resume)
    else:
        config = load_config(args.config, **overrides)
        out_dir = Path(args.out) if args.out else Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")
    if args.print_config:
        print(config_to_yaml(config), end="")
        return 0
    threads = configure_runtime(config)
    ctx = init_distributed(device=config.device)
    try:
        out_dir = Path(broadcast_object(str(out_dir), ctx))
        if args.resume is None and ((out_dir / STATE_FILE).exists() or (out_dir / CONFIG_FILE).exists()):
            raise CLIError(f"{out_dir} already holds a run; continue it with --resume {out_dir} or pick another --out")
        show_bar = progress_enabled(args.progress)
        callback = None if show_bar or not ctx.is_main else _epoch_printer(config.epochs)

        def on_start(trainer: Any) -> None:
            what = "dense" if config.mode == "dense" else f"{config.structure} {config.mode}"
            extra = " + dense baseline" if config.baseline and config.sparse else ""
            world = f" on {ctx.world_size} processes ({ctx.backend})" if ctx.enabled else ""
            verb = "resuming" if args.resume else "training"
            where = f"{trainer.device}" + (f", {threads} thread{'s' if threads > 1 else ''}"
                                           if trainer.device.type == "cpu" else "")
            print(f"nmsparse train: {verb} {config.model} {what}{extra}, {config.epochs} epochs{world} on "
                  f"{where} -> {out_dir}", flush=True)

        summary = run_training(config, out_dir, resume=args.resume is not None, dist=ctx, progress=show_bar,
                               on_epoch_end=callback, on_start=on_start)
        if ctx.is_main and summary is not None:
            print_summary(summary, out_dir)
    finally:
        shutdown_distributed(ctx)
    return 0
