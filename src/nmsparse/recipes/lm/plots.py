"""PNG plots of language-model runs: loss curves, and held-out loss against exact mask diversity.

matplotlib without pyplot (no global backend state), written atomically through :func:`nmsparse.io.atomic_path`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nmsparse.io import atomic_path

__all__ = ["plot_lm_curves", "plot_loss_vs_diversity"]


def _figure(ncols: int, width: float) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, 3.6), layout="constrained")
    return figure, figure.subplots(1, ncols)


def _save(figure: Any, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(str(tmp), format="png", dpi=120)
    return Path(path)


def plot_lm_curves(histories: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path, *,
                   title: str = "") -> Path:
    """Training and held-out loss per evaluation step, one line per run.

    Args:
        histories: run label -> records with ``step``, ``train_loss`` and ``heldout_loss``.
        path: PNG file to write.
        title: figure title.

    Returns:
        ``path``.
    """
    figure, (train_ax, heldout_ax) = _figure(2, 9.0)
    for label, records in histories.items():
        steps = [r["step"] for r in records]
        train_ax.plot(steps, [r["train_loss"] for r in records], marker=".", label=label)
        heldout_ax.plot(steps, [r["heldout_loss"] for r in records], marker=".", label=label)
    train_ax.set(xlabel="step", ylabel="training loss (nats/byte)")
    heldout_ax.set(xlabel="step", ylabel="held-out loss (nats/byte)")
    for ax in (train_ax, heldout_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def plot_loss_vs_diversity(rows: Sequence[Mapping[str, Any]], path: str | Path, *, reference_numel: int,
                           title: str = "") -> Path:
    """Held-out loss against ``log10`` mask diversity, one point per structure (dense as a horizontal line).

    Args:
        rows: records with ``structure``, ``log10_mask_diversity`` (``None`` for dense), ``heldout_loss`` and
            optionally ``heldout_loss_std`` (error bars over seeds).
        path: PNG file to write.
        reference_numel: tensor size the diversity was computed for (axis label).
        title: figure title.

    Returns:
        ``path``.
    """
    figure, ax = _figure(1, 6.5)
    for row in rows:
        std = row.get("heldout_loss_std") or 0.0
        if row["log10_mask_diversity"] is None:
            ax.axhline(row["heldout_loss"], color="grey", linestyle="--", label=str(row["structure"]))
            if std:
                ax.axhspan(row["heldout_loss"] - std, row["heldout_loss"] + std, color="grey", alpha=0.15)
            continue
        ax.errorbar(row["log10_mask_diversity"], row["heldout_loss"], yerr=std or None, fmt="o", capsize=3)
        ax.annotate(str(row["structure"]), (row["log10_mask_diversity"], row["heldout_loss"]),
                    textcoords="offset points", xytext=(5, 5))
    ax.set(xlabel=f"log10 mask diversity (exact, per {reference_numel} weights)",
           ylabel="held-out loss (nats/byte, lower is better)")
    ax.grid(alpha=0.3)
    if any(row["log10_mask_diversity"] is None for row in rows):
        ax.legend(loc="upper right")
    if title:
        ax.set_title(title)
    return _save(figure, path)
