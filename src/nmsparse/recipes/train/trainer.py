"""The training loop: one model, one structure (dense, static or dynamic masks), checkpointed every epoch.

:class:`Trainer` trains one model; :func:`run_training` is the job behind ``nmsparse train``: the sparse model,
then (by default) the same model dense with the same seed, then ``summary.json`` and a plot of the curves.

A run directory holds::

    config.yaml          resolved settings (what --resume reads)
    metrics.jsonl        one JSON record per epoch
    model.safetensors    weights + masks (+ batch-norm statistics), rewritten atomically every epoch
    trainer_state.pt     optimizer, step, sparsifier counters, RNG states of every rank, history
    curves.png           training loss and test accuracy per epoch (sparse and dense)
    summary.json         final numbers (written when the run completes)
    baseline/            the dense baseline's own metrics.jsonl, model.safetensors and trainer_state.pt

Resuming restores everything a later epoch depends on: weights, masks, optimizer moments, the step (which
fixes the learning rate and the refresh schedule), the sparsifier counters and every random generator; the data
order is a function of ``(seed, epoch)``. A resumed run therefore ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler

from nmsparse._logging import logger, progress_enabled
from nmsparse._version import __version__
from nmsparse.errors import ConfigError, InputError, MaskMismatchError
from nmsparse.metrics import is_nm_sparse
from nmsparse.pattern import NMPattern
from nmsparse.prune import DynamicSparsifier, get_masks, load_pruned_state_dict_, prune_, select_layers, squash_masks_
from nmsparse.prune.static import MASK_KEY_SUFFIX
from .checkpoint import (
    MODEL_FILE,
    STATE_FILE,
    capture_rng_state,
    load_model_file,
    load_trainer_state,
    restore_rng_state,
    save_model,
    save_trainer_state,
    write_text_atomic,
)
from .config import UNSTRUCTURED, TrainConfig, config_to_yaml, load_config
from .data import DataBundle, build_data, collate_images
from .distributed import (
    DistContext,
    all_reduce_sum,
    average_batchnorm_stats_,
    check_masks_identical,
    gather_objects,
)
from .models import build_model
from .unstructured import UnstructuredSparsifier

__all__ = [
    "Trainer",
    "RunResult",
    "run_training",
    "resume_config",
    "learning_rate",
    "CONFIG_FILE",
    "SUMMARY_FILE",
    "METRICS_FILE",
    "PLOT_FILE",
    "BASELINE_DIR",
]

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "curves.png"
BASELINE_DIR = "baseline"

EpochCallback = Callable[[str, dict[str, Any]], None]


def learning_rate(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then the configured schedule.

    Example:
        >>> cfg = TrainConfig(epochs=10, lr=1.0, warmup_epochs=0)
        >>> learning_rate(cfg, 0, 10), round(learning_rate(cfg, 50, 10), 3)
        (1.0, 0.5)
    """
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":
        epoch = step / steps_per_epoch
        return cfg.lr * cfg.gamma ** sum(1 for m in cfg.milestones if epoch >= m)
    total = cfg.epochs * steps_per_epoch
    fraction = (step - warmup) / max(1, total - warmup)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, fraction)))


def _resolve_device(setting: str, ctx: DistContext) -> torch.device:
    if setting == "cpu":
        return torch.device("cpu")
    if setting == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {setting!r} requested but CUDA is not available here; use --device cpu or auto")
    if setting.startswith("cuda:"):
        return torch.device(setting)
    return torch.device("cuda", ctx.local_rank if ctx.enabled else torch.cuda.current_device())


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _prunable_weights(model: nn.Module) -> dict[str, int]:
    """Weights of every Linear/Conv2d layer by name (pruned or not)."""
    return {name: int(module.weight.numel()) for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, nn.Conv2d))}


def _describe_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    expected = model.state_dict()
    problems = [f"missing {k!r}" for k in expected if k not in state]
    problems += [f"unexpected {k!r}" for k in state if k not in expected]
    problems += [f"{k!r} is {tuple(v.shape)}, the model has {tuple(expected[k].shape)}"
                 for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    return problems


@dataclass
class RunResult:
    """Outcome of :meth:`Trainer.fit` (accuracies in percent).

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
        refresh_overhead: ``refresh_seconds`` over the rest of the training-loop time (the paper's "overhead on a
            dense step"); ``None`` without refreshes.
        train_seconds: training-loop time (evaluation and checkpoints excluded), summed over resumed sessions.
        wall_seconds: time spent in epochs (training, evaluation, checkpoints), summed over resumed sessions.
        sparse_layers / dense_layers: pruned layer names; layers left dense with the reason.
        sparse_weight_fraction: share of the Linear/Conv2d weights that sit in sparse layers.
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


class Trainer:
    """Train one model under one structure, with checkpoints every epoch.

    Args:
        config: the run's settings (``config.baseline`` is ignored here: see :func:`run_training`).
        data: data set (built from ``config`` when ``None``).
        out_dir: run directory for checkpoints and metrics (rank 0 writes); ``None`` writes nothing.
        dist: data-parallel context (single process when ``None``).
        progress: tqdm bar on stderr (``None``: only on a terminal; never on ranks other than 0).
        on_epoch_end: ``callback(label, record)`` after every epoch, on rank 0.
        label: name of this run in bars, callbacks and logs (default: the structure and mode).

    Raises:
        ConfigError / InputError / MaskMismatchError: bad settings, data, or an ``init`` checkpoint that does
            not fit the model.
    """

    def __init__(self, config: TrainConfig, data: DataBundle | None = None, *, out_dir: str | Path | None = None,
                 dist: DistContext | None = None, progress: bool | None = None,
                 on_epoch_end: EpochCallback | None = None, label: str | None = None) -> None:
        self.config = config
        self.dist = dist or DistContext()
        self.data = data if data is not None else build_data(config)
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.progress = progress
        self.on_epoch_end = on_epoch_end
        self.label = label or (config.structure if config.mode == "dense" else f"{config.structure} {config.mode}")
        if config.batch_size % self.dist.world_size:
            raise ConfigError(
                f"batch_size {config.batch_size} is the global batch and must be divisible by the "
                f"{self.dist.world_size} processes; pick a multiple of {self.dist.world_size}"
            )
        self.device = _resolve_device(config.device, self.dist)

        _seed_everything(config.seed)
        model = build_model(config.model, in_channels=self.data.in_channels, num_classes=self.data.num_classes,
                            image_size=self.data.image_size, width=config.width)
        if config.init is not None:
            self._load_init(model, config.init)
        model.to(self.device)
        self.sparsifier: DynamicSparsifier | UnstructuredSparsifier | None = None
        # numba's OpenMP threading layer (compiled mask solvers) can reset torch's OpenMP thread count; keep the
        # caller's count through mask computations, so numerics and speed do not depend on when masks ran.
        self._threads = torch.get_num_threads()
        self._attach_masks(model)
        self._restore_threads()
        if self.dist.enabled and config.sparse:
            check_masks_identical(model, self.dist, where=f"{self.label}: initial masks")
        # Ranks share the weights' seed; reseeding per rank gives each its own augmentation stream.
        _seed_everything(config.seed * 1_000_003 + 7919 * self.dist.rank + 1)
        self.model = model
        self.ddp: nn.Module = model
        if self.dist.enabled:
            if self.device.type == "cuda" and config.sync_bn:
                self.model = model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            # broadcast_buffers=False: masks must never be overwritten silently by rank 0's; they are checked
            # instead, and batch-norm statistics are averaged explicitly before evaluation.
            self.ddp = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False,
            )
        self.optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                         nesterov=config.nesterov, weight_decay=config.weight_decay)
        self.train_sampler = DistributedSampler(self.data.train, num_replicas=self.dist.world_size,
                                                rank=self.dist.rank, shuffle=True, seed=config.seed, drop_last=False)
        per_rank = config.batch_size // self.dist.world_size
        cuda = self.device.type == "cuda"
        self.train_loader = DataLoader(self.data.train, batch_size=per_rank, sampler=self.train_sampler,
                                       num_workers=config.num_workers, collate_fn=collate_images, pin_memory=cuda)
        test_shard = Subset(self.data.test, range(self.dist.rank, len(self.data.test), self.dist.world_size))
        self.test_loader = DataLoader(test_shard, batch_size=config.eval_batch_size, shuffle=False,
                                      num_workers=config.num_workers, collate_fn=collate_images, pin_memory=cuda)
        self.steps_per_epoch = len(self.train_loader)
        if config.steps_per_epoch is not None:
            self.steps_per_epoch = min(self.steps_per_epoch, config.steps_per_epoch)
        self.epoch = 0
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.train_seconds = 0.0
        self.wall_seconds = 0.0

    # ------------------------------------------------------------------------------------------------ set-up

    def _restore_threads(self) -> None:
        if torch.get_num_threads() != self._threads:
            torch.set_num_threads(self._threads)

    def _load_init(self, model: nn.Module, path: str) -> None:
        state, meta = load_model_file(path)
        saved_model = meta.get("model")
        if saved_model is not None and saved_model != self.config.model:
            raise InputError(
                f"init checkpoint {path} holds a {saved_model!r} model but this run builds {self.config.model!r}; "
                f"pass --model {saved_model} or a checkpoint of a {self.config.model!r} model"
            )
        if any(key.endswith(MASK_KEY_SUFFIX) or key == MASK_KEY_SUFFIX[1:] for key in state):
            try:
                load_pruned_state_dict_(model, state)
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
        common = dict(include=cfg.include, exclude=cfg.exclude, keep_first_last=cfg.keep_first_last)
        if cfg.pattern == UNSTRUCTURED:
            self.sparsifier = UnstructuredSparsifier(model, density=0.5, dynamic=cfg.mode == "dynamic",
                                                     refresh_every=cfg.refresh_every, decay=cfg.decay, **common)
            layers, skipped = list(self.sparsifier.layers), self.sparsifier.skipped
        else:
            selection = select_layers(model, cfg.pattern, **common)
            if cfg.mode == "dynamic":
                self.sparsifier = DynamicSparsifier(model, cfg.pattern, method=cfg.method,
                                                    initial_method=cfg.initial_method,
                                                    refresh_every=cfg.refresh_every, decay=cfg.decay, **common)
            else:
                prune_(model, cfg.pattern, method=cfg.initial_method, **common)
            layers, skipped = list(get_masks(model)), selection.skipped
        self.sparse_layers = layers
        self.dense_layers = dict(skipped)

    # ------------------------------------------------------------------------------------------- checkpoints

    def _save(self) -> None:
        """Checkpoint (rank 0 writes; every rank contributes its RNG state)."""
        rng_states = gather_objects(capture_rng_state(), self.dist)
        if not self.dist.is_main or self.out_dir is None:
            return
        meta = {"model": self.config.model, "structure": self.config.structure, "mode": self.config.mode,
                "epoch": str(self.epoch), "config": json.dumps(self.config.to_dict())}
        save_model(self.out_dir / MODEL_FILE, self.model, metadata=meta)
        state = {
            "epoch": self.epoch,
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "sparsifier": None if self.sparsifier is None else self.sparsifier.state_dict(),
            "rng": rng_states,
            "world_size": self.dist.world_size,
            "history": self.history,
            "train_seconds": self.train_seconds,
            "wall_seconds": self.wall_seconds,
            "config": self.config.to_dict(),
        }
        save_trainer_state(self.out_dir / STATE_FILE, state)
        lines = "".join(json.dumps(record) + "\n" for record in self.history)
        write_text_atomic(self.out_dir / METRICS_FILE, lines)

    def load_checkpoint(self, directory: str | Path) -> None:
        """Restore this trainer from ``directory``'s last checkpoint (see the module docstring).

        Raises:
            InputError: no checkpoint there, or one written with other settings.
        """
        directory = Path(directory)
        state = load_trainer_state(directory / STATE_FILE)
        if state.get("config") != self.config.to_dict():
            saved = state.get("config") or {}
            diff = sorted(k for k in set(saved) | set(self.config.to_dict())
                          if saved.get(k) != self.config.to_dict().get(k))
            raise InputError(
                f"{directory}: its checkpoint was written with other settings (differing: {diff}); resume with "
                f"the run's own config.yaml"
            )
        tensors, _ = load_model_file(directory / MODEL_FILE)
        try:
            load_pruned_state_dict_(self.model, tensors)
        except MaskMismatchError as exc:
            raise InputError(f"{directory / MODEL_FILE} does not fit the model: {exc}") from None
        self.optimizer.load_state_dict(state["optimizer"])
        if self.sparsifier is not None and state["sparsifier"] is not None:
            self.sparsifier.load_state_dict(state["sparsifier"])
        rng = state["rng"]
        if len(rng) != self.dist.world_size:
            logger.warning("%s: checkpoint was written by %d process(es), resuming with %d; random streams of "
                           "rank 0 are reused", directory, len(rng), self.dist.world_size)
        restore_rng_state(rng[self.dist.rank] if self.dist.rank < len(rng) else rng[0])
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        self.history = list(state["history"])
        self.train_seconds = float(state["train_seconds"])
        self.wall_seconds = float(state["wall_seconds"])
        if self.dist.enabled and self.config.sparse:
            check_masks_identical(self.model, self.dist, where=f"{self.label}: resumed masks")

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
        if not math.isfinite(loss_sum):
            raise ConfigError(
                f"{self.label}: training loss became {loss_sum} in epoch {self.epoch + 1}; lower the learning rate "
                f"(--lr, now {cfg.lr:g})"
            )
        seconds = time.perf_counter() - start
        loss_sum, correct, count = all_reduce_sum([loss_sum, correct, count], self.dist)
        refresh = (self.sparsifier.refresh_seconds if self.sparsifier is not None else 0.0) - refresh_before
        return {"train_loss": loss_sum / max(count, 1.0), "train_accuracy": 100.0 * correct / max(count, 1.0),
                "seconds": seconds, "refresh_seconds": refresh}

    def fit(self, *, resume: bool = False, stop_after_epoch: int | None = None) -> RunResult:
        """Train until ``config.epochs`` (or ``stop_after_epoch``) epochs are done, checkpointing each epoch.

        Args:
            resume: continue from ``out_dir``'s checkpoint when there is one (start fresh otherwise).
            stop_after_epoch: stop once this many epochs are done (simulates an interruption; the result has
                ``completed=False``).

        Returns:
            A :class:`RunResult`.
        """
        cfg = self.config
        session_start = time.perf_counter()
        if resume and self.out_dir is not None and (self.out_dir / STATE_FILE).is_file():
            self.load_checkpoint(self.out_dir)
        if self.dist.is_main and self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        last_epoch = cfg.epochs if stop_after_epoch is None else min(cfg.epochs, stop_after_epoch)
        bar = None
        if self.dist.is_main and progress_enabled(self.progress) and self.epoch < last_epoch:
            from tqdm.auto import tqdm

            bar = tqdm(total=(last_epoch - self.epoch) * self.steps_per_epoch, desc=self.label, unit="step",
                       leave=False, dynamic_ncols=True)
        try:
            while self.epoch < last_epoch:
                epoch_start = time.perf_counter()
                stats = self._train_epoch(bar)
                average_batchnorm_stats_(self.model, self.dist)
                accuracy, loss = self.evaluate()
                self.epoch += 1
                self.train_seconds += stats["seconds"]
                record: dict[str, Any] = {
                    "epoch": self.epoch, "step": self.step,
                    "lr": learning_rate(cfg, max(self.step - 1, 0), self.steps_per_epoch),
                    "train_loss": stats["train_loss"], "train_accuracy": stats["train_accuracy"],
                    "test_loss": loss, "test_accuracy": accuracy, "epoch_seconds": stats["seconds"],
                    "refresh_seconds": stats["refresh_seconds"],
                }
                if self.sparsifier is not None:
                    record["refreshes"] = self.sparsifier.refreshes
                    record["mask_changed"] = self.sparsifier.last_changed
                self.history.append(record)
                self.wall_seconds += time.perf_counter() - epoch_start
                self._save()
                if bar is not None:
                    bar.set_postfix(loss=f"{stats['train_loss']:.3f}", test=f"{accuracy:.2f}%")
                if self.on_epoch_end is not None and self.dist.is_main:
                    self.on_epoch_end(self.label, record)
        finally:
            if bar is not None:
                bar.close()
        if not self.history:
            accuracy, loss = self.evaluate()
        else:
            accuracy, loss = self.history[-1]["test_accuracy"], self.history[-1]["test_loss"]
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
            valid = valid and all(is_nm_sparse(modules[name].weight.detach(), pattern) for name in masks)
        return valid, kept / total

    def _result(self, accuracy: float, loss: float, session_start: float) -> RunResult:
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
        return RunResult(
            structure=self.config.structure, mode=self.config.mode, completed=self.epoch >= self.config.epochs,
            epoch=self.epoch, test_accuracy=accuracy, test_loss=loss, history=list(self.history),
            mask_valid=valid, mask_density=density, mask_checksum=checksum, steps=self.step, refreshes=refreshes,
            refresh_seconds=refresh_seconds, refresh_overhead=overhead, train_seconds=self.train_seconds,
            wall_seconds=self.wall_seconds, sparse_layers=list(self.sparse_layers),
            dense_layers=dict(self.dense_layers),
            sparse_weight_fraction=sparse_weights / max(1, sum(weights.values())),
        )


# ------------------------------------------------------------------------------------------------------- job


def resume_config(directory: str | Path) -> TrainConfig:
    """The settings of the run in ``directory`` (its ``config.yaml``).

    Raises:
        InputError: the directory does not exist, or holds no config or no checkpoint.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"resume: run directory {str(directory)!r} does not exist")
    if not (directory / CONFIG_FILE).is_file():
        raise InputError(f"resume: {directory} holds no {CONFIG_FILE}; it is not an nmsparse train run directory")
    if not (directory / STATE_FILE).is_file():
        raise InputError(
            f"resume: {directory} holds no checkpoint ({STATE_FILE}); the run stopped before finishing its first "
            f"epoch, so start it again (without --resume)"
        )
    return load_config(directory / CONFIG_FILE)


def _summary(cfg: TrainConfig, data: DataBundle, main: RunResult, baseline: RunResult | None,
             dist: DistContext, device: torch.device, wall_seconds: float) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "pattern": cfg.structure,
        "mode": cfg.mode,
        "method": cfg.method if cfg.mode == "dynamic" else cfg.initial_method,
        "initial_method": cfg.initial_method,
        "model": cfg.model,
        "data": cfg.data,
        "data_description": data.description,
        "epochs": cfg.epochs,
        "seed": cfg.seed,
        "test_accuracy": main.test_accuracy,
        "test_loss": main.test_loss,
        "baseline_test_accuracy": None if baseline is None else baseline.test_accuracy,
        "accuracy_gap": None if baseline is None else baseline.test_accuracy - main.test_accuracy,
        "mask_valid": main.mask_valid,
        "mask_density": main.mask_density,
        "mask_checksum": None if main.mask_checksum is None else f"{main.mask_checksum:016x}",
        "sparse_layers": main.sparse_layers,
        "dense_layers": main.dense_layers,
        "sparse_weight_fraction": main.sparse_weight_fraction,
        "steps": main.steps,
        "refreshes": main.refreshes,
        "refresh_seconds": main.refresh_seconds,
        "refresh_overhead": main.refresh_overhead,
        "train_seconds": main.train_seconds,
        "baseline_train_seconds": None if baseline is None else baseline.train_seconds,
        "wall_seconds": wall_seconds,
        "sparse_run_seconds": main.wall_seconds,
        "baseline_run_seconds": None if baseline is None else baseline.wall_seconds,
        "world_size": dist.world_size,
        "device": str(device),
        "nmsparse_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }
    return summary


def run_training(config: TrainConfig, out_dir: str | Path, *, resume: bool = False, dist: DistContext | None = None,
                 progress: bool | None = None, on_epoch_end: EpochCallback | None = None,
                 stop_after_epoch: int | None = None,
                 on_start: Callable[[Trainer], None] | None = None) -> dict[str, Any] | None:
    """Train ``config``'s model sparse, then dense with the same seed (``config.baseline``), and report.

    Writes the run directory described in the module docstring (rank 0 only).

    Args:
        config: settings; with ``resume=True`` they must equal the directory's ``config.yaml``
            (:func:`resume_config`).
        out_dir: run directory.
        resume: continue the runs in ``out_dir`` from their last checkpoints.
        dist: data-parallel context.
        progress: progress bars (``None``: on a terminal).
        on_epoch_end: ``callback(label, record)`` after every epoch of either run.
        stop_after_epoch: stop the sparse run after this many epochs (simulated interruption) and return ``None``.
        on_start: ``callback(trainer)`` once the settings, data, model and masks are checked, before training.

    Returns:
        The summary dict (also written to ``summary.json``), or ``None`` when stopped early.
    """
    dist = dist or DistContext()
    out_dir = Path(out_dir)
    start = time.perf_counter()
    # Data, device, model, masks and init checkpoint are all checked before anything is written.
    data = build_data(config)
    trainer = Trainer(config, data, out_dir=out_dir, dist=dist, progress=progress, on_epoch_end=on_epoch_end)
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            write_text_atomic(out_dir / CONFIG_FILE, config_to_yaml(config))
        if on_start is not None:
            on_start(trainer)
    main = trainer.fit(resume=resume, stop_after_epoch=stop_after_epoch)
    if not main.completed:
        return None
    baseline = None
    histories = {trainer.label: main.history}
    if config.baseline and config.sparse:
        dense_cfg = config.replace(mode="dense")
        dense = Trainer(dense_cfg, data, out_dir=out_dir / BASELINE_DIR, dist=dist, progress=progress,
                        on_epoch_end=on_epoch_end, label="dense baseline")
        baseline = dense.fit(resume=resume)
        histories["dense baseline"] = baseline.history
    summary = _summary(config, data, main, baseline, dist, trainer.device, time.perf_counter() - start)
    summary["resumed"] = bool(resume)
    if dist.is_main:
        from .plots import plot_training_curves

        title = f"{config.model} on {data.name}: {trainer.label}" + (" vs dense" if baseline is not None else "")
        plot_training_curves(histories, out_dir / PLOT_FILE, title=title)
        write_text_atomic(out_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return summary
