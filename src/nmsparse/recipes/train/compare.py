"""Train one model under several sparsity structures with identical seeds, and relate accuracy to mask diversity.

Default structures: dense, 2:4, 4:8, 2:4-T, 4:8-T and unstructured 50%. Every structure sparsifies the same
layers (those that take ``4:8-T``; see :mod:`nmsparse.recipes.train.unstructured`) with the same training recipe
(dynamic SR-STE masks refreshed every ``refresh_every`` steps by default; unstructured masks are per-layer
magnitude masks refreshed the same way). Mask diversity is the exact count of :func:`nmsparse.mask_diversity`
for a reference tensor of ``reference_numel`` weights at 50% density, shown as ``log10``.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nmsparse.diversity import log10_mask_diversity
from nmsparse.errors import ConfigError
from nmsparse.pattern import NMPattern
from .checkpoint import write_text_atomic
from .config import UNSTRUCTURED, TrainConfig, config_to_yaml
from .data import build_data
from .distributed import DistContext
from .trainer import CONFIG_FILE, Trainer

__all__ = ["DEFAULT_STRUCTURES", "DEFAULT_REFERENCE_NUMEL", "CompareResult", "compare_structures",
           "structure_slug"]

#: Structures trained by default.
DEFAULT_STRUCTURES = ("dense", "2:4", "4:8", "2:4-T", "4:8-T", UNSTRUCTURED)
#: Tensor size mask diversity is computed for: 4096 = 64 blocks of 8x8, a multiple of every m*m used here.
DEFAULT_REFERENCE_NUMEL = 4096
COMPARE_JSON = "compare.json"
COMPARE_PLOT = "compare.png"

RunCallback = Callable[[dict[str, Any]], None]


def structure_slug(structure: str) -> str:
    """Directory-safe name of a structure (``"4:8-T"`` -> ``"4x8-T"``)."""
    return structure.replace(":", "x")


def _check_structures(structures: Sequence[str]) -> list[str]:
    out = []
    for item in structures:
        if not isinstance(item, str):
            raise ConfigError(f"compare: structures must be strings, got {item!r}")
        name = item.strip()
        if name.lower() in ("dense", UNSTRUCTURED):
            out.append(name.lower())
            continue
        try:
            out.append(str(NMPattern.parse(name)))
        except ValueError as exc:
            raise ConfigError(f"compare: structure {item!r}: {exc}; or use 'dense' or '{UNSTRUCTURED}'") from None
    if not out:
        raise ConfigError("compare: give at least one structure, e.g. dense 2:4 4:8-T")
    if len(set(out)) != len(out):
        raise ConfigError(f"compare: structures repeat: {out}")
    return out


@dataclass
class CompareResult:
    """Rows of a comparison (one per structure, averaged over seeds) and where they were written.

    Attributes:
        rows: ``structure``, ``test_accuracy`` (mean over seeds, %), ``test_accuracy_std``, ``accuracies``
            (per seed), ``log10_mask_diversity`` (``None`` for dense), ``mask_valid``, ``refresh_overhead``,
            ``train_seconds``.
        reference_numel: tensor size of the diversity column.
        seeds: seeds trained.
        out_dir: directory holding ``compare.json``, ``compare.png`` and one sub-directory per run.
    """

    rows: list[dict[str, Any]]
    reference_numel: int
    seeds: list[int]
    out_dir: Path | None


def compare_structures(config: TrainConfig, *, structures: Sequence[str] = DEFAULT_STRUCTURES,
                       seeds: Sequence[int] | None = None, out_dir: str | Path | None = None,
                       reference_numel: int = DEFAULT_REFERENCE_NUMEL, dist: DistContext | None = None,
                       progress: bool | None = None, on_run_end: RunCallback | None = None) -> CompareResult:
    """Train ``config``'s model once per structure and seed; report accuracy against exact mask diversity.

    Args:
        config: the recipe shared by every run (its ``pattern`` and ``baseline`` are overridden; ``mode``
            ``"dense"`` is read as ``"dynamic"`` for the sparse structures).
        structures: ``"dense"``, n:m patterns and/or ``"unstructured"``.
        seeds: seeds to train each structure with (default: ``[config.seed]``); every structure sees the same.
        out_dir: where to write ``compare.json``, ``compare.png`` and each run's checkpoint (rank 0).
        reference_numel: tensor size for the diversity column (a multiple of 64 fits every default structure).
        dist: data-parallel context.
        progress: progress bars.
        on_run_end: ``callback(record)`` after each run, with ``structure``, ``seed`` and ``test_accuracy``.

    Returns:
        A :class:`CompareResult`.

    Raises:
        ConfigError: bad structures or seeds.
    """
    dist = dist or DistContext()
    names = _check_structures(structures)
    seed_list = [config.seed] if seeds is None else [int(s) for s in seeds]
    if not seed_list or any(s < 0 for s in seed_list):
        raise ConfigError(f"compare: seeds must be integers >= 0, got {list(seeds or [])}")
    diversity: dict[str, float | None] = {"dense": None}
    for name in names:
        if name != "dense":
            diversity[name] = log10_mask_diversity(name, reference_numel)
    root = None if out_dir is None else Path(out_dir)
    if root is not None and dist.is_main:
        root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(root / CONFIG_FILE, config_to_yaml(config))
    data = build_data(config)
    sparse_mode = "dynamic" if config.mode == "dense" else config.mode
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for seed in seed_list:
        for name in names:
            cfg = config.replace(seed=seed, baseline=False, mode="dense" if name == "dense" else sparse_mode,
                                 pattern=config.pattern if name == "dense" else name)
            run_dir = None
            if root is not None:
                run_dir = root / (structure_slug(name) if len(seed_list) == 1 else f"{structure_slug(name)}-seed{seed}")
            start = time.perf_counter()
            result = Trainer(cfg, data, out_dir=run_dir, dist=dist, progress=progress,
                             label=f"{name} (seed {seed})").fit()
            record = {"structure": name, "seed": seed, "test_accuracy": result.test_accuracy,
                      "mask_valid": result.mask_valid, "refresh_overhead": result.refresh_overhead,
                      "train_seconds": result.train_seconds, "seconds": time.perf_counter() - start}
            runs[name].append(record)
            if on_run_end is not None and dist.is_main:
                on_run_end(record)
    rows = []
    for name in names:
        accuracies = [r["test_accuracy"] for r in runs[name]]
        overheads = [r["refresh_overhead"] for r in runs[name] if r["refresh_overhead"] is not None]
        rows.append({
            "structure": name,
            "test_accuracy": statistics.fmean(accuracies),
            "test_accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            "accuracies": accuracies,
            "log10_mask_diversity": diversity[name],
            "mask_valid": None if name == "dense" else all(bool(r["mask_valid"]) for r in runs[name]),
            "refresh_overhead": statistics.fmean(overheads) if overheads else None,
            "train_seconds": statistics.fmean(r["train_seconds"] for r in runs[name]),
        })
    result = CompareResult(rows=rows, reference_numel=reference_numel, seeds=seed_list, out_dir=root)
    if root is not None and dist.is_main:
        from .plots import plot_accuracy_vs_diversity

        payload = {"model": config.model, "data": config.data, "mode": sparse_mode, "epochs": config.epochs,
                   "seeds": seed_list, "reference_numel": reference_numel,
                   "diversity": "exact log10 mask diversity at 50% density (nmsparse.log10_mask_diversity)",
                   "rows": rows}
        write_text_atomic(root / COMPARE_JSON, json.dumps(payload, indent=2) + "\n")
        plot_accuracy_vs_diversity(rows, root / COMPARE_PLOT, reference_numel=reference_numel,
                                   title=f"{config.model} on {data.name}, {sparse_mode} masks, "
                                         f"{len(seed_list)} seed(s)")
    return result
