"""The language-model training loop and ``nmsparse train lm``: a sparse decoder and its dense baseline.

:class:`LMTrainer` trains one decoder under one structure (dense, dynamic n:m / n:m-T masks through
:class:`nmsparse.DynamicSparsifier`, or dynamic unstructured 50% masks) with AdamW, a linear warm-up and a cosine
decay, evaluating on the held-out text every ``eval_every`` steps (each stretch of the
:mod:`nmsparse.recipes._run` loop is one evaluation interval). :func:`run_lm_training` is the job behind
``nmsparse train lm``: the sparse model, then (``baseline``) the same model dense with the same seed and the
same batches, then ``summary.json``, the curves and the dense model as a ``transformers`` folder.

A run directory (:mod:`nmsparse.recipes.rundir`) holds::

    run.json, config.yaml          marker and resolved settings (what --resume reads)
    checkpoint.safetensors         the sparse trainer's one atomic checkpoint (weights, masks, AdamW moments,
                                   sparsifier counters, torch RNG, step, history), replaced every eval_every steps
    metrics.jsonl                  one record per evaluation
    baseline/                      the dense baseline's checkpoint.safetensors and metrics.jsonl
    hf/                            the final model as a transformers GPT-2 folder (masked weights with zeros)
    baseline/hf/                   the dense baseline as a transformers GPT-2 folder (what one-shot pruning uses;
                                   hf/ itself when the run is dense); both need transformers, skipped without it
    curves.png, summary.json       written when the run completes

The batches of step ``s`` depend only on ``(seed, s)`` and dropout draws from the restored torch RNG, so a resumed
run ends bit-identical to an uninterrupted one (same device and thread count).

Example:
    >>> import tempfile
    >>> config = LMTrainConfig(sources=("topics",), d_model=32, n_layer=1, n_head=2, context=32, steps=4,
    ...                        warmup_steps=1, batch_size=2, eval_every=2, eval_tokens=256, pattern="2:4-T",
    ...                        threads=1)
    >>> summary = run_lm_training(config, tempfile.mkdtemp() + "/run", progress=False)
    >>> summary.mask_valid, summary.heldout_loss > 0, summary.baseline_heldout_loss > 0
    (True, True, True)
"""

from __future__ import annotations

import importlib.util
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from nmsparse._logging import logger
from nmsparse._version import __version__
from nmsparse.errors import ConfigError
from nmsparse.prune import DynamicSparsifier, get_masks

from .. import _run
from .._common import warm_up_solvers as _warm_up
from .._run import BASELINE_DIR, PLOT_FILE
from ..distributed import DistContext, all_reduce_sum, barrier, gather_objects, main_first
from ..rundir import Checkpoint, RunDir, config_hash
from ..unstructured import UnstructuredSparsifier
from .config import DENSE, LMTrainConfig, lm_config_to_yaml, load_lm_config
from .data import LMData
from .model import GPT
from .parallel import (
    DEFAULT_PARALLEL,
    FSDP_ACCELERATE_REASON,
    check_parallel,
    full_tensors,
    load_optimizer_state_,
    local_rows,
    masks_agree,
    sharded_heldout_loss,
    wrap_model,
)
from .pretrained import (
    StaticMasks,
    attach_masks,
    carries_masks,
    default_include,
    export_lm,
    lm_data,
    load_pretrained_lm,
    logits_of,
)

__all__ = [
    "LMTrainer",
    "LMTrainerResult",
    "LMRunSummary",
    "run_lm_training",
    "heldout_loss",
    "learning_rate",
    "warm_up_solvers",
    "TASK",
    "BASELINE_DIR",
    "HF_DIR",
    "PLOT_FILE",
]

TASK = "lm"
HF_DIR = "hf"
_LN2 = math.log(2.0)

EvalCallback = Callable[[str, dict[str, Any]], None]


def learning_rate(config: LMTrainConfig, step: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then cosine to ``min_lr_ratio * lr``.

    Example:
        >>> cfg = LMTrainConfig(steps=100, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1)
        >>> learning_rate(cfg, 0), learning_rate(cfg, 9), round(learning_rate(cfg, 99), 6)
        (0.0001, 0.001, 0.0001)
    """
    return _run.warmup_cosine_lr(
        step,
        peak=config.lr,
        warmup=config.warmup_steps,
        decay_steps=config.steps - 1 - config.warmup_steps,
        floor=config.min_lr_ratio,
    )


@torch.no_grad()
def heldout_loss(
    model: nn.Module,
    data: LMData,
    *,
    context: int,
    batch_size: int = 32,
    max_tokens: int | None = None,
    device: torch.device | str = "cpu",
) -> float:
    """Mean cross-entropy (nats per token) on the held-out windows (:meth:`LMData.heldout_batches`).

    ``exp`` of it is the perplexity; divided by ``ln 2`` it is bits per byte (one token is one byte).
    """
    training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in data.heldout_batches(context=context, batch_size=batch_size, max_tokens=max_tokens, device=device):
            logits = logits_of(model(batch))
            out = logits[:, :-1]
            total += float(
                F.cross_entropy(out.reshape(-1, out.shape[-1]).float(), batch[:, 1:].reshape(-1), reduction="sum")
            )
            count += batch[:, 1:].numel()
    finally:
        model.train(training)
    return total / count


def warm_up_solvers(config: LMTrainConfig, structures: list[str] | None = None) -> float:
    """Compile (or load) the mask solvers of ``structures`` (default: the run's) before any timed work; returns
    the seconds it took (``compile_seconds``)."""
    return _warm_up(structures or [config.structure], {config.method, config.initial_method})


@dataclass(kw_only=True)
class LMTrainerResult(_run.FitResult):
    """Outcome of :meth:`LMTrainer.fit` (losses in nats per token): the fields of every
    :class:`~nmsparse.recipes._run.FitResult` (one history record per evaluation), and

    Attributes:
        seed: the run's seed.
        step: optimizer steps done.
        heldout_loss / heldout_perplexity / heldout_bits_per_byte: on the whole held-out stream, at the end.
        train_loss: mean training loss over the last evaluation interval.
        parameters: parameter count of the model.
        world_size / parallel: processes and engine (``"fsdp"``, ``"ddp"``; ``None`` for one process).
    """

    seed: int
    step: int
    heldout_loss: float
    heldout_perplexity: float
    heldout_bits_per_byte: float
    train_loss: float | None
    parameters: int = 0
    world_size: int = 1
    parallel: str | None = None


class LMTrainer(_run.RecipeTrainer):
    """Trains one :class:`~nmsparse.recipes.lm.model.GPT` under one structure, checkpointing every evaluation.

    Args:
        config: the settings (``config.pattern`` is ignored; ``structure`` says what to train).
        data: token streams (:func:`~nmsparse.recipes.lm.data.build_lm_data`).
        structure: ``"dense"``, an n:m pattern (dynamic SR-STE masks) or ``"unstructured"`` (dynamic 50%).
        run: the run directory to checkpoint into (``None``: nothing is written).
        section: sub-folder of ``run`` for this trainer (``""``: the run directory itself).
        digest: config hash stored in (and checked against) checkpoints.
        progress: progress bar (``None``: on a terminal).
        label: name in the progress bar and logs.
        on_eval: ``callback(label, record)`` after every evaluation (rank 0 only).
        dist: data-parallel context (:func:`~nmsparse.recipes.distributed.init_distributed`; ``None``: one
            process). Every rank builds the same model and masks; :meth:`fit` wraps it (:mod:`.parallel`).
        parallel: ``"fsdp"`` (FSDP2) or ``"ddp"``, with more than one process.

    Raises:
        ConfigError: a structure no block linear can take, an unavailable device, or a global batch that does
            not split over the ranks.
    """

    def __init__(
        self,
        config: LMTrainConfig,
        data: LMData,
        *,
        structure: str,
        run: RunDir | None = None,
        section: str = "",
        digest: str = "",
        progress: bool | None = None,
        label: str | None = None,
        on_eval: EvalCallback | None = None,
        dist: DistContext | None = None,
        parallel: str = DEFAULT_PARALLEL,
    ) -> None:
        self.config = config
        self.data = data
        self.structure = structure
        self.run = run
        self.section = section
        self.digest = digest
        self.progress = progress
        self.label = label or structure
        self.on_eval = on_eval
        self.dist = dist or DistContext()
        self.parallel = parallel if self.dist.enabled else None
        if self.dist.enabled:
            check_parallel(parallel, config.batch_size, self.dist)
        self.device = _run.resolve_device(config.device, self.dist)
        self.threads = config.torch_threads()
        _run.seed_everything(config.seed)
        # --model hf:FOLDER: a transformers causal LM, used through the same interface (forward -> logits_of,
        # num_parameters) as the recipe's decoder.
        self.model = (
            GPT(config.gpt_config(data.vocab_size)).to(self.device)
            if config.model is None
            else cast(GPT, load_pretrained_lm(config, device=self.device))
        )
        include = list(config.include) if config.include is not None else default_include(self.model)
        exclude = list(config.exclude) if config.exclude is not None else None
        self.sparsifier: DynamicSparsifier | UnstructuredSparsifier | StaticMasks | None = None
        if structure != DENSE:
            self.sparsifier = _run.training_sparsifier(
                self.model, structure, config, dynamic=config.mode != "static", include=include, exclude=exclude
            )
            if self.sparsifier is None:  # static n:m: the folder's masks, or chosen once
                self.sparsifier = attach_masks(self.model, config, structure, include=include, exclude=exclude)
        if self.sparsifier is not None:
            masks_agree(self.model, self.dist, where=f"{self.label}: initial masks")
        self.acceleration: dict[str, Any] | None = None
        if config.accelerate and self.parallel == "fsdp":
            self.acceleration = {"reason": FSDP_ACCELERATE_REASON}
            if self.dist.is_main:
                logger.warning("lm: %s: --accelerate under FSDP2: %s", self.label, FSDP_ACCELERATE_REASON)
        elif config.accelerate:
            # After the masks (swapped layers share their Parameters and masks), before the optimizer.
            self.acceleration = _run.accelerate_layers(
                self.model,
                None if structure == DENSE else structure,
                tokens=config.batch_size // self.dist.world_size * config.context,
                layers=self.sparse_layers,
                label="dense baseline" if section == BASELINE_DIR else self.label,
            )
        self.optimizer = self._optimizer()
        self.module: nn.Module = self.model  # what the training step calls: the model, or its DDP wrapper
        self._wrapped = False
        self._start_loop()

    # --------------------------------------------------------------------------------------------- pieces

    def _optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        matrices = [p for p in self.model.parameters() if p.dim() >= 2]
        vectors = [p for p in self.model.parameters() if p.dim() < 2]
        groups = [{"params": matrices, "weight_decay": cfg.weight_decay}, {"params": vectors, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))

    @property
    def sparse_layers(self) -> list[str]:
        """Names of the masked layers (empty for dense)."""
        return [] if self.sparsifier is None else list(self.sparsifier.layers)

    def mask_density(self) -> float | None:
        """Fraction of the masked layers' weights that are kept (``None`` for dense)."""
        if self.sparsifier is None:
            return None
        kept = total = 0
        masks = get_masks(self.model)
        for mask in (full_tensors(masks) if self.dist.enabled else masks).values():  # sharded: every rank
            kept += int(mask.sum())
            total += mask.numel()
        return kept / total if total else None

    def _model_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        if self.sparsifier is None:
            return {k: v.detach() for k, v in self.model.state_dict().items()}, {}
        from nmsparse.io import pruned_state_dict

        return pruned_state_dict(self.model)

    def _save(self) -> None:
        if self.run is None:
            return
        tensors, metadata = self._model_tensors()
        optimizer_state = self.optimizer.state_dict()
        parallel: dict[str, Any] = {}
        if self.dist.enabled:  # full tensors (collectives: every rank), written by rank 0
            tensors, optimizer_state = full_tensors(tensors), full_tensors(optimizer_state)
            parallel = {
                "torch_rng_per_rank": gather_objects(torch.get_rng_state(), self.dist),
                "world_size": self.dist.world_size,
                "parallel": self.parallel,
            }
            if not self.dist.is_main:
                return
        state = {
            "step": self.step,
            "optimizer": optimizer_state,
            "sparsifier": None if self.sparsifier is None else self.sparsifier.state_dict(),
            "torch_rng": torch.get_rng_state(),
            **self._loop_state(),
            "structure": self.structure,
            **parallel,
        }
        self.run.save_checkpoint(
            Checkpoint(
                epoch=len(self.history),
                config_hash=self.digest,
                tensors=tensors,
                tensor_metadata=metadata,
                state=state,
                history=self.history,
                task=TASK,
            ),
            self.section,
        )

    def load_checkpoint(self) -> bool:
        """Restore this trainer from its section's checkpoint; ``False`` when there is none.

        Raises:
            CheckpointError: a checkpoint of other settings or of another structure, or a damaged one.
        """
        if self.run is None:
            return False
        ckpt = self.run.load_checkpoint(self.section, config_hash=self.digest)
        if ckpt is None:
            return False
        from nmsparse.errors import CheckpointError, MaskMismatchError

        state = ckpt.state
        where = self.run.section_dir(self.section)
        saved = state.get("structure") if isinstance(state, dict) else None
        if saved != self.structure:
            raise CheckpointError(f"{where}: checkpoint of structure {saved!r}, this trainer trains {self.structure!r}")
        try:
            if self.sparsifier is None:
                self.model.load_state_dict(ckpt.tensors)
            else:
                from nmsparse.io import load_pruned_state_dict_

                load_pruned_state_dict_(self.model, ckpt.tensors, ckpt.tensor_metadata)
        except (MaskMismatchError, RuntimeError) as exc:
            raise CheckpointError(f"{where}: the checkpoint does not fit the model ({exc})") from None
        # Loading may re-create parametrizations: build the optimizer on the parameters as they are now.
        self.optimizer = self._optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        if self.sparsifier is not None:
            self.sparsifier.load_state_dict(state["sparsifier"])
        per_rank = state.get("torch_rng_per_rank")
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.dist.world_size and self.dist.is_main:
            logger.warning(
                "%s: checkpoint written by %d process(es), resuming with %d: the batches are the same, "
                "float summation order is not (not bit-identical)",
                where,
                saved_world,
                self.dist.world_size,
            )
        if per_rank is not None and len(per_rank) == self.dist.world_size:
            torch.set_rng_state(per_rank[self.dist.rank])
        else:
            torch.set_rng_state(state["torch_rng"])
        self._restore_loop(state, ckpt.history)
        return True

    def _wrap(self) -> None:
        """Under ``torchrun``: shard (FSDP2) or wrap (DDP) the model, then rebuild the optimizer on its parameters,
        carrying over its state (a resumed checkpoint's, cut into shards)."""
        if self.parallel is None or self._wrapped:
            return
        masks_agree(self.model, self.dist, where=f"{self.label}: masks before {self.parallel}")
        state = self.optimizer.state_dict()
        self.module = wrap_model(self.model, self.parallel, self.dist, self.device)
        self._wrapped = True
        self.optimizer = self._optimizer()
        load_optimizer_state_(self.optimizer, state)

    def _heldout(self, max_tokens: int | None) -> float:
        cfg = self.config
        if self.dist.enabled:
            return sharded_heldout_loss(
                self.model,
                self.data,
                context=cfg.context,
                batch_size=cfg.eval_batch_size,
                ctx=self.dist,
                max_tokens=max_tokens,
                device=self.device,
            )
        return heldout_loss(
            self.model,
            self.data,
            context=cfg.context,
            batch_size=cfg.eval_batch_size,
            max_tokens=max_tokens,
            device=self.device,
        )

    def _train_steps(self, until: int, bar: Any) -> dict[str, float]:
        cfg = self.config
        self.model.train()
        loss_sum, count = 0.0, 0
        refresh_before = 0.0 if self.sparsifier is None else self.sparsifier.refresh_seconds
        start = time.perf_counter()
        while self.step < until:
            lr = learning_rate(cfg, self.step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            x, y = self.data.train_batch(
                step=self.step, batch_size=cfg.batch_size, context=cfg.context, seed=cfg.seed, device=self.device
            )
            x, y = local_rows(x, self.dist), local_rows(y, self.dist)  # this rank's rows of the global batch
            logits = logits_of(self.module(x))  # (B, T, vocab)
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            self.step += 1
            if self.sparsifier is not None and self.sparsifier.step():
                _run.keep_threads(self.threads)  # numba's OpenMP layer may reset torch's thread count
                masks_agree(self.model, self.dist, where=f"{self.label}: step {self.step} refresh")
            value = float(loss.detach())
            _run.check_finite_loss(value, label=self.label, when=f"at step {self.step}", lr=cfg.lr)
            loss_sum += value
            count += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{value:.3f}")
        refresh = (0.0 if self.sparsifier is None else self.sparsifier.refresh_seconds) - refresh_before
        loss_total, count_total = all_reduce_sum([loss_sum, count], self.dist)  # mean over ranks too
        return {
            "train_loss": loss_total / max(count_total, 1),
            "seconds": time.perf_counter() - start,
            "refresh_seconds": refresh,
        }

    # ---------------------------------------------------------------------------------------------- loop

    def _interval(self, bar: Any) -> tuple[dict[str, Any], float]:
        """Steps to the next evaluation, and the evaluation: its metrics record and training seconds."""
        cfg = self.config
        boundary = min(cfg.steps, (self.step // cfg.eval_every + 1) * cfg.eval_every)
        stats = self._train_steps(boundary, bar)
        loss = self._heldout(cfg.eval_tokens)
        return {
            "epoch": len(self.history) + 1,
            "step": self.step,
            "lr": learning_rate(cfg, self.step - 1),
            "train_loss": stats["train_loss"],
            "heldout_loss": loss,
            "heldout_perplexity": math.exp(loss),
            "seconds": stats["seconds"],
            "refresh_seconds": stats["refresh_seconds"],
        }, stats["seconds"]

    def fit(self, *, resume: bool = False, stop_after_step: int | None = None) -> LMTrainerResult:
        """Train to ``config.steps`` (or ``stop_after_step``), evaluating and checkpointing every ``eval_every``.

        Args:
            resume: continue from the section's checkpoint when there is one.
            stop_after_step: stop at the first evaluation at or after this step (simulates an interruption; the
                result has ``completed=False`` and no final full evaluation).

        Returns:
            An :class:`LMTrainerResult`.
        """
        cfg = self.config
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            if resume:  # rank 0 first: it reconciles metrics.jsonl with the checkpoint
                main_first(self.load_checkpoint, self.dist)
            elif self.run is not None and self.dist.is_main:
                self.run.discard_metrics(self.section)
            self._wrap()
            last = cfg.steps if stop_after_step is None else min(cfg.steps, stop_after_step)
            bar = _run.progress_bar(
                self.progress,
                total=cfg.steps,
                initial=self.step,
                desc=self.label,
                show=self.step < last and self.dist.is_main,
            )
            self._loop(bar, more=lambda: self.step < last, stretch=self._interval, callback=self.on_eval)
            completed = self.step >= cfg.steps
            if completed:
                final = self._heldout(None)
            else:
                final = self.history[-1]["heldout_loss"] if self.history else float("nan")
        finally:
            torch.set_num_threads(previous_threads)
        return LMTrainerResult(
            structure=self.structure,
            seed=cfg.seed,
            completed=completed,
            step=self.step,
            heldout_loss=final,
            heldout_perplexity=math.exp(final) if math.isfinite(final) else float("nan"),
            heldout_bits_per_byte=final / _LN2,
            train_loss=self.history[-1]["train_loss"] if self.history else None,
            history=list(self.history),
            mask_valid=None if self.sparsifier is None else bool(self.sparsifier.masks_valid()),
            mask_density=self.mask_density(),
            sparse_layers=self.sparse_layers,
            refreshes=0 if self.sparsifier is None else self.sparsifier.refreshes,
            refresh_seconds=0.0 if self.sparsifier is None else self.sparsifier.refresh_seconds,
            train_seconds=self.train_seconds,
            wall_seconds=self.wall_seconds,
            parameters=self.model.num_parameters(),
            acceleration=self.acceleration,
            world_size=self.dist.world_size,
            parallel=self.parallel,
        )

    def export_model(self) -> GPT | None:
        """The trained model as a plain single-process module on rank 0 (``None`` on the other ranks).

        Under FSDP2 the full weights (and masks) are gathered into a fresh copy (a collective: every rank calls
        it); otherwise it is :attr:`model` itself.
        """
        if self.parallel != "fsdp":
            return self.model if self.dist.is_main else None
        tensors, metadata = full_tensors(self._model_tensors())
        if not self.dist.is_main:
            return None
        with torch.random.fork_rng(devices=[]):  # a fresh model of the same architecture, on the CPU
            plain = (
                GPT(self.config.gpt_config(self.data.vocab_size))
                if self.config.model is None
                else cast(GPT, load_pretrained_lm(self.config, device=torch.device("cpu")))
            )
        if metadata:
            from nmsparse.io import load_pruned_state_dict_

            load_pruned_state_dict_(plain, tensors, metadata)
        else:
            plain.load_state_dict(tensors)
        return plain


@dataclass
class LMRunSummary(_run.JSONRecord):
    """What ``nmsparse train lm`` reports and writes to ``summary.json`` (losses in nats per token).

    Attributes:
        task: ``"lm"``.
        pattern: the structure of the main model (``"dense"`` when only a dense model was trained).
        heldout_loss / heldout_perplexity / heldout_bits_per_byte: the main model on the whole held-out text.
        baseline_heldout_loss / baseline_heldout_perplexity: the dense baseline (``None`` without one).
        loss_gap_percent: ``100 * (sparse - dense) / dense`` held-out loss (``None`` without a baseline).
        mask_valid / mask_density / sparse_layers: the final masks.
        steps / tokens_seen: optimizer steps and training tokens per model.
        refreshes / refresh_seconds: mask refreshes of the main model.
        compile_seconds: solver kernels compiled or loaded before training (a fresh machine pays it once).
        train_seconds / baseline_train_seconds / wall_seconds: training-loop time of each model and the whole
            run (this session; resumed runs add up the trainers' own times).
        parameters: parameters of the decoder.
        data: corpus hash, tokenizer and token counts (:meth:`LMData.describe`).
        hf_folder / baseline_hf_folder: the ``transformers`` folders (relative to the run directory).
        threads / device / load_average / torch / python / nmsparse_version / config: how it ran.
        history / baseline_history: the evaluation records.
        acceleration / baseline_acceleration: with ``accelerate``: the ``nmsparse.accelerate_`` report of each
            model (``None`` without ``accelerate`` or without a baseline).
        world_size / parallel: processes and engine (``"fsdp"``, ``"ddp"``; ``None`` for one process).
    """

    task: str
    pattern: str
    heldout_loss: float
    heldout_perplexity: float
    heldout_bits_per_byte: float
    baseline_heldout_loss: float | None
    baseline_heldout_perplexity: float | None
    loss_gap_percent: float | None
    mask_valid: bool | None
    mask_density: float | None
    sparse_layers: list[str]
    steps: int
    tokens_seen: int
    refreshes: int
    refresh_seconds: float
    compile_seconds: float
    train_seconds: float
    baseline_train_seconds: float | None
    wall_seconds: float
    parameters: int
    data: dict[str, Any]
    hf_folder: str | None
    baseline_hf_folder: str | None
    threads: int
    device: str
    load_average: list[float] | None
    torch: str
    python: str
    nmsparse_version: str
    config: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    baseline_history: list[dict[str, Any]] = field(default_factory=list)
    acceleration: dict[str, Any] | None = None
    baseline_acceleration: dict[str, Any] | None = None
    world_size: int = 1
    parallel: str | None = None


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        return None


def _hf_metadata(config: LMTrainConfig, data: LMData, result: LMTrainerResult) -> dict[str, Any]:
    return {
        "recipe": "nmsparse.recipes.lm",
        "structure": result.structure,
        "tokenizer": data.tokenizer,
        "corpus_sha256": data.corpus_sha256,
        "heldout_permille": config.heldout_permille,
        "sources": list(config.sources),
        "heldout_loss": result.heldout_loss,
        "heldout_perplexity": result.heldout_perplexity,
        "steps": result.step,
        "seed": config.seed,
    }


def run_lm_training(
    config: LMTrainConfig | None,
    out: str | os.PathLike[str] | None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    on_eval: EvalCallback | None = None,
    dist: DistContext | None = None,
    parallel: str = DEFAULT_PARALLEL,
) -> LMRunSummary:
    """Train ``config.pattern`` and (``config.baseline``) the same decoder dense; write the run directory.

    Args:
        config: the settings; with ``resume`` it may be ``None`` (read from ``out/config.yaml``), otherwise it
            must equal the run's.
        out: run directory (``None``: train in memory, write nothing).
        resume: continue the run in ``out`` from its checkpoints.
        overwrite: replace a run's files in ``out`` (a finished run's summary, with ``resume``).
        progress: progress bars (``None``: on a terminal).
        on_eval: ``callback(label, record)`` after every evaluation.
        dist: data-parallel context (``None``: one process). Every rank calls this function; rank 0 alone writes
            the run directory, and every rank returns the summary.
        parallel: ``"fsdp"`` (FSDP2) or ``"ddp"``, with more than one process (:mod:`.parallel`).

    Returns:
        An :class:`LMRunSummary` (also written to ``out/summary.json``).

    Raises:
        OverwriteError: ``out`` holds files this run would replace (see :class:`RunDir`).
        CheckpointError: a damaged checkpoint or one of other settings.
        ConfigError: bad settings.
    """
    start = time.perf_counter()
    dist = dist or DistContext()
    if config is None and not resume:
        raise ConfigError("run_lm_training: give a config (or resume=True with an existing run)")
    run = _run.open_run(
        out,
        task=TASK,
        outputs=(PLOT_FILE, HF_DIR),
        sections=(BASELINE_DIR,),
        resume=resume,
        overwrite=overwrite,
        dist=dist,
        what="run_lm_training",
    )
    if run is not None and resume:
        saved = load_lm_config(run.config_path)
        if config is not None:
            _run.check_same_settings(config.to_dict(), saved.to_dict(), where=run.config_path)
        config = saved
    assert config is not None
    data = lm_data(config)  # --data files or the embedded text; the --model folder's tokenizer or bytes
    structure = config.structure
    digest = config_hash(config.to_dict())
    # Build the trainers (checks the device, the layers and the masks) before anything is written.
    main = LMTrainer(
        config,
        data,
        structure=structure,
        run=run,
        digest=digest,
        progress=progress,
        label=structure,
        on_eval=on_eval,
        dist=dist,
        parallel=parallel,
    )
    baseline = None
    if config.baseline and structure != DENSE and not carries_masks(config):  # a pruned folder has no dense twin
        baseline = LMTrainer(
            config,
            data,
            structure=DENSE,
            run=run,
            section=BASELINE_DIR,
            digest=digest,
            progress=progress,
            label="dense",
            on_eval=on_eval,
            dist=dist,
            parallel=parallel,
        )
    barrier(dist)  # every rank has checked the directory (RunDir.prepare) before rank 0 writes into it
    if run is not None and not resume and dist.is_main:
        run.create(config_text=lm_config_to_yaml(config), config_hash=digest)
        if baseline is not None:
            run.section_dir(BASELINE_DIR).mkdir(parents=True, exist_ok=True)
    load_start = _load_average()
    compile_seconds = warm_up_solvers(config)
    logger.info(
        "lm: %s decoder (%d parameters), corpus %s, %d threads",
        structure,
        main.model.num_parameters(),
        data.corpus_sha256[:12],
        main.threads,
    )
    result = main.fit(resume=resume)
    base_result = baseline.fit(resume=resume) if baseline is not None else None
    dense_trainer = baseline if baseline is not None else (main if structure == DENSE else None)
    hf_folder = baseline_hf = None
    if run is not None and importlib.util.find_spec("transformers") is None:
        if dist.is_main:
            logger.warning(
                "lm: transformers is not installed, so the models are not exported as transformers "
                "folders (pip install 'nmsparse[lm]'); the checkpoints hold them"
            )
    elif run is not None:
        exported = main.export_model()  # under FSDP2 a collective: every rank
        if exported is not None:
            export_lm(
                exported,
                run.path / HF_DIR,
                config=config,
                structure=structure,
                metadata=_hf_metadata(config, data, result),
            )
        hf_folder = HF_DIR
        if baseline is not None and base_result is not None:
            exported = baseline.export_model()
            if exported is not None:
                export_lm(
                    exported,
                    run.section_dir(BASELINE_DIR) / HF_DIR,
                    config=config,
                    structure=DENSE,
                    metadata=_hf_metadata(config, data, base_result),
                )
            baseline_hf = f"{BASELINE_DIR}/{HF_DIR}"
        elif dense_trainer is main:
            baseline_hf = HF_DIR
    gap = None
    if base_result is not None:
        gap = 100.0 * (result.heldout_loss - base_result.heldout_loss) / base_result.heldout_loss
    load_end = _load_average()
    summary = LMRunSummary(
        task=TASK,
        pattern=structure,
        heldout_loss=result.heldout_loss,
        heldout_perplexity=result.heldout_perplexity,
        heldout_bits_per_byte=result.heldout_bits_per_byte,
        baseline_heldout_loss=None if base_result is None else base_result.heldout_loss,
        baseline_heldout_perplexity=None if base_result is None else base_result.heldout_perplexity,
        loss_gap_percent=gap,
        mask_valid=result.mask_valid,
        mask_density=result.mask_density,
        sparse_layers=result.sparse_layers,
        steps=result.step,
        tokens_seen=result.step * config.batch_size * config.context,
        refreshes=result.refreshes,
        refresh_seconds=result.refresh_seconds,
        compile_seconds=compile_seconds,
        train_seconds=result.train_seconds,
        baseline_train_seconds=None if base_result is None else base_result.train_seconds,
        wall_seconds=time.perf_counter() - start,
        parameters=result.parameters,
        data=data.describe(),
        hf_folder=hf_folder,
        baseline_hf_folder=baseline_hf,
        threads=main.threads,
        device=str(main.device),
        load_average=None
        if load_start is None or load_end is None
        else [round((a + b) / 2, 2) for a, b in zip(load_start, load_end)],
        torch=torch.__version__,
        python=platform.python_version(),
        nmsparse_version=__version__,
        config=config.to_dict(),
        history=result.history,
        baseline_history=[] if base_result is None else base_result.history,
        acceleration=result.acceleration,
        baseline_acceleration=None if base_result is None else base_result.acceleration,
        world_size=dist.world_size,
        parallel=main.parallel,
    )
    from ..plots import plot_lm_curves

    curves = {result.structure: result.history}
    if base_result is not None:
        curves["dense"] = base_result.history
    _run.finish_run(
        run,
        dist,
        summary=summary,
        curves=curves,
        plot=plot_lm_curves,
        title=f"{config.n_layer}x{config.d_model} decoder on embedded Python docs (bytes)",
    )
    return summary
