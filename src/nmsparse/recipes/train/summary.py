"""Typed results of training runs: :class:`TrainerResult` (one trainer) and :class:`RunSummary` (``summary.json``).

``summary.json`` keeps its flat layout (the keys scripts read); :meth:`RunSummary.to_dict` writes it and
:meth:`RunSummary.from_dict` reads it back, refusing unknown keys.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nmsparse.errors import InputError

__all__ = ["TrainerResult", "RunSummary", "SUMMARY_VERSION"]

#: Version of ``summary.json``'s layout.
SUMMARY_VERSION = 2


@dataclass
class TrainerResult:
    """Outcome of :meth:`~nmsparse.recipes.train.trainer.Trainer.fit` (accuracies in percent).

    Attributes:
        structure: ``"dense"``, an n:m pattern or ``"unstructured"``.
        mode: ``"dense"``, ``"dynamic"`` or ``"static"``.
        completed: all epochs done (``False`` when stopped early with ``stop_after_epoch``).
        epoch: epochs done.
        test_accuracy / test_loss: after the last epoch done.
        history: one record per epoch (what ``metrics.jsonl`` holds).
        mask_valid: every mask obeys the structure (``None`` for dense runs).
        mask_density: fraction of the sparse layers' weights kept (``None`` for dense runs).
        mask_checksum: :func:`~nmsparse.recipes.train.distributed.mask_checksum` of the final masks.
        steps, refreshes, refresh_seconds: optimizer steps, mask refreshes and their total time.
        refresh_overhead: ``refresh_seconds`` over the rest of the training-loop time; ``None`` without refreshes.
        train_seconds: training-loop time (evaluation and checkpoints excluded), summed over resumed sessions.
        wall_seconds: time spent in epochs (training, evaluation, checkpoints), summed over resumed sessions.
        sparse_layers / dense_layers: pruned layer names; layers left dense with the reason.
        sparse_weight_fraction: share of the Linear/Conv2d weights that sit in sparse layers.
        prune_report: the pruning report of the initial masks (``PruneReport.to_dict()``), when available.
        acceleration: with ``accelerate``: what :func:`nmsparse.accelerate_` did per Linear layer
            (``AccelerationReport.to_dict()``, or a ``reason`` when nothing was considered).
    """

    structure: str
    mode: str
    completed: bool
    epoch: int
    test_accuracy: float
    test_loss: float
    history: list[dict[str, Any]]
    mask_valid: bool | None = None
    mask_density: float | None = None
    mask_checksum: int | None = None
    steps: int = 0
    refreshes: int = 0
    refresh_seconds: float = 0.0
    refresh_overhead: float | None = None
    train_seconds: float = 0.0
    wall_seconds: float = 0.0
    sparse_layers: list[str] = field(default_factory=list)
    dense_layers: dict[str, str] = field(default_factory=dict)
    sparse_weight_fraction: float = 0.0
    prune_report: dict[str, Any] | None = None
    acceleration: dict[str, Any] | None = None


@dataclass
class RunSummary:
    """What ``nmsparse train`` reports and writes to ``summary.json`` (accuracies in percent, times in seconds).

    Attributes:
        pattern / mode / method / initial_method / model / data / data_description / epochs / seed: the run.
        test_accuracy / test_loss: the sparse (or only) model after the last epoch.
        baseline_test_accuracy / accuracy_gap: the dense baseline's accuracy and ``baseline - sparse``.
        mask_valid / mask_density / mask_checksum (hex) / sparse_layers / dense_layers / sparse_weight_fraction:
            the final masks.
        steps / refreshes / refresh_seconds / refresh_overhead: mask refreshes (overhead over the other
            training-step time; compile time is *not* in it, see ``compile_seconds``).
        train_seconds / baseline_train_seconds: training-loop time of each model.
        wall_seconds: this session's wall time; sparse_run_seconds / baseline_run_seconds: time in epochs.
        compile_seconds: time spent compiling or loading the mask solvers' kernels before the timed work
            (what a first run on a fresh machine pays once; near 0 once numba's cache is warm).
        threads: CPU threads torch ran with.
        world_size / device / nmsparse_version / torch_version / python_version: where it ran.
        resumed: this session continued an interrupted run.
        prune_report: which layers were pruned and which left dense, and why.
        acceleration / baseline_acceleration: with ``accelerate``: the ``accelerate_`` report of each model
            (``None`` without ``accelerate`` or without a baseline).
    """

    pattern: str
    mode: str
    method: str
    initial_method: str
    model: str
    data: str
    data_description: str
    epochs: int
    seed: int
    test_accuracy: float
    test_loss: float
    baseline_test_accuracy: float | None
    accuracy_gap: float | None
    mask_valid: bool | None
    mask_density: float | None
    mask_checksum: str | None
    sparse_layers: list[str]
    dense_layers: dict[str, str]
    sparse_weight_fraction: float
    steps: int
    refreshes: int
    refresh_seconds: float
    refresh_overhead: float | None
    train_seconds: float
    baseline_train_seconds: float | None
    wall_seconds: float
    sparse_run_seconds: float
    baseline_run_seconds: float | None
    compile_seconds: float
    threads: int
    world_size: int
    device: str
    nmsparse_version: str
    torch_version: str
    python_version: str
    resumed: bool = False
    prune_report: dict[str, Any] | None = None
    acceleration: dict[str, Any] | None = None
    baseline_acceleration: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``summary.json``), with a ``version`` key."""
        return {"version": SUMMARY_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunSummary:
        """Read :meth:`to_dict`'s output.

        Raises:
            InputError: unknown or missing keys, or another version.
        """
        values = dict(values)
        version = values.pop("version", None)
        if version != SUMMARY_VERSION:
            raise InputError(f"summary: version {version!r} is not {SUMMARY_VERSION} (written by another nmsparse)")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in values if k not in names]
        if unknown:
            close = difflib.get_close_matches(unknown[0], names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InputError(f"summary: unknown key {unknown[0]!r}{hint}")
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in values]
        if missing:
            raise InputError(f"summary: missing keys {missing}")
        return cls(**values)
