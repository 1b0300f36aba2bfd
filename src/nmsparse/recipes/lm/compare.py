"""Train the decoder under several sparsity structures with identical seeds and batches; relate held-out loss to
exact mask diversity (``nmsparse compare lm``).

Default structures: dense, 2:4, 4:8, 2:4-T, 4:8-T and unstructured 50%. Every sparse structure masks the same
layers (the block linears) with the same recipe (dynamic SR-STE masks refreshed every ``refresh_every`` steps;
unstructured masks are per-layer magnitude masks refreshed the same way). The diversity column is the exact
``log10`` count of :func:`nmsparse.log10_mask_diversity` for a tensor of ``reference_numel`` weights at 50%
density. Each row reports the mean held-out loss (nats per byte) and perplexity over the seeds, their sample
standard deviation and the per-seed values, the gap to dense (of the means, and per seed against the dense run of
the same seed), and which pairs of structures separate beyond seed noise (:func:`separation` on the spread of
each structure, :func:`paired_separation` on the per-seed differences).

The comparison directory holds ``compare.json``, ``compare.png``, ``config.yaml`` and one checkpointed section per
structure and seed (``4x8-T-seed0/``); ``resume=True`` continues an interrupted comparison where it stopped.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
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
from .config import DENSE, LMTrainConfig, lm_config_to_yaml, load_lm_config
from .data import build_lm_data
from .task import LMTrainer, warm_up_solvers

__all__ = [
    "DEFAULT_STRUCTURES",
    "DEFAULT_REFERENCE_NUMEL",
    "LMCompareResult",
    "compare_lm",
    "separation",
    "paired_separation",
    "t_critical_95",
    "COMPARE_TASK",
]

COMPARE_TASK = "lm-compare"


@dataclass
class LMCompareResult:
    """Rows of a comparison (one per structure, over seeds) and where they were written.

    Attributes:
        rows: ``structure``, ``log10_mask_diversity`` (``None`` for dense), ``heldout_loss`` (mean over seeds),
            ``heldout_loss_std`` (sample std, 0 for one seed), ``heldout_losses`` (per seed),
            ``heldout_perplexity`` (exp of the mean loss), ``loss_gap_percent`` (against dense when it is in
            the comparison), ``mask_valid``, ``train_seconds`` (mean).
        reference_numel: tensor size of the diversity column.
        seeds: seeds trained.
        out_dir: directory holding ``compare.json``, ``compare.png`` and the runs.
        spearman_loss_vs_diversity: rank correlation of mean loss and diversity over the sparse structures
            (negative: more diverse structures lose less); ``None`` with fewer than 3 sparse structures.
        separation: for each pair of structures, whether their mean losses differ by more than the sum of their
            seed standard deviations (``"2:4 vs 4:8-T": True``); empty with a single seed (no noise estimate).
        paired_separation: for each pair, the paired t-test of the per-seed differences
            (:func:`paired_separation`: ``difference``, ``t``, ``separates``); empty with a single seed.
    """

    rows: list[dict[str, Any]]
    reference_numel: int
    seeds: list[int]
    out_dir: Path | None
    spearman_loss_vs_diversity: float | None
    separation: dict[str, bool] = field(default_factory=dict)
    paired_separation: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "rows": self.rows,
            "reference_numel": self.reference_numel,
            "seeds": self.seeds,
            "out_dir": None if self.out_dir is None else str(self.out_dir),
            "spearman_loss_vs_diversity": self.spearman_loss_vs_diversity,
            "separation": self.separation,
            "paired_separation": self.paired_separation,
        }


def _sample_std(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0
        i = j + 1
    return ranks


def _spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    if len(xs) < 3:
        return None
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    den = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return num / den if den else None


def _pairs_by_loss(rows: Sequence[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """``("better vs worse", better, worse)`` for every pair of rows, in order of mean held-out loss."""
    ordered = sorted(rows, key=lambda r: float(r["heldout_loss"]))
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            yield f"{a['structure']} vs {b['structure']}", a, b


def separation(rows: Sequence[dict[str, Any]]) -> dict[str, bool]:
    """Whether each pair of rows separates beyond seed noise: ``|mean_a - mean_b| > std_a + std_b``.

    Rows are taken in order of mean held-out loss, so keys read ``"better vs worse"``. Rows of a single seed
    have no noise estimate: the result is then empty.

    Example:
        >>> def row(name, loss):
        ...     return {"structure": name, "heldout_loss": loss, "heldout_loss_std": 0.01, "heldout_losses": [0, 0]}
        >>> separation([row("2:4", 2.50), row("2:4-T", 2.55), row("4:8-T", 2.56)])
        {'2:4 vs 2:4-T': True, '2:4 vs 4:8-T': True, '2:4-T vs 4:8-T': False}
    """
    if any(len(r.get("heldout_losses") or ()) < 2 for r in rows):
        return {}
    out: dict[str, bool] = {}
    for key, a, b in _pairs_by_loss(rows):
        noise = float(a.get("heldout_loss_std") or 0.0) + float(b.get("heldout_loss_std") or 0.0)
        out[key] = float(b["heldout_loss"]) - float(a["heldout_loss"]) > noise
    return out


#: Two-sided 95% critical values of Student's t for 1..30 degrees of freedom.
_T_CRITICAL_95 = (
    12.7062,
    4.3027,
    3.1824,
    2.7764,
    2.5706,
    2.4469,
    2.3646,
    2.3060,
    2.2622,
    2.2281,
    2.2010,
    2.1788,
    2.1604,
    2.1448,
    2.1314,
    2.1199,
    2.1098,
    2.1009,
    2.0930,
    2.0860,
    2.0796,
    2.0739,
    2.0687,
    2.0639,
    2.0595,
    2.0555,
    2.0518,
    2.0484,
    2.0452,
    2.0423,
)


def t_critical_95(df: int) -> float:
    """Two-sided 95% critical value of Student's t with ``df`` degrees of freedom (table, then an expansion).

    Example:
        >>> round(t_critical_95(2), 3)
        4.303
    """
    if df < 1:
        raise ValueError(f"t_critical_95: degrees of freedom must be >= 1, got {df}")
    if df <= len(_T_CRITICAL_95):
        return _T_CRITICAL_95[df - 1]
    z = 1.959963984540054  # Cornish-Fisher expansion around the normal quantile, < 1e-4 off from 31 on
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


def paired_separation(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Paired test of each pair of rows: one-sample t-test of the per-seed differences, two-sided, 95%.

    Every seed gives all structures the same initialisation and batches, so the per-seed difference of two
    structures cancels what the seed does to both; this test is then sharper than :func:`separation`. Rows are
    taken in order of mean held-out loss (keys read ``"better vs worse"``); each value holds ``difference`` (mean
    per-seed loss difference, worse minus better), ``t`` (``None`` when every seed gives the same difference) and
    ``separates``. Rows need the same number (>= 2) of
    per-seed losses, in seed order; otherwise the result is empty.

    Example:
        >>> rows = [{"structure": "2:4", "heldout_loss": 2.51, "heldout_losses": [2.50, 2.51, 2.52]},
        ...         {"structure": "2:4-T", "heldout_loss": 2.52, "heldout_losses": [2.511, 2.519, 2.53]}]
        >>> paired_separation(rows)["2:4 vs 2:4-T"]["separates"]
        True
    """
    counts = {len(r.get("heldout_losses") or ()) for r in rows}
    if len(counts) != 1 or min(counts) < 2:
        return {}
    n = counts.pop()
    critical = t_critical_95(n - 1)
    out: dict[str, dict[str, Any]] = {}
    for key, a, b in _pairs_by_loss(rows):
        diffs = [float(y) - float(x) for x, y in zip(a["heldout_losses"], b["heldout_losses"])]
        mean, spread = statistics.fmean(diffs), _sample_std(diffs)
        t: float | None = None  # every seed gives the same difference: no t (JSON has no infinity)
        separates = mean > 0
        if spread > 0:
            t = mean / (spread / math.sqrt(n))
            separates = t > critical
        out[key] = {"difference": mean, "t": t, "separates": separates}
    return out


def _check_fits(config: LMTrainConfig, data: Any, names: Sequence[str]) -> None:
    """Every n:m structure can mask at least one layer of the decoder (issue 16: a failure after the first run
    left ``config.yaml`` and ``run.json`` behind). Built on the meta device: no memory, no draw from the RNG."""
    import torch

    from nmsparse.pattern import NMPattern
    from nmsparse.prune.select import require_selected, select_layers

    from .config import UNSTRUCTURED
    from .model import GPT
    from .pretrained import default_include

    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = GPT(config.gpt_config(data.vocab_size))
    include = list(config.include) if config.include is not None else default_include(model)
    exclude = list(config.exclude) if config.exclude is not None else None
    for name in names:
        if name not in (DENSE, UNSTRUCTURED):
            selection = select_layers(
                model, name, include=include, exclude=exclude, keep_first_last=config.keep_first_last
            )
            require_selected(selection, NMPattern.parse(name), where=f"compare: structure {name!r}")


def compare_lm(
    config: LMTrainConfig | None,
    out: str | os.PathLike[str] | None = None,
    *,
    structures: Sequence[str] = DEFAULT_STRUCTURES,
    seeds: Sequence[int] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    reference_numel: int = DEFAULT_REFERENCE_NUMEL,
    on_run_end: RunCallback | None = None,
) -> LMCompareResult:
    """Train ``config``'s decoder once per structure and seed; report held-out loss against exact mask diversity.

    Args:
        config: the recipe shared by every run (its ``pattern`` and ``baseline`` are not used); with
            ``resume`` it may be ``None`` (read from ``out/config.yaml``).
        out: directory for ``compare.json``, ``compare.png`` and each run's checkpoints (``None``: in memory).
        structures: ``"dense"``, n:m patterns and/or ``"unstructured"``.
        seeds: seeds of each structure (default ``[config.seed]``); every structure sees the same ones.
        resume: continue an interrupted comparison in ``out``.
        overwrite: replace a previous comparison's files in ``out``.
        progress: progress bars.
        reference_numel: tensor size of the diversity column (a multiple of 64 fits every default structure).
        on_run_end: ``callback(record)`` after each run (``structure``, ``seed``, ``heldout_loss``, ...).

    Returns:
        An :class:`LMCompareResult`.

    Raises:
        ConfigError: bad structures, seeds or settings.
        OverwriteError: ``out`` holds files of another run (see :class:`~nmsparse.recipes.rundir.RunDir`).
    """
    names = check_structures(structures)
    if seeds is not None:
        seeds = list(seeds)
        if (
            not seeds
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)
            or len(set(seeds)) != len(seeds)
        ):
            raise ConfigError(f"compare: seeds must be distinct integers >= 0, got {seeds}")
    if resume:
        if out is None:
            raise ConfigError("compare_lm: resume needs the comparison directory (out)")
        saved = load_lm_config(Path(out) / "config.yaml")
        if config is not None:
            _run.check_same_settings(
                config.replace(baseline=False).to_dict(),
                saved.to_dict(),
                where=Path(out) / "config.yaml",
                what="compare",
                owner="comparison",
            )
        config = saved
    elif config is None:
        raise ConfigError("compare_lm: give a config (or resume=True with an existing comparison)")
    if config.model is not None or config.mode != "dynamic":
        raise ConfigError(
            "nmsparse compare lm compares structures trained from scratch on the recipe's decoder with "
            "dynamic masks; --model and --mode are for nmsparse train lm"
        )
    seed_list = [config.seed] if seeds is None else seeds
    sections = {(name, seed): f"{structure_slug(name)}-seed{seed}" for name in names for seed in seed_list}
    run = _run.open_comparison(
        out,
        task=COMPARE_TASK,
        sections=tuple(sections.values()),
        names=names,
        seeds=seed_list,
        reference_numel=reference_numel,
        resume=resume,
        overwrite=overwrite,
    )
    diversity = _run.diversity_column(names, reference_numel)
    data = build_lm_data(sources=config.sources, heldout_permille=config.heldout_permille, files=config.data)
    base = config.replace(baseline=False)
    if not resume:
        _check_fits(base, data, names)  # a structure no layer takes fails now, before anything is written
        _run.start_comparison(
            run,
            config_text=lm_config_to_yaml(base),
            digest=config_hash(base.to_dict()),
            names=names,
            seeds=seed_list,
            reference_numel=reference_numel,
        )
    compile_seconds = warm_up_solvers(base, names)

    def train(name: str, seed: int) -> dict[str, Any]:
        cfg = base.replace(seed=seed)
        section = sections[(name, seed)]
        if run is not None:
            run.section_dir(section).mkdir(parents=True, exist_ok=True)
        trainer = LMTrainer(
            cfg,
            data,
            structure=name,
            run=run,
            section=section,
            digest=config_hash(cfg.to_dict()),
            progress=progress,
            label=f"{name} (seed {seed})",
        )
        result = trainer.fit(resume=resume)
        return {
            "heldout_loss": result.heldout_loss,
            "heldout_perplexity": result.heldout_perplexity,
            "mask_valid": result.mask_valid,
            "train_seconds": result.train_seconds,
            "history": result.history,
        }

    runs = _run.train_structures(names, seed_list, train, on_run_end=on_run_end)
    dense_losses = [r["heldout_loss"] for r in runs[DENSE]] if DENSE in runs else None
    dense_loss = statistics.fmean(dense_losses) if dense_losses is not None else None
    rows: list[dict[str, Any]] = []
    for name in names:
        losses = [r["heldout_loss"] for r in runs[name]]
        mean = statistics.fmean(losses)
        paired = None if dense_losses is None else [100.0 * (a - d) / d for a, d in zip(losses, dense_losses)]
        rows.append(
            {
                "structure": name,
                "log10_mask_diversity": diversity[name],
                "heldout_loss": mean,
                "heldout_loss_std": _sample_std(losses),
                "heldout_losses": losses,
                "heldout_perplexity": math.exp(mean),
                "loss_gap_percent": None if dense_loss is None else 100.0 * (mean - dense_loss) / dense_loss,
                "loss_gap_percents": paired,
                "loss_gap_percent_std": None if paired is None else _sample_std(paired),
                "mask_valid": None if name == DENSE else all(bool(r["mask_valid"]) for r in runs[name]),
                "train_seconds": statistics.fmean(r["train_seconds"] for r in runs[name]),
            }
        )
    sparse_rows = [r for r in rows if r["log10_mask_diversity"] is not None]
    rho = _spearman(
        [float(r["log10_mask_diversity"]) for r in sparse_rows], [float(r["heldout_loss"]) for r in sparse_rows]
    )
    result_obj = LMCompareResult(
        rows=rows,
        reference_numel=reference_numel,
        seeds=seed_list,
        out_dir=None if run is None else run.path,
        spearman_loss_vs_diversity=rho,
        separation=separation(rows),
        paired_separation=paired_separation(rows),
    )
    if run is not None:
        from ..plots import plot_loss_vs_diversity

        payload = {
            "task": "lm",
            "config": base.to_dict(),
            "data": data.describe(),
            "seeds": seed_list,
            "reference_numel": reference_numel,
            "diversity": "exact log10 mask diversity at 50% density (nmsparse.log10_mask_diversity)",
            "loss": "held-out cross-entropy, nats per byte (mean over seeds; std = sample std)",
            "spearman_loss_vs_diversity": rho,
            "separation": result_obj.separation,
            "separation_rule": "mean losses differ by more than the sum of the two seed standard deviations",
            "paired_separation": result_obj.paired_separation,
            "paired_separation_rule": "one-sample t-test of the per-seed loss differences, two-sided, 95%",
            "compile_seconds": compile_seconds,
            "rows": rows,
        }
        _run.write_comparison(
            run,
            DistContext(),
            payload=payload,
            plot=plot_loss_vs_diversity,
            reference_numel=reference_numel,
            title=f"{base.n_layer}x{base.d_model} byte decoder, {base.steps} steps, {len(seed_list)} seed(s)",
        )
        run.write_summary(result_obj.to_dict())
    return result_obj
