"""Layer methods of one-shot calibration: a registry of per-layer algorithms and what each needs.

A method is one file: a :class:`~nmsparse.config.ConfigBase` option table, a ``solve(layer)`` function and one
:func:`register_method` call naming the statistics the engine (:mod:`nmsparse.oneshot.engine`) accumulates for it:
``"gram"``, the input Gram matrix ``H = X^T X`` (its diagonal holds the squared input norms), or ``"targets"``,
AdaPrune's exact float64 ``[X 1]^T [X 1]``, ``[X 1]^T Y`` and ``sum(Y^2)`` against a target output ``Y``. A
runnable example of registering a method: docs/oneshot.md ("Adding an algorithm").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from ...errors import ConfigError
from ...pattern import NMPattern

__all__ = [
    "LayerMethod",
    "Layer",
    "LayerSolution",
    "register_method",
    "unregister_method",
    "get_method",
    "list_algorithms",
]

Statistics = Literal["gram", "targets"]


@dataclass
class Layer:
    """One layer as a method sees it: per group, an ``[out, K]`` matrix in the order of the recorded inputs.

    Attributes:
        name, module: the layer.
        weights: one ``[out/groups, K]`` matrix per group (``Conv1D`` transposed to ``[out, in]``; a conv in its
            stored ``(in/groups, kh, kw)`` column order, the order of unfolded patches), in the config's dtype.
        bias: the bias ``[out]`` (float32) or ``None``.
        stats: the statistics the method registered for (``None`` without calibration).
        pattern: the pattern; ``solver``: the :func:`~nmsparse.find_mask` method for it.
        options: the method's validated options.
        columns: for a conv, the permutation taking ``weights`` columns to the pattern's column order (input
            channels innermost, :mod:`nmsparse.layout`); ``None`` when they agree (Linear, Conv1D).
        where: prefix of error messages.
        masks: ``masks(scores)`` turns per-group scores (the weights' shapes) into masks via the solver
            (weights that are exactly zero rank below every other: sparse models are converted on their survivors).
        index: the layer's position in processing order (seeds); ``samples``: calibration samples in all batches.
    """

    name: str
    module: nn.Module
    weights: list[torch.Tensor]
    bias: torch.Tensor | None
    stats: Any
    pattern: NMPattern
    solver: str
    options: Any
    columns: torch.Tensor | None
    where: str
    masks: Callable[[list[torch.Tensor]], list[torch.Tensor]]
    index: int = 0
    samples: int = 0


@dataclass
class LayerSolution:
    """What ``solve`` returns: per group the new ``[out, K]`` matrix (zeros where pruned) and its mask, plus the
    fitted bias (``None``: unchanged) and report fields (``damping``, ``error_before``, ...)."""

    weights: list[torch.Tensor]
    masks: list[torch.Tensor]
    bias: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)
    #: ``||X (W - W')^T||^2`` summed over the groups, on the Gram statistics, when the method computed it (the
    #: engine then skips that product for the report's relative error).
    error: float | None = None


@dataclass(frozen=True)
class LayerMethod:
    """A registered per-layer algorithm (see :func:`register_method`)."""

    name: str
    solve: Callable[[Layer], LayerSolution]
    options: Any
    statistics: Statistics
    layerwise: bool
    needs_calibration: bool
    solve_bytes: Callable[[int, int, int, Any], int]
    dense_targets: Callable[[Any], bool]
    make_statistics: Callable[..., Any] | None
    statistics_bytes: Callable[[int, int, int, bool], int] | None
    permute_scores: str = "magnitude"


_METHODS: dict[str, LayerMethod] = {}

#: Saliencies of the permutation search (:func:`nmsparse.permute_`'s ``scores``) a method may name.
PERMUTE_SCORES = ("magnitude", "wanda", "sparsegpt")


def _default_solve_bytes(rows: int, cols: int, itemsize: int, options: Any) -> int:
    return 3 * rows * cols * itemsize + rows * cols


def register_method(
    name: str,
    solve: Callable[[Layer], LayerSolution],
    *,
    options: Any,
    statistics: Statistics = "gram",
    layerwise: bool = False,
    needs_calibration: bool = True,
    solve_bytes: Callable[[int, int, int, Any], int] | None = None,
    dense_targets: Callable[[Any], bool] | None = None,
    make_statistics: Callable[..., Any] | None = None,
    statistics_bytes: Callable[[int, int, int, bool], int] | None = None,
    permute_scores: str = "magnitude",
) -> None:
    """Register a per-layer algorithm for :func:`nmsparse.prune_oneshot_` (``algorithm=name``).

    Args:
        name: the algorithm's name.
        solve: ``solve(layer: Layer) -> LayerSolution``.
        options: its option table, a frozen :class:`~nmsparse.config.ConfigBase` dataclass.
        statistics: ``"gram"`` or ``"targets"`` (see the module docstring).
        layerwise: record each layer (or group of layers fed the same input) after the earlier layers of its
            block are pruned, with ``sequential=True``; otherwise a block's layers are recorded in one pass.
        needs_calibration: ``False`` lets the verb run without calibration data (``stats`` is then ``None``).
        solve_bytes: working memory of one solve from ``(rows, cols, itemsize, options)`` (for the memory plan).
        dense_targets: ``dense_targets(options)``: targets are the dense model's outputs (a dense copy of each
            block is kept while it is processed) rather than the layer's own dense output.
        make_statistics, statistics_bytes: ``"targets"`` only: ``make_statistics(view, room, options, seed,
            device)`` makes one layer's statistics (``view`` has the layer's ``name``, ``k`` inputs and ``out``
            outputs per group, ``groups``, ``bias`` and calibration ``rows``; ``room``: bytes it may store), with
            ``add(x_rows, y_rows)`` and ``rows``; ``statistics_bytes(k, out, groups, bias)`` plans their memory.
        permute_scores: the saliency :func:`nmsparse.permute_` searches on before this algorithm runs with
            ``permute=True`` and no ``permute_scores`` (``"magnitude"``, ``"wanda"`` or ``"sparsegpt"``).

    Raises:
        ConfigError: the name is taken, or ``statistics`` or ``permute_scores`` is unknown.
    """
    if name in _METHODS:
        raise ConfigError(f"register_method: algorithm {name!r} is already registered; unregister_method it first")
    incomplete = statistics == "targets" and None in (make_statistics, statistics_bytes)
    if statistics not in ("gram", "targets") or incomplete:
        raise ConfigError(
            f"register_method: statistics must be 'gram', or 'targets' with make_statistics and "
            f"statistics_bytes; got {statistics!r}"
        )
    if permute_scores not in PERMUTE_SCORES:
        raise ConfigError(f"register_method: permute_scores must be one of {PERMUTE_SCORES}, got {permute_scores!r}")
    _METHODS[name] = LayerMethod(
        name,
        solve,
        options,
        statistics,
        layerwise,
        needs_calibration,
        solve_bytes or _default_solve_bytes,
        dense_targets or (lambda _options: False),
        make_statistics,
        statistics_bytes,
        permute_scores,
    )


def unregister_method(name: str) -> None:
    """Remove a registered algorithm (tests, experiments)."""
    _METHODS.pop(name, None)


def get_method(name: object, *, where: str = "prune_oneshot_") -> LayerMethod:
    """The registered algorithm ``name``; :class:`ConfigError` listing the choices otherwise."""
    if not isinstance(name, str) or name not in _METHODS:
        raise ConfigError(
            f"{where}: algorithm must be one of {list_algorithms()}, got {name!r}; register new ones "
            f"with nmsparse.oneshot.register_method"
        )
    return _METHODS[name]


def list_algorithms() -> list[str]:
    """Names of the registered algorithms, in registration order."""
    return list(_METHODS)


from . import adaprune, magnitude, sparsegpt, wanda  # noqa: E402,F401  (register the built-in methods)
