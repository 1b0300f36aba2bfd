"""PNG plots of language-model runs: loss curves, and held-out loss against exact mask diversity.

matplotlib without pyplot (no global backend state), written atomically through :func:`nmsparse.io.atomic_path`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..train.plots import plot_curves, plot_metric_vs_diversity

__all__ = ["plot_lm_curves", "plot_loss_vs_diversity"]


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
    return plot_curves(histories, path, x="step", title=title,
                       panels=[("train_loss", {"ylabel": "training loss (nats/byte)"}),
                               ("heldout_loss", {"ylabel": "held-out loss (nats/byte)"})])


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
    return plot_metric_vs_diversity(rows, path, metric="heldout_loss",
                                    ylabel="held-out loss (nats/byte, lower is better)", legend_loc="upper right",
                                    reference_numel=reference_numel, title=title)
