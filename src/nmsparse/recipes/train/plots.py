"""PNG plots of training runs and comparisons (matplotlib without pyplot, written atomically)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nmsparse.io import atomic_path

__all__ = ["plot_training_curves", "plot_accuracy_vs_diversity"]


def _figure(ncols: int, width: float) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    # A bare Figure (no pyplot) touches no global backend state and needs no display; savefig renders with Agg.
    figure = Figure(figsize=(width, 3.6), layout="constrained")
    axes = figure.subplots(1, ncols)
    return figure, axes


def _save(figure: Any, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(str(tmp), format="png", dpi=120)
    return Path(path)


def plot_training_curves(histories: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path, *,
                         title: str = "") -> Path:
    """Training loss and test accuracy per epoch, one line per run.

    Args:
        histories: run label -> per-epoch records with ``epoch``, ``train_loss`` and ``test_accuracy``.
        path: PNG file to write.
        title: figure title.

    Returns:
        ``path``.
    """
    figure, (loss_ax, acc_ax) = _figure(2, 9.0)
    for label, records in histories.items():
        epochs = [r["epoch"] for r in records]
        loss_ax.plot(epochs, [r["train_loss"] for r in records], marker=".", label=label)
        acc_ax.plot(epochs, [r["test_accuracy"] for r in records], marker=".", label=label)
    loss_ax.set(xlabel="epoch", ylabel="training loss", yscale="log")
    acc_ax.set(xlabel="epoch", ylabel="test accuracy (%)")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def plot_accuracy_vs_diversity(rows: Sequence[Mapping[str, Any]], path: str | Path, *, reference_numel: int,
                               title: str = "") -> Path:
    """Test accuracy against ``log10`` mask diversity, one point per structure (dense as a horizontal line).

    Args:
        rows: records with ``structure``, ``log10_mask_diversity`` (``None`` for dense), ``test_accuracy`` and
            optionally ``test_accuracy_std`` (error bars over seeds).
        path: PNG file to write.
        reference_numel: tensor size the diversity was computed for (axis label).
        title: figure title.

    Returns:
        ``path``.
    """
    figure, ax = _figure(1, 6.5)
    for row in rows:
        std = row.get("test_accuracy_std") or 0.0
        if row["log10_mask_diversity"] is None:
            ax.axhline(row["test_accuracy"], color="grey", linestyle="--", label=f"{row['structure']}")
            if std:
                ax.axhspan(row["test_accuracy"] - std, row["test_accuracy"] + std, color="grey", alpha=0.15)
            continue
        ax.errorbar(row["log10_mask_diversity"], row["test_accuracy"], yerr=std or None, fmt="o", capsize=3)
        ax.annotate(row["structure"], (row["log10_mask_diversity"], row["test_accuracy"]),
                    textcoords="offset points", xytext=(5, 5))
    ax.set(xlabel=f"log10 mask diversity (exact, per {reference_numel} weights)", ylabel="test accuracy (%)")
    ax.grid(alpha=0.3)
    if any(row["log10_mask_diversity"] is None for row in rows):
        ax.legend(loc="lower right")
    if title:
        ax.set_title(title)
    return _save(figure, path)
