"""Statistics: exact float64 sufficient statistics of a layer's calibration rows, and a bounded row sample.

For rows ``X`` (``[R, K]``) and targets ``Y`` (``[R, out]``) of one row map, with ``A = [X 1]`` when the layer has
a bias, ``G = A^T A``, ``C = A^T Y`` and ``sum(Y^2)`` give the exact mean squared error of any weights
``W_aug = [W b]``: ``(tr(W G W^T) - 2 tr(W C) + sum(Y^2)) / (R * out)``, and its exact full-batch gradient,
whatever the number of rows. Rows are folded in batch by batch and never kept, except for a seeded random sample
(within the memory budget) when mini-batch steps are asked for.
"""

from __future__ import annotations

import torch

from ..errors import InputError, ShapeError

__all__ = ["LayerStatistics", "exact_error"]


class LayerStatistics:
    """Running ``G = sum [x 1]^T [x 1]``, ``C = sum [x 1]^T y``, ``sum y^2`` and the row count, per group, in
    float64; optionally a held-out share of rows and a seeded random subset of rows for mini-batch steps.

    Args:
        in_features: inputs ``K`` per group (a conv: ``in/groups * kh * kw``).
        out_features: outputs per group.
        bias: whether the layer has a bias (adds the column of ones).
        groups: independent row maps (grouped convs); ``1`` for a Linear.
        device: where the statistics live.
        capacity: rows to store for mini-batch steps (``0``: none).
        keep_fraction: share of each batch's rows stored (a seeded random subset when below 1).
        validation: share of rows held out (also in the totals; never stored).
        seed: seed of the row subsets.
        name: layer name for messages.

    Example:
        >>> import torch
        >>> from nmsparse.adaprune import LayerStatistics
        >>> x = torch.randn(100, 8); y = x @ torch.randn(8, 4)
        >>> stats = LayerStatistics(8, 4, bias=False)
        >>> stats.add(x, y)
        >>> stats.rows, tuple(stats.gram.shape)
        (100, (1, 8, 8))
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool, groups: int = 1,
                 device: torch.device | str | None = None, capacity: int = 0, keep_fraction: float = 1.0,
                 validation: float = 0.0, seed: int = 0, name: str = "layer") -> None:
        self.name = name
        self.k, self.out, self.groups, self.bias = int(in_features), int(out_features), int(groups), bool(bias)
        g, w, o = self.groups, self.width, self.out
        self.gram = torch.zeros(g, w, w, dtype=torch.float64, device=device)
        self.cross = torch.zeros(g, w, o, dtype=torch.float64, device=device)
        self.yy = torch.zeros((), dtype=torch.float64, device=device)
        self.rows = 0
        # held-out rows (a seeded random share ``validation``), also included in the totals above
        self.validation = validation
        self.gram_val = torch.zeros_like(self.gram) if validation > 0 else None
        self.cross_val = torch.zeros_like(self.cross) if validation > 0 else None
        self.rows_val = 0
        self.keep_fraction = keep_fraction
        self.seed = seed
        self._chunk = 0
        self._filled = 0
        self._x: torch.Tensor | None = None
        self._y: torch.Tensor | None = None
        if capacity > 0:
            # Preallocated once, so the stored rows never exceed their share of the memory budget.
            self._x = torch.empty(capacity, g, w, dtype=torch.float32, device=device)
            self._y = torch.empty(capacity, g, o, dtype=torch.float32, device=device)

    @property
    def width(self) -> int:
        """Columns of the augmented input ``[X 1]``."""
        return self.k + int(self.bias)

    def kept(self, count: int) -> int:
        """Rows of a batch of ``count`` that are stored."""
        return count if self.keep_fraction >= 1 else int(count * self.keep_fraction)

    def add(self, x_rows: torch.Tensor, y_rows: torch.Tensor) -> None:
        """Fold rows in: ``x_rows`` ``[R, K]`` or ``[R, groups, K]``, ``y_rows`` ``[R, out]`` or
        ``[R, groups, out]`` (float32 or float64)."""
        if x_rows.dim() == 2 and self.groups == 1:
            x_rows = x_rows.unsqueeze(1)
        if y_rows.dim() == 2 and self.groups == 1:
            y_rows = y_rows.unsqueeze(1)
        if x_rows.shape[0] != y_rows.shape[0]:
            raise InputError(
                f"adaprune_: layer {self.name!r} produced {y_rows.shape[0]} output rows for "
                f"{x_rows.shape[0]} input rows; the model's forward is not deterministic in shape"
            )
        if tuple(x_rows.shape[1:]) != (self.groups, self.k) or tuple(y_rows.shape[1:]) != (self.groups, self.out):
            raise ShapeError(
                f"LayerStatistics.add: expected rows [R, {self.groups}, {self.k}] and [R, {self.groups}, "
                f"{self.out}], got {list(x_rows.shape)} and {list(y_rows.shape)}"
            )
        if x_rows.shape[0] == 0:
            return
        if self.bias:
            x_rows = torch.cat([x_rows, x_rows.new_ones(x_rows.shape[0], x_rows.shape[1], 1)], dim=2)
        xt = x_rows.transpose(0, 1)  # [g, R, w]
        yt = y_rows.transpose(0, 1)  # [g, R, o]
        self.gram += (xt.transpose(1, 2) @ xt).double()
        self.cross += (xt.transpose(1, 2) @ yt).double()
        self.yy += y_rows.double().square().sum()
        self.rows += int(x_rows.shape[0])
        if self.gram_val is not None and self.cross_val is not None:
            generator = torch.Generator().manual_seed(self.seed * 1_000_033 + self._chunk)
            held = (torch.rand(x_rows.shape[0], generator=generator) < self.validation).to(x_rows.device)
            xv, yv = x_rows[held].transpose(0, 1), y_rows[held].transpose(0, 1)
            self.gram_val += (xv.transpose(1, 2) @ xv).double()
            self.cross_val += (xv.transpose(1, 2) @ yv).double()
            self.rows_val += int(held.sum())
            x_rows, y_rows = x_rows[~held], y_rows[~held]  # mini-batch steps never see held-out rows
        if self._x is not None and self._y is not None:
            count = int(x_rows.shape[0])
            keep = min(self.kept(count), self._x.shape[0] - self._filled)
            if keep < count:
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self._chunk)
                index = torch.randperm(count, generator=generator)[:keep].to(x_rows.device)
                x_rows, y_rows = x_rows[index], y_rows[index]
            self._x[self._filled:self._filled + keep] = x_rows
            self._y[self._filled:self._filled + keep] = y_rows
            self._filled += keep
        self._chunk += 1

    @property
    def stored_bytes(self) -> int:
        """Bytes held by the stored rows (preallocated)."""
        if self._x is None or self._y is None:
            return 0
        return self._x.numel() * 4 + self._y.numel() * 4

    def stored(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The stored ``[R, g, w]`` input rows and ``[R, g, o]`` target rows (``None`` when none)."""
        if self._x is None or self._y is None or self._filled == 0:
            return None
        return self._x[: self._filled], self._y[: self._filled]

    def error(self, w_aug: torch.Tensor) -> float:
        """Exact MSE per output value of augmented weights ``[groups, out, width]`` over every row."""
        return exact_error(w_aug, self.gram, self.cross, self.yy, max(self.rows, 1), self.groups * self.out)

    @property
    def target_power(self) -> float:
        """Mean squared target value (divide an error by it for a relative error)."""
        return float(self.yy) / max(self.rows * self.groups * self.out, 1)


def exact_error(w_aug: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor, yy: torch.Tensor, rows: int,
                outputs: int) -> float:
    """Exact float64 MSE per output value of ``[g, o, w]`` augmented weights from the statistics."""
    w = w_aug.double()
    total = ((w @ gram) * w).sum() - 2.0 * (w * cross.transpose(1, 2)).sum() + yy
    return max(float(total), 0.0) / (rows * outputs)
