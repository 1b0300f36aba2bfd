"""The classify task's trainer: one model, one structure (dense, static or dynamic masks), checkpointed every
epoch, on the loop of :mod:`nmsparse.recipes._run` (each stretch of it is an epoch).

:class:`Trainer` trains one model; :func:`run_training` is the job behind ``nmsparse train classify``: the sparse model,
then (by default) the same model dense with the same seed, then ``summary.json`` (a typed
:class:`~nmsparse.recipes.classify.summary.RunSummary`) and a plot of the curves. Where files go, how checkpoints
are written atomically and verified on resume, and when an existing directory is refused, is the business of
:mod:`nmsparse.recipes.rundir`. A run directory holds::

    run.json, config.yaml     marker and resolved settings (what --resume reads)
    checkpoint.safetensors    ONE atomic file: weights + masks (nmsparse.io's pruned layout, pattern and mode
                              per mask), optimizer, sparsifier counters, RNG states of every rank, step,
                              metrics history, config hash
    metrics.jsonl             one JSON record per epoch (reconciled with the checkpoint on resume)
    model.safetensors         the final pruned model (nmsparse.io format), when the model's training completes
    curves.png, summary.json  written when the run completes
    baseline/                 the dense baseline's own checkpoint.safetensors, metrics.jsonl, model.safetensors

Resuming restores everything a later epoch depends on: weights, masks, optimizer moments, the step (which
fixes the learning rate and the refresh schedule), the sparsifier counters and every random generator; the data
order is a function of ``(seed, epoch)``. A resumed run therefore ends bit-identical to an uninterrupted one,
wherever it was killed (a run killed before its first checkpoint starts again).
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler

from nmsparse._logging import logger
from nmsparse._version import __version__
from nmsparse.errors import ConfigError, InputError, MaskMismatchError
from nmsparse.io import MASK_PREFIX, load_pruned_state_dict_, save_pruned
from nmsparse.metrics import is_nm_sparse
from nmsparse.pattern import NMPattern
from nmsparse.prune import DynamicSparsifier, get_masks, prune_, squash_masks_
from nmsparse.prune.static import MASK_KEY_SUFFIX

from .. import _run
from .._common import warm_up_solvers as _warm_up
from .._run import BASELINE_DIR, PLOT_FILE
from ..distributed import (
    DistContext,
    all_reduce_sum,
    average_batchnorm_stats_,
    check_masks_identical,
    gather_objects,
)
from ..rundir import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, Checkpoint, RunDir, config_hash
from ..unstructured import UnstructuredSparsifier
from .checkpoint import capture_rng_state, load_model_file, restore_rng_state
from .config import UNSTRUCTURED, TrainConfig, config_to_yaml, load_config
from .data import DataBundle, build_data, collate_images
from .models import build_model
from .summary import RunSummary, TrainerResult

__all__ = [
    "Trainer",
    "TrainerResult",
    "RunResult",
    "run_training",
    "prepare_run",
    "resume_config",
    "learning_rate",
    "warm_up_solvers",
    "TASK",
    "CONFIG_FILE",
    "SUMMARY_FILE",
    "METRICS_FILE",
    "MODEL_FILE",
    "PLOT_FILE",
    "BASELINE_DIR",
]

#: Task name recorded in the run directories of this recipe.
TASK = "classify"
MODEL_FILE = "model.safetensors"
#: Files of the run besides rundir's own (overwrite checks count them as the run's).
OUTPUTS = (MODEL_FILE, PLOT_FILE)

#: Old name of :class:`TrainerResult`.
RunResult = TrainerResult

EpochCallback = Callable[[str, dict[str, Any]], None]


def learning_rate(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then the configured schedule.

    Example:
        >>> cfg = TrainConfig(epochs=10, lr=1.0, warmup_epochs=0)
        >>> learning_rate(cfg, 0, 10), round(learning_rate(cfg, 50, 10), 3)
        (1.0, 0.5)
    """
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step >= warmup and cfg.schedule == "constant":
        return cfg.lr
    if step >= warmup and cfg.schedule == "step":
        epoch = step / steps_per_epoch
        return cfg.lr * cfg.gamma ** sum(1 for m in cfg.milestones if epoch >= m)
    return _run.warmup_cosine_lr(step, peak=cfg.lr, warmup=warmup, decay_steps=cfg.epochs * steps_per_epoch - warmup)


def _prunable_weights(model: nn.Module) -> dict[str, int]:
    """Weights of every Linear/Conv2d layer by name (pruned or not)."""
    return {
        name: int(module.weight.numel())
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv2d))
    }


def _module_name(mask_key: str) -> str:
    """Module of a mask key: ``"conv2.weight"`` (tensor-name convention) or ``"conv2"`` (older) -> ``"conv2"``."""
    return mask_key[: -len(".weight")] if mask_key.endswith(".weight") else mask_key


def _is_pruned(state: dict[str, torch.Tensor], meta: dict[str, str]) -> bool:
    """Whether a checkpoint holds masks (nmsparse.io's pruned format or a raw parametrized state dict)."""
    if meta.get("kind") == "pruned" or any(k.startswith(MASK_PREFIX) for k in state):
        return True
    return any(key.endswith(MASK_KEY_SUFFIX) or key == MASK_KEY_SUFFIX[1:] for key in state)


def _describe_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    expected = model.state_dict()
    problems = [f"missing {k!r}" for k in expected if k not in state]
    problems += [f"unexpected {k!r}" for k in state if k not in expected]
    problems += [
        f"{k!r} is {tuple(v.shape)}, the model has {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    return problems


class Trainer(_run.RecipeTrainer):
    """Train one model under one structure, with an atomic checkpoint every epoch.

    Args:
        config: the run's settings (``config.baseline`` is ignored here: see :func:`run_training`).
        data: data set (built from ``config`` when ``None``).
        run: run directory to checkpoint into (rank 0 writes); ``None`` (and no ``out_dir``) writes nothing.
        section: sub-folder of ``run`` for this trainer (``""``: the run directory itself, ``"baseline"``, ...).
        out_dir: shorthand for ``run=RunDir(out_dir, task="classify")``.
        dist: data-parallel context (single process when ``None``).
        progress: tqdm bar on stderr (``None``: only on a terminal; never on ranks other than 0).
        on_epoch_end: ``callback(label, record)`` after every epoch, on rank 0.
        label: name of this run in bars, callbacks and logs (default: the structure and mode).

    Raises:
        ConfigError / InputError / MaskMismatchError: bad settings, data, or an ``init`` checkpoint that does
            not fit the model.

    Example:
        >>> cfg = TrainConfig(width=8, epochs=1, steps_per_epoch=2, batch_size=32, mode="dense", baseline=False)
        >>> Trainer(cfg, progress=False).fit().epoch
        1
    """

    def __init__(
        self,
        config: TrainConfig,
        data: DataBundle | None = None,
        *,
        run: RunDir | None = None,
        section: str = "",
        out_dir: str | Path | None = None,
        dist: DistContext | None = None,
        progress: bool | None = None,
        on_epoch_end: EpochCallback | None = None,
        label: str | None = None,
    ) -> None:
        self.config = config
        self.dist = dist or DistContext()
        self.data = data if data is not None else build_data(config)
        if run is None and out_dir is not None:
            run = RunDir(out_dir, task=TASK)
        self.run = run
        self.section = section
        self.out_dir = None if run is None else run.section_dir(section)
        self.progress = progress
        self.on_epoch_end = on_epoch_end
        self.label = label or (config.structure if config.mode == "dense" else f"{config.structure} {config.mode}")
        if config.batch_size % self.dist.world_size:
            raise ConfigError(
                f"batch_size {config.batch_size} is the global batch and must be divisible by the "
                f"{self.dist.world_size} processes; pick a multiple of {self.dist.world_size}"
            )
        self.device = _run.resolve_device(config.device, self.dist)

        _run.seed_everything(config.seed)
        model = build_model(
            config.model,
            in_channels=self.data.in_channels,
            num_classes=self.data.num_classes,
            image_size=self.data.image_size,
            width=config.width,
        )
        if config.init is not None:
            self._load_init(model, config.init)
        model.to(self.device)
        self.sparsifier: DynamicSparsifier | UnstructuredSparsifier | None = None
        # numba's OpenMP threading layer (compiled mask solvers) can reset torch's OpenMP thread count; keep the
        # caller's count through mask computations, so numerics and speed do not depend on when masks ran.
        self._threads = torch.get_num_threads()
        self.prune_report: dict[str, Any] | None = None
        self._attach_masks(model)
        self._restore_threads()
        if self.dist.enabled and config.sparse:
            check_masks_identical(model, self.dist, where=f"{self.label}: initial masks")
        self.acceleration: dict[str, Any] | None = None
        if config.accelerate:
            # After the masks (swapped layers share their Parameters and masks), before DDP and the optimizer.
            # The models' Linear layers take flattened features: one row per image.
            self.acceleration = _run.accelerate_layers(
                model,
                config.pattern if config.sparse else None,
                tokens=config.batch_size // self.dist.world_size,
                layers=self.sparse_layers,
                dense_layers=self.dense_layers,
                label="dense baseline" if section == BASELINE_DIR else self.label,
                log=self.dist.is_main,
            )
        # Ranks share the weights' seed; reseeding per rank gives each its own augmentation stream.
        _run.seed_everything(config.seed * 1_000_003 + 7919 * self.dist.rank + 1)
        self.model = model
        self.ddp: nn.Module = model
        if self.dist.enabled:
            if self.device.type == "cuda" and config.sync_bn:
                self.model = model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            # broadcast_buffers=False: masks must never be overwritten silently by rank 0's; they are checked
            # instead, and batch-norm statistics are averaged explicitly before evaluation.
            self.ddp = nn.parallel.DistributedDataParallel(
                model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False,
            )
        self.optimizer = torch.optim.SGD(
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
        self.train_sampler: DistributedSampler[Any] = DistributedSampler(
            self.data.train,
            num_replicas=self.dist.world_size,
            rank=self.dist.rank,
            shuffle=True,
            seed=config.seed,
            drop_last=False,
        )
        per_rank = config.batch_size // self.dist.world_size
        cuda = self.device.type == "cuda"
        self.train_loader = DataLoader(
            self.data.train,
            batch_size=per_rank,
            sampler=self.train_sampler,
            num_workers=config.num_workers,
            collate_fn=collate_images,
            pin_memory=cuda,
        )
        test_count = len(self.data.test)  # type: ignore[arg-type]
        test_shard = Subset(self.data.test, range(self.dist.rank, test_count, self.dist.world_size))
        self.test_loader = DataLoader(
            test_shard,
            batch_size=config.eval_batch_size,
            shuffle=False,
            num_workers=config.num_workers,
            collate_fn=collate_images,
            pin_memory=cuda,
        )
        self.steps_per_epoch = len(self.train_loader)
        if config.steps_per_epoch is not None:
            self.steps_per_epoch = min(self.steps_per_epoch, config.steps_per_epoch)
        self.epoch = 0
        self._start_loop()

    # ------------------------------------------------------------------------------------------------ set-up

    def _restore_threads(self) -> None:
        _run.keep_threads(self._threads)

    def _load_init(self, model: nn.Module, path: str) -> None:
        state, meta = load_model_file(path)
        saved_model = meta.get("model")
        if saved_model is not None and saved_model != self.config.model:
            raise InputError(
                f"init checkpoint {path} holds a {saved_model!r} model but this run builds {self.config.model!r}; "
                f"pass --model {saved_model} or a checkpoint of a {self.config.model!r} model"
            )
        if _is_pruned(state, meta):
            try:
                load_pruned_state_dict_(model, state, meta)
            except MaskMismatchError as exc:
                raise InputError(f"init checkpoint {path} does not fit model {self.config.model!r}: {exc}") from None
            squash_masks_(model)  # start from the masked weights, dense again
            return
        problems = _describe_mismatch(model, state)
        if problems:
            shown = "; ".join(problems[:6]) + (f"; ... ({len(problems)} in all)" if len(problems) > 6 else "")
            raise InputError(
                f"init checkpoint {path} does not fit model {self.config.model!r} (width {self.config.width}, "
                f"{self.data.num_classes} classes, {self.data.in_channels} channel(s)): {shown}; pass the "
                f"settings it was trained with"
            )
        model.load_state_dict(state)

    def _attach_masks(self, model: nn.Module) -> None:
        cfg = self.config
        self.sparse_layers: list[str] = []
        self.dense_layers: dict[str, str] = {}
        if not cfg.sparse:
            self.dense_layers = {name: "dense run" for name in _prunable_weights(model)}
            return
        common: dict[str, Any] = dict(include=cfg.include, exclude=cfg.exclude, keep_first_last=cfg.keep_first_last)
        self.sparsifier = _run.training_sparsifier(
            model, cfg.pattern, cfg, dynamic=cfg.mode == "dynamic", include=cfg.include, exclude=cfg.exclude
        )
        if isinstance(self.sparsifier, UnstructuredSparsifier):
            layers, skipped = list(self.sparsifier.layers), self.sparsifier.skipped
        else:  # n:m: the sparsifier's prune report, or (static) masks chosen once
            report = (
                self.sparsifier.report
                if self.sparsifier is not None
                else prune_(model, cfg.pattern, method=cfg.initial_method, **common)
            )
            self.prune_report = report.to_dict()
            layers, skipped = [_module_name(name) for name in get_masks(model)], report.skipped
        self.sparse_layers = layers
        self.dense_layers = dict(skipped)

    # ------------------------------------------------------------------------------------------- checkpoints

    @property
    def config_hash(self) -> str:
        """:func:`~nmsparse.recipes.rundir.config_hash` of this trainer's settings."""
        return config_hash(self.config.to_dict())

    def _save(self) -> None:
        """Checkpoint (rank 0 writes one file; every rank contributes its RNG state)."""
        rng_states = gather_objects(capture_rng_state(), self.dist)
        if not self.dist.is_main or self.run is None:
            return
        from nmsparse.io import pruned_state_dict

        # The model in nmsparse.io's pruned layout: plain keys, masks, pattern and mode per mask in the metadata.
        tensors, tensor_metadata = pruned_state_dict(self.model)
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "sparsifier": None if self.sparsifier is None else self.sparsifier.state_dict(),
            "rng": rng_states,
            "world_size": self.dist.world_size,
            **self._loop_state(),
        }
        self.run.save_checkpoint(
            Checkpoint(
                epoch=self.epoch,
                config_hash=self.config_hash,
                tensors=tensors,
                tensor_metadata=tensor_metadata,
                state=state,
                history=list(self.history),
                task=TASK,
            ),
            self.section,
        )

    def load_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Restore this trainer from a verified checkpoint (see :meth:`RunDir.load_checkpoint`).

        Raises:
            CheckpointError / InputError: a checkpoint that does not fit this model.
        """
        state = checkpoint.state
        where = self.out_dir if self.out_dir is not None else "checkpoint"
        from nmsparse.io import load_pruned_state_dict_

        try:
            # Loads into the masks and parameters already attached (the optimizer keeps its references).
            load_pruned_state_dict_(self.model, checkpoint.tensors, checkpoint.tensor_metadata)
        except MaskMismatchError as exc:
            raise InputError(f"{where}: the checkpoint does not fit this run's model: {exc}") from None
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            if self.sparsifier is not None and state["sparsifier"] is not None:
                self.sparsifier.load_state_dict(state["sparsifier"])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise InputError(
                f"{where}: the checkpoint does not fit this run's model ({' '.join(str(exc).split())[:240]})"
            ) from None
        rng = state["rng"]
        if len(rng) != self.dist.world_size:
            logger.warning(
                "%s: checkpoint was written by %d process(es), resuming with %d; random streams of rank 0 are reused",
                where,
                len(rng),
                self.dist.world_size,
            )
        restore_rng_state(rng[self.dist.rank] if self.dist.rank < len(rng) else rng[0])
        self.epoch = checkpoint.epoch
        self._restore_loop(state, checkpoint.history)
        if self.dist.enabled and self.config.sparse:
            check_masks_identical(self.model, self.dist, where=f"{self.label}: resumed masks")

    def _save_model(self) -> None:
        """The final model as ``model.safetensors`` (the pruned-model format of :mod:`nmsparse.io`)."""
        if not self.dist.is_main or self.out_dir is None:
            return
        meta = {
            "model": self.config.model,
            "structure": self.config.structure,
            "mode": self.config.mode,
            "epoch": str(self.epoch),
            "config": json.dumps(self.config.to_dict()),
        }
        save_pruned(self.model, self.out_dir / MODEL_FILE, metadata=meta, overwrite=True)

    # ------------------------------------------------------------------------------------------------- loops

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """``(accuracy in percent, mean loss)`` on the whole test set (all ranks together)."""
        self.model.eval()
        correct = loss_sum = count = 0.0
        for images, labels in self.test_loader:
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            logits = self.model(images)
            loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
            correct += float((logits.argmax(dim=1) == labels).sum())
            count += labels.numel()
        correct, loss_sum, count = all_reduce_sum([correct, loss_sum, count], self.dist)
        return 100.0 * correct / max(count, 1.0), loss_sum / max(count, 1.0)

    def _train_epoch(self, bar: Any) -> dict[str, float]:
        cfg = self.config
        self.ddp.train()
        self.train_sampler.set_epoch(self.epoch)
        loss_sum = correct = count = 0.0
        refresh_before = self.sparsifier.refresh_seconds if self.sparsifier is not None else 0.0
        start = time.perf_counter()
        for index, (images, labels) in enumerate(self.train_loader):
            if index >= self.steps_per_epoch:
                break
            lr = learning_rate(cfg, self.step, self.steps_per_epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            logits = self.ddp(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step += 1
            if self.sparsifier is not None and self.sparsifier.step():
                self._restore_threads()
                if self.dist.enabled:
                    check_masks_identical(self.model, self.dist, where=f"{self.label}: step {self.step} refresh")
            with torch.no_grad():
                loss_sum += float(loss) * labels.numel()
                correct += float((logits.argmax(dim=1) == labels).sum())
                count += labels.numel()
            if bar is not None:
                bar.update(1)
        _run.check_finite_loss(loss_sum, label=self.label, when=f"in epoch {self.epoch + 1}", lr=cfg.lr)
        seconds = time.perf_counter() - start
        loss_sum, correct, count = all_reduce_sum([loss_sum, correct, count], self.dist)
        refresh = (self.sparsifier.refresh_seconds if self.sparsifier is not None else 0.0) - refresh_before
        return {
            "train_loss": loss_sum / max(count, 1.0),
            "train_accuracy": 100.0 * correct / max(count, 1.0),
            "seconds": seconds,
            "refresh_seconds": refresh,
        }

    def _epoch(self, bar: Any) -> tuple[dict[str, Any], float]:
        """One epoch and the evaluation after it: its metrics record and training seconds."""
        stats = self._train_epoch(bar)
        average_batchnorm_stats_(self.model, self.dist)
        accuracy, loss = self.evaluate()
        self.epoch += 1
        if bar is not None:
            bar.set_postfix(loss=f"{stats['train_loss']:.3f}", test=f"{accuracy:.2f}%")
        return {
            "epoch": self.epoch,
            "step": self.step,
            "lr": learning_rate(self.config, max(self.step - 1, 0), self.steps_per_epoch),
            "train_loss": stats["train_loss"],
            "train_accuracy": stats["train_accuracy"],
            "test_loss": loss,
            "test_accuracy": accuracy,
            "epoch_seconds": stats["seconds"],
            "refresh_seconds": stats["refresh_seconds"],
        }, stats["seconds"]

    def fit(self, *, resume: bool = False, stop_after_epoch: int | None = None) -> TrainerResult:
        """Train until ``config.epochs`` (or ``stop_after_epoch``) epochs are done, checkpointing each epoch.

        Args:
            resume: continue from the run directory's checkpoint when there is one (start fresh otherwise).
            stop_after_epoch: stop once this many epochs are done (simulates an interruption; the result has
                ``completed=False``).

        Returns:
            A :class:`TrainerResult`.

        Raises:
            CheckpointError: the checkpoint is damaged, of other settings, or disagrees with ``metrics.jsonl``.
        """
        cfg = self.config
        session_start = time.perf_counter()
        if resume and self.run is not None:
            checkpoint = self.run.load_checkpoint(self.section, config_hash=self.config_hash)
            if checkpoint is not None:
                self.load_checkpoint(checkpoint)
            elif self.dist.is_main:
                self.run.discard_metrics(self.section)
        if self.dist.is_main and self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        last_epoch = cfg.epochs if stop_after_epoch is None else min(cfg.epochs, stop_after_epoch)
        bar = _run.progress_bar(
            self.progress,
            total=(last_epoch - self.epoch) * self.steps_per_epoch,
            desc=self.label,
            show=self.dist.is_main and self.epoch < last_epoch,
        )
        self._loop(bar, more=lambda: self.epoch < last_epoch, stretch=self._epoch, callback=self.on_epoch_end)
        if not self.history:
            accuracy, loss = self.evaluate()
        else:
            accuracy, loss = self.history[-1]["test_accuracy"], self.history[-1]["test_loss"]
        if self.epoch >= cfg.epochs:
            self._save_model()
        return self._result(accuracy, loss, session_start)

    # ------------------------------------------------------------------------------------------------ result

    def mask_report(self) -> tuple[bool | None, float | None]:
        """``(every mask obeys the structure, fraction of sparse-layer weights kept)``; ``(None, None)`` if dense."""
        if not self.config.sparse:
            return None, None
        masks = get_masks(self.model)
        if not masks:
            return False, None
        kept = sum(int(m.sum()) for m in masks.values())
        total = sum(m.numel() for m in masks.values())
        if self.config.pattern == UNSTRUCTURED:
            valid = all(int(m.sum()) == int(round(0.5 * m.numel())) for m in masks.values())
        else:
            pattern = NMPattern.parse(self.config.pattern)
            valid = all(is_nm_sparse(m, pattern) for m in masks.values())
            # A pruned weight must really be zero in what the layers compute with.
            modules = dict(self.model.named_modules())
            valid = valid and all(is_nm_sparse(modules[_module_name(name)].weight.detach(), pattern) for name in masks)
        return valid, kept / total

    def _result(self, accuracy: float, loss: float, session_start: float) -> TrainerResult:
        valid, density = self.mask_report()
        checksum = None
        if self.config.sparse:
            checksum = check_masks_identical(self.model, self.dist, where=f"{self.label}: final masks")
        weights = _prunable_weights(self.model)
        sparse_weights = sum(weights.get(name, 0) for name in self.sparse_layers)
        refreshes = self.sparsifier.refreshes if self.sparsifier is not None else 0
        refresh_seconds = self.sparsifier.refresh_seconds if self.sparsifier is not None else 0.0
        overhead = None
        if refreshes and self.train_seconds > refresh_seconds:
            overhead = refresh_seconds / (self.train_seconds - refresh_seconds)
        if not self.history:
            self.wall_seconds += time.perf_counter() - session_start
        return TrainerResult(
            structure=self.config.structure,
            mode=self.config.mode,
            completed=self.epoch >= self.config.epochs,
            epoch=self.epoch,
            test_accuracy=accuracy,
            test_loss=loss,
            history=list(self.history),
            mask_valid=valid,
            mask_density=density,
            mask_checksum=checksum,
            steps=self.step,
            refreshes=refreshes,
            refresh_seconds=refresh_seconds,
            refresh_overhead=overhead,
            train_seconds=self.train_seconds,
            wall_seconds=self.wall_seconds,
            sparse_layers=list(self.sparse_layers),
            dense_layers=dict(self.dense_layers),
            sparse_weight_fraction=sparse_weights / max(1, sum(weights.values())),
            prune_report=self.prune_report,
            acceleration=self.acceleration,
        )


# ------------------------------------------------------------------------------------------------------- job


def warm_up_solvers(config: TrainConfig) -> float:
    """Compile (or load) the mask solvers ``config`` uses before any timed work; returns the seconds it took."""
    if not config.sparse:
        return 0.0
    methods = {config.initial_method} | ({config.method} if config.mode == "dynamic" else set())
    return _warm_up([config.pattern], methods)


def _sections(config: TrainConfig) -> tuple[str, ...]:
    return (BASELINE_DIR,) if config.baseline and config.sparse else ()


def prepare_run(config: TrainConfig, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False) -> RunDir:
    """The run directory of ``nmsparse train``, checked (nothing written): see :class:`RunDir.prepare`.

    Raises:
        OverwriteError: files of the run exist (an interrupted, finished or foreign run) and ``overwrite`` is
            false; with ``resume``: the run finished already.
        InputError / CheckpointError: see :meth:`RunDir.open_resume`.
    """
    run = _run.open_run(
        out_dir, task=TASK, outputs=OUTPUTS, sections=_sections(config), resume=resume, overwrite=overwrite
    )
    assert run is not None
    return run


def resume_config(directory: str | Path, *, overwrite: bool = False) -> TrainConfig:
    """The settings of the run in ``directory`` (its ``config.yaml``), after checking it can be resumed.

    A run that stopped before its first checkpoint can be resumed: it starts again.

    Raises:
        InputError: the directory does not exist or holds no config.
        OverwriteError: the run finished already (resuming would rewrite its summary) and not ``overwrite``.
    """
    run = RunDir.open_resume(directory, task=TASK, overwrite=overwrite)
    return load_config(run.config_path)


def _summary(
    cfg: TrainConfig,
    data: DataBundle,
    main: TrainerResult,
    baseline: TrainerResult | None,
    dist: DistContext,
    device: torch.device,
    wall_seconds: float,
    compile_seconds: float,
    resumed: bool,
) -> RunSummary:
    return RunSummary(
        pattern=cfg.structure,
        mode=cfg.mode,
        method=cfg.method if cfg.mode == "dynamic" else cfg.initial_method,
        initial_method=cfg.initial_method,
        model=cfg.model,
        data=cfg.data,
        data_description=data.description,
        epochs=cfg.epochs,
        seed=cfg.seed,
        test_accuracy=main.test_accuracy,
        test_loss=main.test_loss,
        baseline_test_accuracy=None if baseline is None else baseline.test_accuracy,
        accuracy_gap=None if baseline is None else baseline.test_accuracy - main.test_accuracy,
        mask_valid=main.mask_valid,
        mask_density=main.mask_density,
        mask_checksum=None if main.mask_checksum is None else f"{main.mask_checksum:016x}",
        sparse_layers=main.sparse_layers,
        dense_layers=main.dense_layers,
        sparse_weight_fraction=main.sparse_weight_fraction,
        steps=main.steps,
        refreshes=main.refreshes,
        refresh_seconds=main.refresh_seconds,
        refresh_overhead=main.refresh_overhead,
        train_seconds=main.train_seconds,
        baseline_train_seconds=None if baseline is None else baseline.train_seconds,
        wall_seconds=wall_seconds,
        sparse_run_seconds=main.wall_seconds,
        baseline_run_seconds=None if baseline is None else baseline.wall_seconds,
        compile_seconds=compile_seconds,
        threads=torch.get_num_threads(),
        world_size=dist.world_size,
        device=str(device),
        nmsparse_version=__version__,
        torch_version=torch.__version__,
        python_version=platform.python_version(),
        resumed=resumed,
        prune_report=main.prune_report,
        acceleration=main.acceleration,
        baseline_acceleration=None if baseline is None else baseline.acceleration,
    )


def run_training(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    dist: DistContext | None = None,
    progress: bool | None = None,
    on_epoch_end: EpochCallback | None = None,
    stop_after_epoch: int | None = None,
    on_start: Callable[[Trainer], None] | None = None,
) -> RunSummary | None:
    """Train ``config``'s model sparse, then dense with the same seed (``config.baseline``), and report.

    Writes the run directory described in the module docstring (rank 0 only), and nothing before the
    settings, the directory, the data, the model and its masks are all checked.

    Args:
        config: settings; with ``resume=True`` they must be the directory's ``config.yaml`` (:func:`resume_config`).
        out_dir: run directory.
        resume: continue the runs in ``out_dir`` from their last checkpoints (from nothing if they have none).
        overwrite: replace the files of an existing run in ``out_dir`` (without it: :class:`OverwriteError`).
        dist: data-parallel context.
        progress: progress bars (``None``: on a terminal).
        on_epoch_end: ``callback(label, record)`` after every epoch of either run.
        stop_after_epoch: stop the sparse run after this many epochs (simulated interruption) and return ``None``.
        on_start: ``callback(trainer)`` once everything is checked, before training.

    Returns:
        The :class:`RunSummary` (also written to ``summary.json``), or ``None`` when stopped early.

    Raises:
        OverwriteError: ``out_dir`` holds files of another or an earlier run (see :func:`prepare_run`).
    """
    dist = dist or DistContext()
    start = time.perf_counter()
    run = prepare_run(config, out_dir, resume=resume, overwrite=overwrite)
    compile_seconds = warm_up_solvers(config)
    data = build_data(config)
    trainer = Trainer(config, data, run=run, dist=dist, progress=progress, on_epoch_end=on_epoch_end)
    if dist.is_main:
        if not resume:
            run.create(config_text=config_to_yaml(config), config_hash=trainer.config_hash)
        if on_start is not None:
            on_start(trainer)
    main = trainer.fit(resume=resume, stop_after_epoch=stop_after_epoch)
    if not main.completed:
        return None
    baseline = None
    histories = {trainer.label: main.history}
    if config.baseline and config.sparse:
        dense = Trainer(
            config.replace(mode="dense"),
            data,
            run=run,
            section=BASELINE_DIR,
            dist=dist,
            progress=progress,
            on_epoch_end=on_epoch_end,
            label="dense baseline",
        )
        baseline = dense.fit(resume=resume)
        histories["dense baseline"] = baseline.history
    summary = _summary(
        config, data, main, baseline, dist, trainer.device, time.perf_counter() - start, compile_seconds, resume
    )
    from ..plots import plot_training_curves

    _run.finish_run(
        run,
        dist,
        summary=summary,
        curves=histories,
        plot=plot_training_curves,
        title=f"{config.model} on {data.name}: {trainer.label}" + (" vs dense" if baseline is not None else ""),
    )
    return summary
