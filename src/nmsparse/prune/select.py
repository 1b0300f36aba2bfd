"""Which layers of a model get masks: module type, name globs, first/last layers, tied weights and shape fit.

Layers: ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` and ``transformers``' ``Conv1D`` (GPT-2's linears, weight
stored ``[in, out]``; recognised by duck typing, so ``transformers`` is not imported). For every one of them the
n:m groups run along the reduction (input) dimension of the product (see :mod:`nmsparse.prune._views`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConfigError, ShapeError
from ..layout import check_fits, is_transposed_layer
from ..nn.parametrize import NMMask
from ..pattern import NMPattern, PatternLike

__all__ = ["LayerSelection", "select_layers", "group_shape", "require_selected", "is_transposed_layer"]

#: Module classes considered by default, besides ``transformers``' ``Conv1D`` (see :func:`is_transposed_layer`).
DEFAULT_MODULE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)


def parametrizations_of(module: nn.Module) -> Any:
    """``module.parametrizations`` (torch's ``ModuleDict`` of ``ParametrizationList``), loosely typed."""
    return module.parametrizations


def weight_of(module: nn.Module) -> torch.Tensor:
    """``module.weight`` as a tensor (the parametrized value for a pruned layer)."""
    weight = module.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(module).__name__}.weight is not a tensor")
    return weight


def _is_candidate(module: nn.Module, module_types: tuple[type[nn.Module], ...] | None) -> bool:
    if module_types is None:
        return isinstance(module, DEFAULT_MODULE_TYPES) or is_transposed_layer(module)
    return isinstance(module, module_types)


@dataclass
class LayerSelection:
    """Result of :func:`select_layers`.

    Attributes:
        selected: qualified module name -> module that takes the pattern, in model order.
        skipped: qualified module name -> human-readable reason, for every module of the requested types
            that is left dense.
        padded: qualified module name -> ``(rows, K)`` of the zero-padded matrix view, for selected layers that
            only take the pattern with ``pad=True``.
    """

    selected: dict[str, nn.Module] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    padded: dict[str, tuple[int, int]] = field(default_factory=dict)

    def describe(self) -> str:
        """Multi-line summary: one line per selected and per skipped layer."""
        lines = [f"{len(self.selected)} layer(s) selected, {len(self.skipped)} skipped"]
        lines += [
            f"  + {name}: {type(module).__name__} {tuple(_weight_shape(module))}"
            + (f" (padded to {self.padded[name][0]}x{self.padded[name][1]})" if name in self.padded else "")
            for name, module in self.selected.items()
        ]
        lines += [f"  - {name}: {reason}" for name, reason in self.skipped.items()]
        return "\n".join(lines)


def _weight_shape(module: nn.Module) -> tuple[int, ...]:
    return tuple(int(s) for s in weight_of(module).shape)


def group_shape(module: nn.Module) -> tuple[int, tuple[int, ...]]:
    """``(groups, shape of one group's slice of the weight's view)`` of a Linear/Conv-like module.

    The view is the 2-D/4-D tensor the solvers take (:func:`nmsparse.prune._views.to_view`: a Conv1D weight is
    transposed, an ``nn.Conv1d`` weight gets a unit height). A conv with ``groups=g`` has weight
    ``[out, in/g, ...]``; each group is the slice of ``out/g`` output rows, masked as its own matrix.
    """
    from ._views import view_shape

    shape = view_shape(weight_of(module).shape, transposed=is_transposed_layer(module))
    groups = int(getattr(module, "groups", 1) or 1)
    if groups <= 1 or shape[0] % groups:
        return 1, shape
    return groups, (shape[0] // groups, *shape[1:])


def _check_globs(name: str, globs: Sequence[str] | None) -> list[str] | None:
    if globs is None:
        return None
    if isinstance(globs, str):
        globs = [globs]  # a lone string is one glob, not a sequence of one-character globs
    out = list(globs)
    for glob in out:
        if not isinstance(glob, str):
            raise ConfigError(f"select_layers: {name} must be a sequence of glob strings, got item {glob!r}")
    return out


def _matches(name: str, globs: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, glob) for glob in globs)


def _shared_weights(model: nn.Module) -> dict[int, list[str]]:
    """``id(parameter)`` -> every qualified name it is reachable under (tied weights have several)."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return names


def _unfit_reason(
    module: nn.Module,
    pattern: NMPattern,
    *,
    pad: bool = False,
    shared: dict[int, list[str]] | None = None,
    name: str = "",
) -> str | tuple[int, int] | None:
    """Why ``module``'s weight cannot take ``pattern``; ``None`` when it can; the padded view shape with ``pad``."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return "has no weight tensor"
    if isinstance(weight, nn.parameter.UninitializedParameter):
        return "lazy module whose weight is not initialised yet; run one forward pass before pruning"
    if parametrize.is_parametrized(module, "weight"):
        others = [type(p).__name__ for p in parametrizations_of(module).weight if not isinstance(p, NMMask)]
        if others:
            return (
                f"weight already has parametrization(s) {others}; nmsparse masks must be the only one "
                f"(remove them first, e.g. torch.nn.utils.parametrize.remove_parametrizations)"
            )
    if shared is not None and not parametrize.is_parametrized(module, "weight"):
        others = [n for n in shared.get(id(weight), []) if n != (f"{name}.weight" if name else "weight")]
        if others:
            return (
                f"weight is shared with {others} (tied weights); a mask on one of its users would leave the "
                f"others dense, so it stays dense (untie it first to prune it)"
            )
    if weight.dim() not in (2, 3, 4):
        return f"weight is {weight.dim()}-D {tuple(weight.shape)}; expected 2-D (Linear), 3-D (Conv1d) or 4-D (Conv2d)"
    groups, shape = group_shape(module)
    total_groups = int(getattr(module, "groups", 1) or 1)
    if total_groups > 1 and groups == 1:
        return f"weight has {weight.shape[0]} output rows, not divisible by groups={total_groups}"
    try:
        check_fits(
            shape,
            pattern,
            where=f"{type(module).__name__} weight"
            + (f" (one of {groups} groups, slice {shape})" if groups > 1 else ""),
        )
    except ShapeError as exc:
        if not pad or "empty" in str(exc):
            return str(exc) + ("" if pad else " (or pass pad=True to zero-pad the matrix view)")
        if groups > 1 and pattern.transposable:
            return str(exc) + " (padding is not offered for grouped convs with transposable patterns)"
        from ._views import padded_shape

        return padded_shape(shape, pattern)
    return None


def _check_module_types(module_types: Any) -> tuple[type[nn.Module], ...] | None:
    if module_types is None:
        return None
    if isinstance(module_types, type):
        module_types = (module_types,)
    module_types = tuple(module_types)
    if not module_types or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in module_types):
        raise ConfigError(
            f"select_layers: module_types must be a non-empty tuple of nn.Module subclasses, got {module_types!r}"
        )
    return module_types


def _select(
    model: nn.Module,
    pattern: NMPattern,
    *,
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
    keep_first_last: bool,
    module_types: tuple[type[nn.Module], ...] | None,
    pad: bool = False,
) -> tuple[LayerSelection, set[str]]:
    """:func:`select_layers` plus the names skipped because their shape does not fit (to warn about)."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"select_layers: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(pad, bool):
        raise ConfigError(f"select_layers: pad must be a bool, got {pad!r}")
    module_types = _check_module_types(module_types)
    include_l = _check_globs("include", include)
    exclude_l = _check_globs("exclude", exclude)
    candidates = [(name, module) for name, module in model.named_modules() if _is_candidate(module, module_types)]
    shared = _shared_weights(model)
    edge: set[str] = set()
    if keep_first_last and candidates:
        edge = {candidates[0][0], candidates[-1][0]}
    selection = LayerSelection()
    unfit: set[str] = set()
    for name, module in candidates:
        label = name or "<root>"
        if include_l is not None and not _matches(name, include_l):
            selection.skipped[label] = f"not matched by include={include_l}"
        elif exclude_l is not None and _matches(name, exclude_l):
            selection.skipped[label] = f"matched by exclude={exclude_l}"
        elif name in edge:
            selection.skipped[label] = "kept dense by keep_first_last (first or last prunable layer)"
        elif isinstance(reason := _unfit_reason(module, pattern, pad=pad, shared=shared, name=name), str):
            selection.skipped[label] = reason
            unfit.add(label)
        else:
            selection.selected[name] = module
            if reason is not None:
                selection.padded[name] = reason
    return selection, unfit


def select_layers(
    model: nn.Module,
    pattern: PatternLike,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    keep_first_last: bool = False,
    module_types: tuple[type[nn.Module], ...] | None = None,
    pad: bool = False,
) -> LayerSelection:
    """Choose the layers of ``model`` that get an n:m mask, and say why every other one stays dense.

    Every module of ``module_types`` (``model.named_modules()`` order, shared modules once) is either selected
    or skipped with a reason, checked in this order:

    1. ``include``: if given, the qualified name must match one of these :mod:`fnmatch` globs
       (e.g. ``"layer*.conv*"``; matching is case-sensitive).
    2. ``exclude``: the name must match none of these globs.
    3. ``keep_first_last``: the first and last modules of ``module_types`` in the model (its input and output
       layers, independent of ``include``/``exclude``) stay dense, as in the paper's recipes.
    4. Tied weights: a weight shared with another module (GPT-2's ``lm_head`` and its token embedding) stays
       dense, since a mask would reach only one of its users.
    5. Shape: the weight must take the pattern (:func:`nmsparse.layout.check_fits`): the reduction dimension
       (``in``, or ``k*in`` / ``kh*kw*in`` for convs) a multiple of ``m``, and for ``-T`` patterns the output
       dimension a multiple of ``m`` too. Grouped convs are one matrix per group, so each group's slice must fit
       (for ``-T``: ``out/groups`` divisible by ``m``). A layer that does not fit is skipped, never half-pruned,
       unless ``pad=True``: then its matrix view is zero-padded to multiples of ``m`` (padded entries are never
       kept) and the padded shape is recorded in :attr:`LayerSelection.padded`.
       Weights that already carry another parametrization are skipped too; already pruned layers are selected.

    Args:
        model: the model to inspect (not modified).
        pattern: ``"2:4"``, ``"4:8-T"``, ... or an :class:`~nmsparse.NMPattern`.
        include: *optional* globs; only matching modules can be selected.
        exclude: *optional* globs; matching modules are skipped.
        keep_first_last: keep the first and last layers dense (default ``False`` everywhere in nmsparse).
        module_types: module classes to consider; by default ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` and
            ``transformers``' ``Conv1D``.
        pad: zero-pad layers whose sizes are not multiples of ``m`` instead of skipping them.

    Returns:
        A :class:`LayerSelection` (``selected`` may be empty; :func:`nmsparse.prune_` raises in that case).

    Raises:
        PatternError: unparseable pattern.
        ConfigError: ``model`` not a module, bad globs or ``module_types``.

    Example:
        >>> import torch.nn as nn
        >>> from nmsparse import select_layers
        >>> model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 2))
        >>> sel = select_layers(model, "2:4")
        >>> list(sel.selected), list(sel.skipped)
        (['2', '3'], ['0'])
        >>> sel.skipped['0'][:60]
        'Linear weight: the reduction dimension (in) has size 6, not '
    """
    return _select(
        model,
        NMPattern.parse(pattern),
        include=include,
        exclude=exclude,
        keep_first_last=keep_first_last,
        module_types=module_types,
        pad=pad,
    )[0]


def require_selected(selection: LayerSelection, pattern: NMPattern, *, where: str) -> None:
    """Raise :class:`ConfigError` listing why every candidate was skipped when nothing at all was selected."""
    if selection.selected:
        return
    detail = "\n".join(f"  - {name}: {reason}" for name, reason in selection.skipped.items())
    raise ConfigError(
        f"{where}: no layer of the model can take pattern {pattern}"
        + (
            f"; every candidate was skipped:\n{detail}"
            if detail
            else "; the model has no layer of the types considered (by default nn.Linear, nn.Conv1d, nn.Conv2d and "
            "transformers' Conv1D)"
        )
        + "\nrelax include/exclude/keep_first_last, use a pattern whose m divides the layers' sizes, or pad=True"
    )
