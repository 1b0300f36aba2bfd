"""The run loop both training recipes plug into, written once.

- a run: :func:`resolve_device`, :func:`seed_everything`, :func:`warmup_cosine_lr`, :func:`open_run` (the run
  directory, new or resumed) with :func:`check_same_settings`, :func:`accelerate_layers` (``--accelerate``);
- a trainer: :class:`RecipeTrainer` (train a stretch, evaluate, record, checkpoint, report; the counters a
  checkpoint restores), :func:`progress_bar`, :func:`check_finite_loss`, :class:`FitResult` (what every ``fit``
  returns);
- the end: :class:`JSONRecord` (``summary.json``), :func:`finish_run` (curves and summary);
- a structure comparison: :func:`open_comparison`, :func:`start_comparison`, :func:`train_structures`,
  :func:`diversity_column`, :func:`write_comparison`.

A task brings its data, model, optimizer, step and evaluation: :mod:`nmsparse.recipes.classify` (images, epochs,
SGD) and :mod:`nmsparse.recipes.lm` (a decoder, steps, AdamW). What each checkpoint holds is the task's; where it
goes, how it is written atomically and verified on resume is :mod:`nmsparse.recipes.rundir`'s.
"""

from __future__ import annotations

import dataclasses
import difflib
import glob
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import nn

from nmsparse._logging import logger, progress_enabled
from nmsparse.errors import ConfigError, InputError
from nmsparse.prune import DynamicSparsifier

from ._common import (
    COMPARE_JSON,
    COMPARE_PLAN,
    COMPARE_PLOT,
    DENSE,
    UNSTRUCTURED,
    RunCallback,
    check_compare_plan,
    write_compare_plan,
)
from .distributed import DistContext, main_first
from .rundir import RunDir
from .unstructured import UnstructuredSparsifier

__all__ = [
    "resolve_device",
    "seed_everything",
    "warmup_cosine_lr",
    "keep_threads",
    "open_run",
    "check_same_settings",
    "accelerate_layers",
    "progress_bar",
    "refresh_fields",
    "check_finite_loss",
    "RecipeTrainer",
    "FitResult",
    "JSONRecord",
    "finish_run",
    "open_comparison",
    "diversity_column",
    "start_comparison",
    "train_structures",
    "write_comparison",
    "BASELINE_DIR",
    "PLOT_FILE",
]

#: Sub-folder of the dense baseline in a run directory.
BASELINE_DIR = "baseline"
#: The training curves of a finished run.
PLOT_FILE = "curves.png"

_R = TypeVar("_R", bound="JSONRecord")


def resolve_device(setting: str, dist: DistContext | None = None) -> torch.device:
    """The device of a run's ``device`` setting (``auto``, ``cpu``, ``cuda`` or ``cuda:N``).

    ``auto`` is CUDA when there is one; an unindexed CUDA device is this process's GPU (``LOCAL_RANK`` under
    ``torchrun``, else the current one).

    Raises:
        ConfigError: CUDA asked for where there is none.
    """
    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {setting!r} requested but CUDA is not available here; use --device cpu or auto")
    if setting.startswith("cuda:"):
        return torch.device(setting)
    dist = dist or DistContext()
    return torch.device("cuda", dist.local_rank if dist.enabled else torch.cuda.current_device())


def seed_everything(seed: int) -> None:
    """Seed torch's, NumPy's global and Python's ``random`` generators."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def warmup_cosine_lr(step: int, *, peak: float, warmup: int, decay_steps: int, floor: float = 0.0) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up over ``warmup`` steps to ``peak``, then
    a cosine from ``peak`` to ``floor * peak`` over ``decay_steps`` steps (held there afterwards).

    Example:
        >>> warmup_cosine_lr(0, peak=1.0, warmup=4, decay_steps=10), warmup_cosine_lr(9, peak=1.0, warmup=4,
        ...                                                                          decay_steps=10)
        (0.25, 0.5)
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, decay_steps))
    return peak * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def keep_threads(threads: int) -> None:
    """Set torch's CPU thread count back to ``threads`` (numba's OpenMP layer may reset it when masks are solved)."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------- run directory


def open_run(
    out: str | os.PathLike[str] | None,
    *,
    task: str,
    outputs: Iterable[str] = (),
    sections: Iterable[str] = (),
    resume: bool = False,
    overwrite: bool = False,
    dist: DistContext | None = None,
    what: str = "run",
) -> RunDir | None:
    """The run directory of a job, checked and not written to: :meth:`RunDir.open_resume` with ``resume`` (rank 0
    first under ``torchrun``: it reconciles files), else :meth:`RunDir.prepare`; ``None`` when ``out`` is.

    Raises:
        ConfigError: ``resume`` without a directory.
        OverwriteError / InputError / CheckpointError: see :class:`RunDir`.
    """
    kwargs: dict[str, Any] = {
        "task": task,
        "outputs": tuple(outputs),
        "sections": tuple(sections),
        "overwrite": overwrite,
    }
    if resume:
        if out is None:
            raise ConfigError(f"{what}: resume needs the run directory (out)")
        path = Path(out)
        return main_first(lambda: RunDir.open_resume(path, **kwargs), dist or DistContext())
    return None if out is None else RunDir.prepare(Path(out), **kwargs)


def check_same_settings(
    given: Mapping[str, Any],
    saved: Mapping[str, Any],
    *,
    where: str | os.PathLike[str],
    what: str = "resume",
    owner: str = "run",
) -> None:
    """Refuse to resume with settings (``to_dict()``) other than those the run recorded.

    Raises:
        ConfigError: naming the settings that differ.
    """
    diff = sorted(k for k, v in given.items() if saved.get(k) != v) + sorted(k for k in saved if k not in given)
    if diff:
        raise ConfigError(f"{what}: settings differ from the {owner}'s {where} ({diff}); resume without overrides")


# ----------------------------------------------------------------------------------------------- accelerate


def accelerate_layers(
    model: nn.Module,
    pattern: str | None,
    *,
    tokens: int,
    layers: Sequence[str],
    dense_layers: Mapping[str, str] | None = None,
    label: str = "",
    log: bool = True,
) -> dict[str, Any]:
    """``--accelerate``: :func:`nmsparse.accelerate_` on the pruned Linear layers of ``model``; the report as a dict.

    Only ``layers`` (the layers this run pruned) are considered, with their own masks; every other Linear layer is
    reported "not pruned by this run" and left alone (``accelerate_`` would otherwise give it a new mask).
    ``pattern=None`` (a dense run) or ``"unstructured"`` accelerates nothing and records why.

    Args:
        model: the model, masks attached, on its device; modified in place (call before DDP and the optimizer).
        pattern: the run's n:m pattern, ``"unstructured"``, or ``None`` for a dense run.
        tokens: rows of each Linear layer's 2-D input per step on this rank (batch, or batch x sequence).
        layers: pruned layer names.
        dense_layers: layers left dense -> why (used in their reasons).
        label: the run's name (``"dense baseline"``, ...) for reasons and the log line.
        log: log the report's :meth:`~nmsparse.accelerate.AccelerationReport.describe`.

    Returns:
        ``AccelerationReport.to_dict()``, or ``{"pattern": ..., "reason": ..., "layers": {}}`` when nothing was
        considered.
    """
    from nmsparse.accelerate import LayerDecision, accelerate_

    if pattern is None or pattern == UNSTRUCTURED:
        reason = (
            f"{label or 'dense run'}: not accelerated"
            if pattern is None
            else f"{label or pattern}: not accelerated (unstructured masks; only 2:4-T runs on sparse tensor cores)"
        )
        if log:
            logger.info("%s", reason)
        return {"pattern": pattern, "reason": reason, "layers": {}}
    linears = {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    names = [name for name in layers if name in linears]
    report = accelerate_(
        model,
        pattern=pattern,
        tokens=tokens,
        include=[glob.escape(n) for n in names],
        cache_file=True,
        progress=False,
    )
    ordered = {}
    for name, module in linears.items():  # model order, every Linear layer named
        if name in report.layers:
            ordered[name] = report.layers[name]
            continue
        why = (dense_layers or {}).get(name)
        ordered[name] = LayerDecision(
            name,
            int(module.out_features),
            int(module.in_features),
            None,
            str(module.weight.dtype).replace("torch.", ""),
            None,
            False,
            False,
            "not pruned by this run" + (f" ({why})" if why else ""),
        )
    report.layers = ordered
    if log:
        logger.info("%s%s", f"{label}: " if label else "", report.describe())
    return report.to_dict()


# ------------------------------------------------------------------------------------------------- the loop


def progress_bar(progress: bool | None, *, total: int, desc: str, initial: int = 0, show: bool = True) -> Any:
    """A tqdm bar on stderr in steps, or ``None`` (``progress`` false, not a terminal, or not ``show``: other
    ranks than 0)."""
    if not (show and progress_enabled(progress)):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", leave=False, dynamic_ncols=True)


def training_sparsifier(
    model: nn.Module,
    pattern: str,
    config: Any,
    *,
    dynamic: bool,
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
) -> DynamicSparsifier | UnstructuredSparsifier | None:
    """The sparsifier a recipe trains ``model`` with, from its settings (``config``: ``method``,
    ``initial_method``, ``refresh_every``, ``decay``, ``keep_first_last``): 50% unstructured magnitude masks
    (re-chosen every ``refresh_every`` steps when ``dynamic``), or for an n:m pattern with ``dynamic``, masks that
    follow the weights (SR-STE). ``None`` for a static n:m pattern: the recipe attaches those masks itself."""
    common: dict[str, Any] = dict(include=include, exclude=exclude, keep_first_last=config.keep_first_last)
    schedule = dict(refresh_every=config.refresh_every, decay=config.decay)
    if pattern == UNSTRUCTURED:
        return UnstructuredSparsifier(model, density=0.5, dynamic=dynamic, **schedule, **common)
    if not dynamic:
        return None
    return DynamicSparsifier(
        model, pattern, method=config.method, initial_method=config.initial_method, **schedule, **common
    )


def refresh_fields(sparsifier: Any) -> dict[str, Any]:
    """What a metrics record says about mask refreshes (nothing for a dense run)."""
    if sparsifier is None:
        return {}
    return {"refreshes": sparsifier.refreshes, "mask_changed": sparsifier.last_changed}


def check_finite_loss(value: float, *, label: str, when: str, lr: float) -> None:
    """Stop a run whose training loss diverged, with the fix.

    Raises:
        ConfigError: ``value`` is not finite.
    """
    if not math.isfinite(value):
        raise ConfigError(f"{label}: training loss became {value} {when}; lower the learning rate (--lr, now {lr:g})")


class RecipeTrainer:
    """The loop a recipe's trainer runs: train a stretch (an epoch, an evaluation interval), evaluate, record,
    checkpoint, report; the counters a checkpoint restores.

    A subclass sets ``run``, ``section``, ``dist``, ``label`` and ``sparsifier`` (``None`` for dense), calls
    :meth:`_start_loop` in ``__init__`` and implements :meth:`_save`; its ``fit`` calls :meth:`_loop`.
    """

    run: RunDir | None
    section: str
    dist: DistContext
    label: str
    sparsifier: Any

    def _start_loop(self) -> None:
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.train_seconds = 0.0
        self.wall_seconds = 0.0

    def _save(self) -> None:
        """Write this trainer's checkpoint (and ``metrics.jsonl``) into its section of :attr:`run`."""
        raise NotImplementedError

    def _loop(
        self,
        bar: Any,
        *,
        more: Callable[[], bool],
        stretch: Callable[[Any], tuple[dict[str, Any], float]],
        callback: Callable[[str, dict[str, Any]], None] | None,
    ) -> None:
        """While ``more()``: ``stretch(bar)`` trains and evaluates, returning its metrics record and training
        seconds; the record gets the refresh counters and joins :attr:`history`, a checkpoint follows, then
        ``callback(label, record)`` on rank 0. Closes ``bar``."""
        try:
            while more():
                start = time.perf_counter()
                record, seconds = stretch(bar)
                self.train_seconds += seconds
                record.update(refresh_fields(self.sparsifier))
                self.history.append(record)
                self.wall_seconds += time.perf_counter() - start
                self._save()
                if callback is not None and self.dist.is_main:
                    callback(self.label, record)
        finally:
            if bar is not None:
                bar.close()

    def _loop_state(self) -> dict[str, float]:
        """The loop's times, for a checkpoint's state."""
        return {"train_seconds": self.train_seconds, "wall_seconds": self.wall_seconds}

    def _restore_loop(self, state: Mapping[str, Any], history: Sequence[Mapping[str, Any]]) -> None:
        """The counters of a checkpoint's ``state`` and its metrics ``history``."""
        self.step = int(state["step"])
        self.history = [dict(record) for record in history]
        self.train_seconds = float(state["train_seconds"])
        self.wall_seconds = float(state["wall_seconds"])


@dataclass(kw_only=True)
class FitResult:
    """What every trainer's ``fit`` reports (each task adds its metrics).

    Attributes:
        structure: ``"dense"``, an n:m pattern or ``"unstructured"``.
        completed: the whole schedule is done (``False`` when stopped early).
        history: one record per evaluation (what ``metrics.jsonl`` holds).
        mask_valid / mask_density: masks obey the structure / fraction of the sparse layers' weights kept
            (``None`` for dense).
        sparse_layers: masked layers.
        refreshes / refresh_seconds: mask refreshes and their time.
        train_seconds: training-loop time (evaluation and checkpoints excluded), over resumed sessions too.
        wall_seconds: time in training, evaluation and checkpoints, over resumed sessions too.
        acceleration: with ``accelerate``: the ``nmsparse.accelerate_`` report (``AccelerationReport.to_dict()``,
            or a ``reason`` when nothing was considered).
    """

    structure: str
    completed: bool
    history: list[dict[str, Any]]
    mask_valid: bool | None = None
    mask_density: float | None = None
    sparse_layers: list[str] = field(default_factory=list)
    refreshes: int = 0
    refresh_seconds: float = 0.0
    train_seconds: float = 0.0
    wall_seconds: float = 0.0
    acceleration: dict[str, Any] | None = None


class JSONRecord:
    """``to_dict`` / ``from_dict`` of a flat dataclass kept as JSON (``summary.json``), with an optional
    ``version`` key (:attr:`VERSION`)."""

    VERSION: ClassVar[int | None] = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (what ``summary.json`` holds)."""
        values = dataclasses.asdict(self)  # type: ignore[call-overload]
        return values if self.VERSION is None else {"version": self.VERSION, **values}

    @classmethod
    def from_dict(cls: type[_R], values: Mapping[str, Any]) -> _R:
        """Read :meth:`to_dict`'s output.

        Raises:
            InputError: unknown or missing keys, or another version.
        """
        values = dict(values)
        if cls.VERSION is not None:
            version = values.pop("version", None)
            if version != cls.VERSION:
                raise InputError(f"summary: version {version!r} is not {cls.VERSION} (written by another nmsparse)")
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        names = [f.name for f in fields]
        unknown = [k for k in values if k not in names]
        if unknown:
            close = difflib.get_close_matches(unknown[0], names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InputError(f"summary: unknown key {unknown[0]!r}{hint}")
        required = [
            f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [k for k in required if k not in values]
        if missing:
            raise InputError(f"summary: missing keys {missing}")
        return cls(**values)


# -------------------------------------------------------------------------------------------------- the end


def finish_run(
    run: RunDir | None,
    dist: DistContext,
    *,
    summary: JSONRecord,
    curves: Mapping[str, Sequence[Mapping[str, Any]]],
    plot: Callable[..., Any],
    title: str,
) -> None:
    """Rank 0 writes a finished run's curves (``plot(curves, path, title=...)`` to :data:`PLOT_FILE`) and its
    ``summary.json``."""
    if run is None or not dist.is_main:
        return
    plot(curves, run.path / PLOT_FILE, title=title)
    run.write_summary(summary.to_dict())


# ---------------------------------------------------------------------------------------------- comparisons


def open_comparison(
    out: str | os.PathLike[str] | None,
    *,
    task: str,
    sections: Iterable[str],
    names: Sequence[str],
    seeds: Sequence[int],
    reference_numel: int,
    outputs: Iterable[str] = (),
    resume: bool = False,
    overwrite: bool = False,
) -> RunDir | None:
    """The directory of a structure comparison (:func:`open_run`: ``compare.json``, ``compare.png``, ``outputs``
    and ``compare_plan.json``); resuming, it must have been started with ``names``, ``seeds`` and
    ``reference_numel`` (its plan).

    Raises:
        ConfigError: a resumed comparison of other structures, seeds or reference size.
    """
    run = open_run(
        out,
        task=task,
        outputs=(COMPARE_JSON, COMPARE_PLOT, *outputs, COMPARE_PLAN),
        sections=sections,
        resume=resume,
        overwrite=overwrite,
        what="compare",
    )
    if resume and run is not None:
        check_compare_plan(run.path, names, seeds, reference_numel)
    return run


def start_comparison(
    run: RunDir | None,
    *,
    config_text: str,
    digest: str,
    names: Sequence[str],
    seeds: Sequence[int],
    reference_numel: int,
) -> None:
    """Write a new comparison's marker, settings and plan (what ``--resume`` reads)."""
    if run is None:
        return
    run.create(config_text=config_text, config_hash=digest)
    write_compare_plan(run.path, names, seeds, reference_numel)


def train_structures(
    names: Sequence[str],
    seeds: Sequence[int],
    train: Callable[[str, int], Mapping[str, Any]],
    *,
    on_run_end: RunCallback | None = None,
    show: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """``train(structure, seed)`` for every seed, then every structure; its records by structure.

    Each record is ``structure``, ``seed``, what ``train`` returned and ``seconds``; ``on_run_end(record)`` follows
    each run (where ``show``: rank 0).
    """
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for seed in seeds:
        for name in names:
            start = time.perf_counter()
            record: dict[str, Any] = {"structure": name, "seed": seed, **train(name, seed)}
            record["seconds"] = time.perf_counter() - start
            runs[name].append(record)
            if on_run_end is not None and show:
                on_run_end(record)
    return runs


def diversity_column(names: Sequence[str], reference_numel: int) -> dict[str, float | None]:
    """``log10`` exact mask diversity of each structure for a tensor of ``reference_numel`` weights (``None`` for
    dense)."""
    from nmsparse.diversity import log10_mask_diversity

    column: dict[str, float | None] = {DENSE: None}
    for name in names:
        if name != DENSE:
            column[name] = log10_mask_diversity(name, reference_numel)
    return column


def write_comparison(
    run: RunDir | None,
    dist: DistContext,
    *,
    payload: Mapping[str, Any],
    plot: Callable[..., Any],
    reference_numel: int,
    title: str,
) -> None:
    """Rank 0 writes ``compare.json`` (``payload``) and ``compare.png`` (``plot(payload["rows"], path, ...)``)."""
    if run is None or not dist.is_main:
        return
    run.write_text(COMPARE_JSON, json.dumps(dict(payload), indent=2) + "\n")
    plot(payload["rows"], run.path / COMPARE_PLOT, reference_numel=reference_numel, title=title)
