"""Train one model under several sparsity structures with identical seeds, and relate accuracy to mask diversity.

Default structures: dense, 2:4, 4:8, 2:4-T, 4:8-T and unstructured 50%. Every structure sparsifies the same
layers (those that take ``4:8-T``; see :mod:`nmsparse.recipes.unstructured`) with the same training recipe
(dynamic SR-STE masks refreshed every ``refresh_every`` steps by default; unstructured masks are per-layer
magnitude masks refreshed the same way). Mask diversity is the exact count of :func:`nmsparse.mask_diversity`
for a reference tensor of ``reference_numel`` weights at 50% density, shown as ``log10``.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nmsparse.errors import ConfigError

from .. import _run
from .._common import (
    DEFAULT_REFERENCE_NUMEL,
    DEFAULT_STRUCTURES,
    RunCallback,
    check_structures,
    structure_slug,
)
from ..distributed import DistContext
from ..rundir import config_hash
from .config import UNSTRUCTURED, TrainConfig, config_to_yaml, load_config
from .data import DataBundle, build_data
from .models import build_model
from .trainer import MODEL_FILE, Trainer, warm_up_solvers

__all__ = ["DEFAULT_STRUCTURES", "DEFAULT_REFERENCE_NUMEL", "CompareResult", "compare_structures", "structure_slug"]

#: Task name recorded in comparison directories.
TASK = "compare"


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
        compile_seconds: time spent compiling the mask solvers before the timed work.
    """

    rows: list[dict[str, Any]]
    reference_numel: int
    seeds: list[int]
    out_dir: Path | None
    compile_seconds: float = 0.0


def _run_config(config: TrainConfig, name: str, seed: int) -> TrainConfig:
    sparse_mode = "dynamic" if config.mode == "dense" else config.mode
    return config.replace(
        seed=seed,
        baseline=False,
        mode="dense" if name == "dense" else sparse_mode,
        pattern=config.pattern if name == "dense" else name,
    )


def _check_fits(config: TrainConfig, data: DataBundle, names: Sequence[str]) -> None:
    """Every structure can prune at least one layer of the model (raised now, before anything is written)."""
    from nmsparse.pattern import NMPattern
    from nmsparse.prune.select import require_selected, select_layers

    model = build_model(
        config.model,
        in_channels=data.in_channels,
        num_classes=data.num_classes,
        image_size=data.image_size,
        width=config.width,
    )
    for name in names:
        if name in ("dense", UNSTRUCTURED):
            continue
        selection = select_layers(
            model, name, include=config.include, exclude=config.exclude, keep_first_last=config.keep_first_last
        )
        require_selected(selection, NMPattern.parse(name), where=f"compare: structure {name!r}")


def compare_structures(
    config: TrainConfig,
    *,
    structures: Sequence[str] = DEFAULT_STRUCTURES,
    seeds: Sequence[int] | None = None,
    out_dir: str | Path | None = None,
    reference_numel: int = DEFAULT_REFERENCE_NUMEL,
    dist: DistContext | None = None,
    progress: bool | None = None,
    on_run_end: RunCallback | None = None,
    overwrite: bool = False,
    resume: bool = False,
) -> CompareResult:
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
        overwrite: replace the files of an earlier comparison (or run) in ``out_dir``.
        resume: continue the interrupted comparison in ``out_dir`` (each run from its last checkpoint; bit-identical
            to an uninterrupted comparison). ``config`` must be its ``config.yaml``, and ``structures``, ``seeds``
            and ``reference_numel`` those it recorded in ``compare_plan.json``.

    Returns:
        A :class:`CompareResult`.

    Raises:
        ConfigError: bad structures or seeds, or a structure that fits no layer (before anything is written).
        OverwriteError: ``out_dir`` holds files this comparison would write (a train run, an earlier
            comparison, or files nmsparse did not create) and ``overwrite`` is false.
    """
    dist = dist or DistContext()
    names = check_structures(structures)
    seed_list = [config.seed] if seeds is None else [int(s) for s in seeds]
    if not seed_list or any(s < 0 for s in seed_list):
        raise ConfigError(f"compare: seeds must be integers >= 0, got {list(seeds or [])}")
    diversity = _run.diversity_column(names, reference_numel)
    if reference_numel < 64 or reference_numel % 64:
        raise ConfigError(
            f"compare: reference_numel must be a positive multiple of 64 (8x8 blocks), got {reference_numel}"
        )
    run_names = {
        (name, seed): structure_slug(name) if len(seed_list) == 1 else f"{structure_slug(name)}-seed{seed}"
        for seed in seed_list
        for name in names
    }
    run = _run.open_comparison(
        out_dir,
        task=TASK,
        outputs=(MODEL_FILE,),
        sections=tuple(run_names.values()),
        names=names,
        seeds=seed_list,
        reference_numel=reference_numel,
        resume=resume,
        overwrite=overwrite,
    )
    if resume and run is not None:
        _run.check_same_settings(
            config.to_dict(),
            load_config(run.config_path).to_dict(),
            where=run.config_path,
            what="compare",
            owner="comparison",
        )
    # Everything is checked before the first file is written: settings, data, that each structure fits.
    run_configs = {key: _run_config(config, key[0], key[1]) for key in run_names}
    data = build_data(config)
    _check_fits(config, data, names)
    compile_seconds = max(warm_up_solvers(cfg) for cfg in run_configs.values())
    if dist.is_main and not resume:
        _run.start_comparison(
            run,
            config_text=config_to_yaml(config),
            digest=config_hash(config.to_dict()),
            names=names,
            seeds=seed_list,
            reference_numel=reference_numel,
        )
    sparse_mode = "dynamic" if config.mode == "dense" else config.mode

    def train(name: str, seed: int) -> dict[str, Any]:
        result = Trainer(
            run_configs[name, seed],
            data,
            run=run,
            section=run_names[name, seed],
            dist=dist,
            progress=progress,
            label=f"{name} (seed {seed})",
        ).fit(resume=resume)
        return {
            "test_accuracy": result.test_accuracy,
            "mask_valid": result.mask_valid,
            "refresh_overhead": result.refresh_overhead,
            "train_seconds": result.train_seconds,
        }

    runs = _run.train_structures(names, seed_list, train, on_run_end=on_run_end, show=dist.is_main)
    rows = []
    for name in names:
        accuracies = [r["test_accuracy"] for r in runs[name]]
        overheads = [r["refresh_overhead"] for r in runs[name] if r["refresh_overhead"] is not None]
        rows.append(
            {
                "structure": name,
                "test_accuracy": statistics.fmean(accuracies),
                "test_accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
                "accuracies": accuracies,
                "log10_mask_diversity": diversity[name],
                "mask_valid": None if name == "dense" else all(bool(r["mask_valid"]) for r in runs[name]),
                "refresh_overhead": statistics.fmean(overheads) if overheads else None,
                "train_seconds": statistics.fmean(r["train_seconds"] for r in runs[name]),
            }
        )
    root = None if run is None else run.path
    outcome = CompareResult(
        rows=rows, reference_numel=reference_numel, seeds=seed_list, out_dir=root, compile_seconds=compile_seconds
    )
    from ..plots import plot_accuracy_vs_diversity

    payload = {
        "model": config.model,
        "data": config.data,
        "mode": sparse_mode,
        "epochs": config.epochs,
        "seeds": seed_list,
        "reference_numel": reference_numel,
        "compile_seconds": compile_seconds,
        "diversity": "exact log10 mask diversity at 50% density (nmsparse.log10_mask_diversity)",
        "rows": rows,
    }
    _run.write_comparison(
        run,
        dist,
        payload=payload,
        plot=plot_accuracy_vs_diversity,
        reference_numel=reference_numel,
        title=f"{config.model} on {data.name}, {sparse_mode} masks, {len(seed_list)} seed(s)",
    )
    return outcome
