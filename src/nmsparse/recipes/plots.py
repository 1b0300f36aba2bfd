"""PNG plots of training runs and structure comparisons, for both recipes: the curves of a run, and a metric
against exact mask diversity (matplotlib without pyplot, no global backend state; written atomically through
:func:`nmsparse.io.atomic_path`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nmsparse.io import atomic_path

__all__ = [
    "plot_curves",
    "plot_metric_vs_diversity",
    "plot_training_curves",
    "plot_accuracy_vs_diversity",
    "plot_lm_curves",
    "plot_loss_vs_diversity",
]


def figure_axes(ncols: int, width: float) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    # A bare Figure (no pyplot) touches no global backend state and needs no display; savefig renders with Agg.
    figure = Figure(figsize=(width, 3.6), layout="constrained")
    axes = figure.subplots(1, ncols)
    return figure, axes


def save_png(figure: Any, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(str(tmp), format="png", dpi=120)
    return Path(path)


def plot_curves(
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | Path,
    *,
    x: str,
    panels: Sequence[tuple[str, Mapping[str, Any]]],
    title: str = "",
) -> Path:
    """One panel per ``(key, axis settings)`` of ``panels``: ``record[key]`` against ``record[x]``, a line per run.

    The shared body of :func:`plot_training_curves` and :func:`plot_lm_curves`.
    """
    figure, grid = figure_axes(len(panels), 9.0)
    axes = list(grid) if len(panels) > 1 else [grid]
    for label, records in histories.items():
        xs = [r[x] for r in records]
        for ax, (key, _) in zip(axes, panels):
            ax.plot(xs, [r[key] for r in records], marker=".", label=label)
    for ax, (_, settings) in zip(axes, panels):
        ax.set(xlabel=x, **settings)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        figure.suptitle(title)
    return save_png(figure, path)


def plot_metric_vs_diversity(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    metric: str,
    ylabel: str,
    legend_loc: str,
    reference_numel: int,
    title: str = "",
) -> Path:
    """``row[metric]`` (error bars ``row[metric + "_std"]``) against ``log10`` mask diversity, dense as a line.

    The shared body of :func:`plot_accuracy_vs_diversity` and :func:`plot_loss_vs_diversity`.
    """
    figure, ax = figure_axes(1, 6.5)
    for row in rows:
        std = row.get(f"{metric}_std") or 0.0
        if row["log10_mask_diversity"] is None:
            ax.axhline(row[metric], color="grey", linestyle="--", label=str(row["structure"]))
            if std:
                ax.axhspan(row[metric] - std, row[metric] + std, color="grey", alpha=0.15)
            continue
        ax.errorbar(row["log10_mask_diversity"], row[metric], yerr=std or None, fmt="o", capsize=3)
        ax.annotate(
            str(row["structure"]), (row["log10_mask_diversity"], row[metric]), textcoords="offset points", xytext=(5, 5)
        )
    ax.set(xlabel=f"log10 mask diversity (exact, per {reference_numel} weights)", ylabel=ylabel)
    ax.grid(alpha=0.3)
    if any(row["log10_mask_diversity"] is None for row in rows):
        ax.legend(loc=legend_loc)
    if title:
        ax.set_title(title)
    return save_png(figure, path)


def plot_training_curves(
    histories: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path, *, title: str = ""
) -> Path:
    """Classify runs: training loss and test accuracy per epoch (records with ``epoch``, ``train_loss``,
    ``test_accuracy``), one line per run label; returns ``path``."""
    return plot_curves(
        histories,
        path,
        x="epoch",
        title=title,
        panels=[
            ("train_loss", {"ylabel": "training loss", "yscale": "log"}),
            ("test_accuracy", {"ylabel": "test accuracy (%)"}),
        ],
    )


def plot_lm_curves(histories: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path, *, title: str = "") -> Path:
    """LM runs: training and held-out loss per evaluation step (records with ``step``, ``train_loss``,
    ``heldout_loss``), one line per run label; returns ``path``."""
    return plot_curves(
        histories,
        path,
        x="step",
        title=title,
        panels=[
            ("train_loss", {"ylabel": "training loss (nats/byte)"}),
            ("heldout_loss", {"ylabel": "held-out loss (nats/byte)"}),
        ],
    )


def plot_accuracy_vs_diversity(
    rows: Sequence[Mapping[str, Any]], path: str | Path, *, reference_numel: int, title: str = ""
) -> Path:
    """Classify comparisons: test accuracy (rows with ``test_accuracy`` and optionally ``test_accuracy_std``)
    against ``log10`` mask diversity; see :func:`plot_metric_vs_diversity`."""
    return plot_metric_vs_diversity(
        rows,
        path,
        metric="test_accuracy",
        ylabel="test accuracy (%)",
        legend_loc="lower right",
        reference_numel=reference_numel,
        title=title,
    )


def plot_loss_vs_diversity(
    rows: Sequence[Mapping[str, Any]], path: str | Path, *, reference_numel: int, title: str = ""
) -> Path:
    """LM comparisons: held-out loss (rows with ``heldout_loss`` and optionally ``heldout_loss_std``) against
    ``log10`` mask diversity; see :func:`plot_metric_vs_diversity`."""
    return plot_metric_vs_diversity(
        rows,
        path,
        metric="heldout_loss",
        ylabel="held-out loss (nats/byte, lower is better)",
        legend_loc="upper right",
        reference_numel=reference_numel,
        title=title,
    )
