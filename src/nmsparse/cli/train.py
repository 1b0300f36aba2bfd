"""``nmsparse train``: train a model with n:m masks (dynamic SR-STE or static fine-tuning) and a dense baseline.

One subcommand per task, each with its own flags (``nmsparse train classify -h``, ``nmsparse train lm -h``):

  classify  (the default) a model on images: with no arguments it runs the shipped recipe
            ``digits_cnn_4x8t_dynamic``, a small CNN on scikit-learn's 8x8 digits with 4:8-T dynamic masks from
            scratch, then the same model dense, and prints both test accuracies
  lm        the decoder language model of ``nmsparse.recipes.lm`` on text shipped with Python

Settings come from a recipe (``--config FILE.yaml`` or a shipped recipe name), then flags; every setting has a flag
(generated from the task's config fields). ``--task classify|lm`` (older command lines) is the same as the
subcommand. Under ``torchrun --nproc_per_node=N -m nmsparse train ...`` it runs data-parallel (gloo on CPU, nccl
on GPU): DDP for classify; FSDP2 (default) or DDP (--parallel ddp) for lm. The global batch is split over the
processes and rank 0 alone writes the run directory.

A run killed at any moment continues with ``--resume DIR`` (bit-identical to an uninterrupted run; the task comes
from DIR); one killed before its first checkpoint also restarts with the same ``--out DIR``. Files of another run
are never replaced without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ._runtime import configure_runtime
from .main import CLIError, torchrun_world_size

TASKS = ("classify", "lm")
PARALLEL_CHOICES = ("fsdp", "ddp")
#: What each task trains (the subcommands' help).
TASK_HELP = {
    "classify": "image classification (the default task): a CNN, MLP or ResNet on images",
    "lm": "the decoder language model of nmsparse.recipes.lm (held-out loss and perplexity)",
}


def lm_config_class() -> Any:
    """``nmsparse.recipes.lm.LMTrainConfig``, or ``None`` when that recipe is not installed."""
    try:
        from nmsparse.recipes.lm import LMTrainConfig
    except ImportError:
        return None
    return LMTrainConfig


def config_classes(task: str) -> tuple[Any, list[Any]]:
    """``(the task's config class, the other tasks' config classes)``."""
    from nmsparse.recipes.classify.config import TrainConfig

    lm = lm_config_class()
    if task == "lm":
        return lm, [TrainConfig]
    return TrainConfig, [c for c in (lm,) if c is not None]


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``nmsparse train lm: error: ...``), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


class TaskCommandParser(OneLineErrorParser):
    """A command with one subcommand per task (``nmsparse train classify|lm``).

    The task may also come as ``--task X`` anywhere on the line (older command lines); without either, it is the
    task recorded in the ``--resume DIR`` folder (:attr:`recorded_tasks` maps its ``run.json`` task to a
    subcommand), else :attr:`default_task`. ``-h`` alone shows the command, then the default task's flags.
    """

    default_task = TASKS[0]
    recorded_tasks: Mapping[str, str] = {}

    def parse_known_args(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        namespace: argparse.Namespace | None = None,
    ) -> tuple[argparse.Namespace, list[str]]:
        return super().parse_known_args(self._task_first(list(sys.argv[1:] if args is None else args)), namespace)

    def _task_first(self, args: list[str]) -> list[str]:
        explicit = args[0] if args and args[0] in TASKS else None
        rest = args[1:] if explicit else list(args)
        flagged = None
        for index, item in enumerate(rest):
            if item == "--":
                break
            if item == "--task" or item.startswith("--task="):
                value = item.partition("=")[2] if "=" in item else (rest[index + 1] if index + 1 < len(rest) else "")
                if value not in TASKS:
                    self.error(f"argument --task: invalid choice: {value!r} (choose from {', '.join(TASKS)})")
                flagged = value
                del rest[index : index + (1 if "=" in item else 2)]
                break
        if explicit and flagged and explicit != flagged:
            self.error(f"the task is {explicit} but --task says {flagged}; drop --task")
        task = explicit or flagged
        if task is None:
            if "-h" in rest or "--help" in rest:
                return rest
            task = self._recorded(rest) or self.default_task
        return [task, *rest]

    def _recorded(self, args: list[str]) -> str | None:
        for index, item in enumerate(args):
            folder = (
                item.partition("=")[2]
                if item.startswith("--resume=")
                else (args[index + 1] if item == "--resume" and index + 1 < len(args) else None)
            )
            if folder:
                from nmsparse.recipes.rundir import RunDir

                return self.recorded_tasks.get(RunDir.task_of(folder) or "")
        return None

    def format_help(self) -> str:
        text = super().format_help()
        default = self._task_parsers().get(self.default_task)
        if default is None:
            return text
        flags = default.format_help()
        flags = flags[flags.find("options:") :] if "options:" in flags else flags
        return (
            f"{text}\nflags of {self.prog} {self.default_task} (the default task; "
            f"'{self.prog} TASK -h' lists another task's):\n\n{flags}"
        )

    def _task_parsers(self) -> dict[str, argparse.ArgumentParser]:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}


def add_task_command(
    subparsers: Any,
    name: str,
    *,
    help: str,
    description: str | None,
    recorded_tasks: Mapping[str, str],
    add_arguments: Callable[[argparse.ArgumentParser, str], None],
) -> argparse.ArgumentParser:
    """``nmsparse NAME [classify|lm] ...``: a :class:`TaskCommandParser` whose task subcommands get their flags
    from ``add_arguments(parser, task)``."""
    previous = subparsers._parser_class
    subparsers._parser_class = TaskCommandParser
    try:
        parser = subparsers.add_parser(
            name, help=help, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
        )
    finally:
        subparsers._parser_class = previous
    parser.recorded_tasks = dict(recorded_tasks)
    parser.add_argument(
        "--task",
        choices=TASKS,
        default=argparse.SUPPRESS,
        help="the task as a flag, anywhere on the line (older command lines): the same as the subcommand",
    )
    tasks = parser.add_subparsers(dest="task", metavar="TASK", parser_class=OneLineErrorParser)
    for task in TASKS:
        sub = tasks.add_parser(
            task,
            help=TASK_HELP[task],
            description=f"{parser.prog} {task}: {TASK_HELP[task]}.",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_arguments(sub, task)
        sub.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks and debug logging"
        )
    return parser


def add_common_arguments(parser: argparse.ArgumentParser, task: str) -> None:
    """Flags of a task of ``train`` and ``compare``: its config fields (the other tasks' fields are accepted, left
    out of ``--help`` and refused by name), files, progress."""
    from nmsparse.recipes.classify.config import DEFAULT_RECIPE

    from ._flags import add_config_arguments

    own, others = config_classes(task)
    if own is None:  # the LM recipe cannot be imported here: its flags are the classify ones, refused when run
        own, others = others[0], []
    add_config_arguments(parser, own)
    for other in others:
        add_config_arguments(parser, other, hidden=True)
    default = f"; default: {DEFAULT_RECIPE}" if task == "classify" else ""
    parser.add_argument(
        "--config",
        metavar="FILE.yaml",
        help=f"YAML settings under the flags (flags win), or a shipped recipe name (see --list-recipes){default}",
    )
    parser.add_argument("--list-recipes", action="store_true", help="list the shipped recipes and exit")
    parser.add_argument("--print-config", action="store_true", help="print the resolved settings as YAML and exit")
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bars (default: on a terminal)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the files of an existing run in the output directory"
    )


def _add_train_arguments(parser: argparse.ArgumentParser, task: str) -> None:
    add_common_arguments(parser, task)
    stamp = "train-lm" if task == "lm" else "train"
    parser.add_argument("--out", metavar="DIR", help=f"run directory (default: runs/{stamp}-<date>-<time>)")
    parser.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR from its last checkpoint (settings from its config.yaml; a "
        "run without a checkpoint starts again)",
    )
    how = "fsdp (FSDP2, the default) or ddp" if task == "lm" else "ddp (the classify task runs DDP only)"
    parser.add_argument(
        "--parallel", choices=PARALLEL_CHOICES, default=None, help=f"data-parallel engine under torchrun: {how}"
    )


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    return add_task_command(
        subparsers,
        "train",
        help="train with n:m masks (4:8-T dynamic by default) and a dense baseline",
        description=__doc__,
        recorded_tasks={"classify": "classify", "lm": "lm"},
        add_arguments=_add_train_arguments,
    )


def print_recipes() -> None:
    from nmsparse.recipes._common import list_recipes, recipe_path

    for name in list_recipes():
        first = recipe_path(name).read_text().splitlines()[0].lstrip("# ").strip()
        print(f"{name:40s} {first}")


def resolve_task(args: argparse.Namespace, resume_dir: str | None = None) -> str:
    """The task of this command (the subcommand, ``--task``, else the one recorded in a resumed run, else
    ``classify``), which must be the resumed run's own.

    Raises:
        CLIError: a task other than the resumed run's.
    """
    from nmsparse.recipes.rundir import RunDir

    recorded = RunDir.task_of(resume_dir) if resume_dir else None
    task = getattr(args, "task", None)
    if recorded in TASKS and task is not None and recorded != task:
        raise CLIError(
            f"{resume_dir} is a run of the {recorded} task; resume it with nmsparse train {recorded} "
            f"--resume {resume_dir} (or without a task)"
        )
    return task or recorded or "classify"


def classify_config(args: argparse.Namespace) -> Any:
    """TrainConfig of the flags: defaults < ``--config`` (or the default recipe) < flags given."""
    from nmsparse.recipes.classify.config import DEFAULT_RECIPE, TrainConfig, read_config_file

    from ._flags import config_from_args

    values, where = read_config_file(args.config or DEFAULT_RECIPE)
    return config_from_args(TrainConfig, args, base=values, where=where, context="--task classify")


def lm_module() -> Any:
    """``nmsparse.recipes.lm``, imported when a command needs it."""
    try:
        import nmsparse.recipes.lm as lm
    except ImportError as exc:
        raise CLIError(f"the lm task needs nmsparse.recipes.lm, which cannot be imported here ({exc})") from None
    for name in ("LMTrainConfig", "run_lm_training"):
        if not hasattr(lm, name):
            raise CLIError(f"the lm task: nmsparse.recipes.lm has no {name} in this nmsparse version")
    return lm


def lm_config(args: argparse.Namespace, lm: Any, *, resume_dir: str | None = None) -> Any:
    """LMTrainConfig of the flags (or of a resumed run's config.yaml)."""
    from nmsparse.recipes._common import read_config_file

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
    """Human-readable :class:`~nmsparse.recipes.classify.summary.RunSummary`."""
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
        line += (
            f"   dense baseline {_fmt_pct(s.baseline_test_accuracy)}, gap {s.accuracy_gap:+.2f} points (dense - sparse)"
        )
    print(line)
    if s.mode != "dense":
        valid = "yes" if s.mask_valid else "NO"
        dense = ", ".join(s.dense_layers) or "none"
        print(
            f"  masks valid        {valid}: {len(s.sparse_layers)} sparse layer(s) holding "
            f"{s.sparse_weight_fraction:.1%} of the weights, {s.mask_density:.1%} kept; dense: {dense}"
        )
        for name, why in s.dense_layers.items():
            print(f"    left dense       {name}: {why}")
    if s.refresh_overhead is not None:
        print(
            f"  refresh overhead   {s.refresh_overhead:.1%} of training-step time ({s.refreshes} refreshes, "
            f"{s.refresh_seconds:.2f} s; kernel compile/load before training: {s.compile_seconds:.1f} s)"
        )
    times = f"{s.wall_seconds:.1f} s (sparse {s.train_seconds:.1f} s of training"
    if s.baseline_train_seconds is not None:
        times += f", dense {s.baseline_train_seconds:.1f} s"
    session = ", this session of a resumed run" if s.resumed else ""
    print(f"  wall time          {times}; {s.world_size} process(es) on {s.device}, {s.threads} thread(s){session})")
    print(
        f"  outputs            {out_dir}/ (summary.json, metrics.jsonl, model.safetensors, curves.png, "
        f"config.yaml, checkpoint.safetensors)"
    )


def _epoch_printer(total_epochs: int) -> Any:
    every = max(1, total_epochs // 5)

    def on_epoch_end(label: str, record: dict[str, Any]) -> None:
        if record["epoch"] % every == 0 or record["epoch"] == total_epochs:
            print(
                f"  [{label}] epoch {record['epoch']:>3}/{total_epochs}  loss {record['train_loss']:.4f}  "
                f"test {record['test_accuracy']:.2f}%",
                flush=True,
            )

    return on_epoch_end


def _check_resume_args(args: argparse.Namespace) -> None:
    from ._flags import given_flags

    given = sorted(given_flags(args)) + (["config"] if args.config else [])
    if given:
        raise CLIError(
            f"--resume takes every setting from {args.resume}/config.yaml; drop "
            f"{', '.join('--' + k.replace('_', '-') for k in given)}"
        )
    if args.out is not None and Path(args.out).resolve() != Path(args.resume).resolve():
        raise CLIError("--resume DIR continues in DIR; drop --out or pass the same directory")


def print_lm_summary(s: Any, out_dir: Path) -> None:
    """Human-readable ``LMRunSummary`` of :func:`nmsparse.recipes.lm.run_lm_training` (losses in nats/token)."""
    print(f"nmsparse train lm: {getattr(s, 'parameters', 0):,}-parameter decoder, structure {s.pattern}")
    line = f"  held-out loss      {s.heldout_loss:.4f} (perplexity {s.heldout_perplexity:.2f})"
    if getattr(s, "baseline_heldout_loss", None) is not None:
        line += (
            f"   dense baseline {s.baseline_heldout_loss:.4f} (perplexity {s.baseline_heldout_perplexity:.2f}), "
            f"gap {s.loss_gap_percent:+.2f}%"
        )
    print(line)
    if getattr(s, "mask_valid", None) is not None:
        print(
            f"  masks valid        {'yes' if s.mask_valid else 'NO'}: {len(s.sparse_layers)} sparse layer(s), "
            f"{s.mask_density:.1%} kept; {s.refreshes} refreshes ({s.refresh_seconds:.2f} s)"
        )
    dense = f", dense {s.baseline_train_seconds:.1f} s" if getattr(s, "baseline_train_seconds", None) else ""
    world = getattr(s, "world_size", 1)
    procs = f", {world} processes ({s.parallel})" if world > 1 else ""
    print(
        f"  wall time          {s.wall_seconds:.1f} s (training {s.train_seconds:.1f} s{dense}); "
        f"{s.threads} thread(s) on {s.device}{procs}"
    )
    print(f"  outputs            {out_dir}/")


def _run_lm(args: argparse.Namespace) -> int:
    from nmsparse.recipes.distributed import broadcast_object, init_distributed, shutdown_distributed

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
            print(
                f"nmsparse train lm: {'resuming' if resume else 'training'} on {ctx.world_size} processes "
                f"({args.parallel or 'fsdp'}, {ctx.backend}) -> {out_dir}",
                flush=True,
            )
        summary = lm.run_lm_training(
            config,
            out_dir,
            resume=resume,
            overwrite=args.overwrite,
            progress=progress,
            dist=ctx,
            parallel=args.parallel or "fsdp",
        )
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
    """``--parallel`` needs torchrun (the classify task runs DDP only)."""
    if args.parallel is None:
        return
    if torchrun_world_size() <= 1:
        raise CLIError(
            f"--parallel {args.parallel} needs several processes: start the run with 'torchrun "
            f"--nproc_per_node N -m nmsparse train ...' (WORLD_SIZE is unset or 1 here), or drop "
            f"--parallel"
        )


def run(args: argparse.Namespace) -> int:
    from nmsparse.recipes.classify.config import config_to_yaml
    from nmsparse.recipes.classify.trainer import prepare_run, resume_config, run_training
    from nmsparse.recipes.distributed import broadcast_object, init_distributed, shutdown_distributed

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
        raise CLIError(
            "--parallel fsdp: --task classify runs data-parallel with DDP only; drop --parallel or pass --parallel ddp"
        )
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
            where = f"{trainer.device}" + (
                f", {threads} thread{'s' if threads > 1 else ''}" if trainer.device.type == "cpu" else ""
            )
            print(
                f"nmsparse train: {verb} {config.model} {what}{extra}, {config.epochs} epochs{world} on "
                f"{where} -> {out_dir}",
                flush=True,
            )

        summary = run_training(
            config,
            out_dir,
            resume=args.resume is not None,
            overwrite=args.overwrite,
            dist=ctx,
            progress=show_bar,
            on_epoch_end=callback,
            on_start=on_start,
        )
        if ctx.is_main and summary is not None:
            print_summary(summary, out_dir)
        completed = True
    finally:
        shutdown_distributed(ctx, completed=completed)
    return 0
