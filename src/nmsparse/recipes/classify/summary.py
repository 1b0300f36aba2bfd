"""Typed results of training runs: :class:`TrainerResult` (one trainer) and :class:`RunSummary` (``summary.json``).

``summary.json`` keeps its flat layout (the keys scripts read); :meth:`RunSummary.to_dict` writes it and
:meth:`RunSummary.from_dict` reads it back, refusing unknown keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from .._run import FitResult, JSONRecord

__all__ = ["TrainerResult", "RunSummary", "SUMMARY_VERSION"]

#: Version of ``summary.json``'s layout.
SUMMARY_VERSION = 2


@dataclass(kw_only=True)
class TrainerResult(FitResult):
    """Outcome of :meth:`~nmsparse.recipes.classify.trainer.Trainer.fit` (accuracies in percent): the fields of
    every :class:`~nmsparse.recipes._run.FitResult` (one history record per epoch), and

    Attributes:
        mode: ``"dense"``, ``"dynamic"`` or ``"static"``.
        epoch: epochs done.
        test_accuracy / test_loss: after the last epoch done.
        mask_checksum: :func:`~nmsparse.recipes.distributed.mask_checksum` of the final masks.
        steps: optimizer steps.
        refresh_overhead: ``refresh_seconds`` over the rest of the training-loop time; ``None`` without refreshes.
        dense_layers: layers left dense with the reason.
        sparse_weight_fraction: share of the Linear/Conv2d weights that sit in sparse layers.
        prune_report: the pruning report of the initial masks (``PruneReport.to_dict()``), when available.
    """

    mode: str
    epoch: int
    test_accuracy: float
    test_loss: float
    mask_checksum: int | None = None
    steps: int = 0
    refresh_overhead: float | None = None
    dense_layers: dict[str, str] = field(default_factory=dict)
    sparse_weight_fraction: float = 0.0
    prune_report: dict[str, Any] | None = None


@dataclass
class RunSummary(JSONRecord):
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

    VERSION: ClassVar[int | None] = SUMMARY_VERSION
