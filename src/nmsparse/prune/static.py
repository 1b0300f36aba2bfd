"""Static pruning of a model: attach n:m masks (``prune_``), read and replace them, and bake them in.

**Key convention.** A mask is keyed by the name of the tensor it masks as it appears in a plain (unpruned)
model's ``state_dict``: ``"0.weight"``, ``"encoder.layer.0.attention.self.query.weight"`` (torch.ao.pruning's
``tensor_fqn``). :func:`get_masks`, :func:`set_masks_`, :func:`nmsparse.io.save_masks` /
:func:`~nmsparse.io.load_masks`, ``nmsparse mask`` and every checkpoint written by :mod:`nmsparse.io` use it, so
``set_masks_(model, load_masks(path))`` works on the CLI's output.

**Parameter order.** Pruning keeps ``model.parameters()`` in the order it had before (see
:class:`~nmsparse.nn.parametrize.KeepOrder`), so optimizer state saved before pruning loads into an optimizer
built after, and an optimizer built before pruning keeps the same parameter objects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.utils import parametrize

from .._logging import logger
from .._logging import progress as with_progress
from ..errors import ConfigError, MaskMismatchError, ShapeError
from ..layout import fits, from_matrix, to_matrix
from ..nn.parametrize import KeepOrder, NMMask, _as_bool_mask
from ..nn.sharding import bump_generation, install_forward_hook, is_dtensor
from ..nn.state import install_state_hooks, remove_state_hooks
from ..pattern import NMPattern, PatternLike
from ..solvers import Method, find_mask, list_methods
from ._views import crop_view, from_view, mask_fits, pad_view, to_view
from .report import PrunedLayer, PruneReport
from .select import (
    _is_candidate,
    _select,
    group_shape,
    is_transposed_layer,
    parametrizations_of,
    require_selected,
    weight_of,
)

if TYPE_CHECKING:
    from ..permute import PermuteReport

__all__ = [
    "prune_",
    "squash_masks_",
    "get_masks",
    "set_masks_",
    "is_pruned",
    "layer_mask",
    "apply_mask_",
    "remove_mask_",
    "tensor_fqn",
    "MASK_KEY_SUFFIX",
]

#: Key suffix of a pruned layer's mask buffer in the *raw* ``model.state_dict()`` of a pruned model
#: (``"<module name>" + MASK_KEY_SUFFIX``). Files written by :mod:`nmsparse.io` use plain tensor names instead.
MASK_KEY_SUFFIX = ".parametrizations.weight.0.mask"
_ORIGINAL_KEY_SUFFIX = ".parametrizations.weight.original"


# ----------------------------------------------------------------------------------------------- helpers


def tensor_fqn(module_name: str, tensor: str = "weight") -> str:
    """Plain state-dict key of ``module_name``'s ``tensor``: the key convention of every mask mapping.

    Example:
        >>> tensor_fqn("encoder.0"), tensor_fqn("")
        ('encoder.0.weight', 'weight')
    """
    return f"{module_name}.{tensor}" if module_name else tensor


def _nm_mask(module: nn.Module) -> NMMask | None:
    """The :class:`NMMask` on ``module.weight``, or ``None``."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    for p in parametrizations_of(module).weight:
        if isinstance(p, NMMask):
            return p
    return None


def _pruned_modules(model: nn.Module) -> dict[str, tuple[nn.Module, NMMask]]:
    """Qualified name -> (module, its NMMask) for every pruned module, in model order."""
    out = {}
    for name, module in model.named_modules():
        nm = _nm_mask(module)
        if nm is not None:
            out[name] = (module, nm)
    return out


def _live_weight(module: nn.Module) -> torch.Tensor:
    """The weight a new mask should be scored on.

    Unpruned: the weight. Pruned with a straight-through mask: the dense ``original`` (pruned weights are alive
    and may come back). Pruned with a static mask: ``original * mask`` (pruned weights are dead; re-pruning
    never revives them).
    """
    nm = _nm_mask(module)
    if nm is None:
        return weight_of(module).detach()
    original = parametrizations_of(module).weight.original.detach()
    return original if nm.straight_through else original * nm.mask


def _check_method(method: str, pattern: NMPattern, *, where: str, name: str = "method") -> str:
    if not isinstance(method, str) or method not in list_methods():
        raise ConfigError(f"{where}: {name} must be one of {list_methods()}, got {method!r}")
    if method == "topn" and pattern.transposable:
        raise ConfigError(
            f"{where}: {name}='topn' does not make transposable masks (pattern {pattern}); use 'exact', "
            f"'greedy' or 'greedy-repair', or the plain pattern '{pattern.n}:{pattern.m}'"
        )
    return method


def _solve(
    view: torch.Tensor, pattern: NMPattern, *, method: str, scores: torch.Tensor | None, pad: bool
) -> torch.Tensor:
    """Mask of one 2-D/4-D view; with ``pad``, a view that does not fit is zero-padded, solved and cropped."""
    if not pad or fits(tuple(view.shape), pattern):
        return find_mask(view, pattern, method=method, scores=scores, progress=False)
    matrix = to_matrix(view)
    rows, cols = matrix.shape
    # Padding with zero weights (and zero scores): finite input for every solver, the lowest possible |w|, and
    # cropped off afterwards, so no padded entry can be kept.
    padded_scores = None if scores is None else pad_view(to_matrix(scores), pattern)
    mask = find_mask(pad_view(matrix, pattern), pattern, method=method, scores=padded_scores, progress=False)
    return from_matrix(crop_view(mask, rows, cols), tuple(view.shape))


def layer_mask(
    module: nn.Module,
    pattern: NMPattern,
    *,
    method: str,
    scores: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    pad: bool = False,
) -> torch.Tensor:
    """Mask of one layer's weight; grouped convs get one :func:`find_mask` per group's slice.

    Works in the layer's matrix view (:mod:`nmsparse.prune._views`): a ``Conv1D`` weight ``[in, out]`` is
    solved transposed, an ``nn.Conv1d`` weight as a conv of height 1; the mask comes back in the stored layout.

    Args:
        module: a layer selected by :func:`select_layers`.
        pattern: the pattern.
        method: :func:`find_mask` method.
        scores: *optional* importance of the weight's (stored) shape (replaces ``|weight|``).
        weight: *optional* weight to score instead of the module's live weight.
        pad: zero-pad a view that does not fit the pattern (padded entries are never kept).

    Returns:
        ``torch.bool`` mask of the weight's shape, on the weight's device.

    Raises:
        ShapeError: ``scores`` of another shape than the weight, or (without ``pad``) a weight that does not fit.
    """
    if weight is None:
        weight = _live_weight(module)
    if is_dtensor(weight):
        raise ConfigError(
            f"layer_mask: the weight of {type(module).__name__} is already sharded (a DTensor, fully_shard); "
            f"attach masks before sharding, the conventional order: prune_ / DynamicSparsifier, then fully_shard, "
            f"then build the optimizer"
        )
    if scores is not None and tuple(scores.shape) != tuple(weight.shape):
        raise ShapeError(
            f"layer_mask: scores must have the weight's shape {tuple(weight.shape)}, got {tuple(scores.shape)}"
        )
    transposed = is_transposed_layer(module)
    view = to_view(weight, transposed=transposed)
    score_view = None if scores is None else to_view(scores, transposed=transposed)
    groups, _ = group_shape(module)
    if groups == 1 or not pattern.transposable:
        # Plain n:m groups lie within one output row, so a grouped conv's per-group masks are its row masks.
        mask = _solve(view, pattern, method=method, scores=score_view, pad=pad)
    else:
        rows = view.shape[0] // groups
        mask = torch.cat(
            [
                _solve(
                    view[g * rows : (g + 1) * rows],
                    pattern,
                    method=method,
                    pad=pad,
                    scores=None if score_view is None else score_view[g * rows : (g + 1) * rows],
                )
                for g in range(groups)
            ],
            dim=0,
        )
    return from_view(mask, tuple(weight.shape), transposed=transposed)


def _register_keeping_order(module: nn.Module, nm: NMMask) -> None:
    """``register_parametrization(module, "weight", nm)`` without changing the order of ``module.parameters()``."""
    names = [name for name, param in module._parameters.items() if param is not None]
    after = names[names.index("weight") + 1 :] if "weight" in names else []
    # unsafe=True: NMMask keeps shape and dtype by construction, and skipping the check saves a forward.
    parametrize.register_parametrization(module, "weight", nm, unsafe=True)
    for name in after:
        if not parametrize.is_parametrized(module, name):
            parametrize.register_parametrization(module, name, KeepOrder(), unsafe=True)
    install_state_hooks(module)
    bump_generation()
    install_forward_hook()
    children = module._modules
    if next(iter(children)) != "parametrizations":
        items = list(children.items())
        children.clear()
        children["parametrizations"] = dict(items)["parametrizations"]
        children.update((key, value) for key, value in items if key != "parametrizations")


def remove_mask_(module: nn.Module, *, leave_masked: bool = True) -> nn.Module:
    """Remove the :class:`NMMask` from ``module.weight`` (and the order-keeping identities), in place.

    Args:
        module: a pruned layer.
        leave_masked: keep ``weight * mask`` as the plain weight (zeros baked in); ``False`` restores the dense
            weight.

    Returns:
        ``module``, a plain layer again with its parameters in their original order.

    Raises:
        ConfigError: ``module`` is not pruned, or its weight carries other parametrizations too.

    Example:
        >>> import torch, nmsparse
        >>> from nmsparse.prune import remove_mask_
        >>> layer = remove_mask_(nmsparse.prune_(torch.nn.Linear(8, 4), "2:4").model)
        >>> nmsparse.is_pruned(layer), int((layer.weight == 0).sum())
        (False, 16)
    """
    if _nm_mask(module) is None:
        raise ConfigError(f"remove_mask_: {type(module).__name__} is not pruned (its weight carries no NMMask)")
    if len(parametrizations_of(module).weight) != 1:
        raise ConfigError(
            f"remove_mask_: the weight of {type(module).__name__} carries other parametrizations besides the n:m "
            f"mask; remove those first (torch.nn.utils.parametrize.remove_parametrizations)"
        )
    keepers = [
        name
        for name, plist in parametrizations_of(module).items()
        if name != "weight" and len(plist) == 1 and isinstance(plist[0], KeepOrder)
    ]
    # torch removes the property from the module's parametrized class, which a deep copy of the model shares
    # with the original: give this module a class of its own first, so the other copies keep working.
    cls = type(module)
    module.__class__ = type(
        cls.__name__, cls.__bases__, {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
    )
    nm = _nm_mask(module)
    if nm is not None:
        nm.unstash()
    remove_state_hooks(module)
    bump_generation()
    parametrize.remove_parametrizations(module, "weight", leave_parametrized=leave_masked)
    for name in keepers:
        parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return module


def apply_mask_(
    module: nn.Module,
    mask: torch.Tensor,
    *,
    pattern: PatternLike | None = None,
    straight_through: bool = False,
    decay: float = 0.0,
    padded: bool = False,
) -> NMMask:
    """Attach ``mask`` to ``module.weight`` as an :class:`~nmsparse.NMMask`, or overwrite the existing one in place.

    The one way nmsparse attaches masks (``prune_``, ``DynamicSparsifier``, AdaPrune, one-shot pruning and
    :func:`nmsparse.io.load_pruned_` all use it): parameter order is kept, ``Conv1D`` layers are recorded as
    transposed, and the pattern is checked.

    Args:
        module: a Linear/Conv1d/Conv2d/Conv1D layer.
        mask: ``torch.bool`` (or 0/1) mask of the weight's stored shape.
        pattern: the pattern the mask obeys (checked; ``None``: unchecked and unrecorded).
        straight_through: straight-through gradients (dynamic training).
        decay: SR-STE decay (only with ``straight_through``).
        padded: the mask was solved on a zero-padded view (the pattern is checked on that view).

    Returns:
        The layer's :class:`~nmsparse.NMMask`.

    Raises:
        MaskMismatchError: a mask of another shape, with values other than 0/1, or one that breaks ``pattern``.

    Example:
        >>> import torch, nmsparse
        >>> from nmsparse.prune import apply_mask_
        >>> layer = torch.nn.Linear(4, 2)
        >>> _ = apply_mask_(layer, torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]]), pattern="2:4")
        >>> [name for name, _ in layer.named_parameters()]
        ['parametrizations.weight.original', 'parametrizations.bias.original']
    """
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise MaskMismatchError(f"apply_mask_: {type(module).__name__} has no weight tensor to mask")
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(weight.shape):
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise MaskMismatchError(
            f"apply_mask_: mask must be a tensor of the weight's shape {tuple(weight.shape)}, got {got}"
        )
    bool_mask = _as_bool_mask(mask, where="apply_mask_").to(weight.device)
    parsed = None if pattern is None else NMPattern.parse(pattern)
    transposed = is_transposed_layer(module)
    if parsed is not None and not mask_fits(bool_mask, parsed, transposed=transposed, padded=padded):
        raise MaskMismatchError(
            f"apply_mask_: the mask breaks pattern {parsed} on the layer's matrix view"
            + (" (stored [in, out], so groups run along dim 0)" if transposed else "")
        )
    nm = _nm_mask(module)
    if nm is None:
        nm = NMMask(
            bool_mask,
            straight_through=straight_through,
            decay=decay,
            pattern=parsed,
            transposed=transposed,
            padded=padded,
        )
        _register_keeping_order(module, nm)
        return nm
    with torch.no_grad():
        nm.mask.copy_(bool_mask)
    nm.straight_through = straight_through
    nm.set_decay(decay)
    nm.pattern, nm.transposed, nm.padded = parsed, transposed, padded
    return nm


def _attach(
    module: nn.Module,
    mask: torch.Tensor,
    *,
    pattern: NMPattern | None,
    straight_through: bool,
    decay: float,
    padded: bool = False,
) -> NMMask:
    """Register an :class:`NMMask` on ``module.weight``, or update the existing one in place."""
    return apply_mask_(module, mask, pattern=pattern, straight_through=straight_through, decay=decay, padded=padded)


def _kept_fraction(weight: torch.Tensor, mask: torch.Tensor) -> float:
    magnitude = weight.detach().abs().double()
    total = float(magnitude.sum())
    return float((magnitude * mask).sum()) / total if total else 1.0


def _check_scores(
    model: nn.Module, scores: Mapping[str, torch.Tensor] | None, *, where: str
) -> dict[str, torch.Tensor] | None:
    """``scores`` keyed by module name (internally), validated; the caller's keys are tensor names."""
    if scores is None:
        return None
    if not isinstance(scores, Mapping):
        raise ConfigError(f"{where}: scores must map tensor names ('0.weight') to tensors, got {type(scores).__name__}")
    known = {tensor_fqn(name): name for name, module in model.named_modules() if _is_candidate(module, None)}
    unknown = sorted(set(scores) - set(known))
    if unknown:
        hint = [f"{k}.weight" for k in unknown if f"{k}.weight" in known or (k == "" and "weight" in known)]
        raise ConfigError(
            f"{where}: scores has entries for {unknown}, which are not weights of Linear/Conv1d/Conv2d/Conv1D "
            f"modules of the model; keys are tensor names such as {sorted(known)[:3]}"
            + (f" (did you mean {hint}?)" if hint else "")
        )
    return {known[key]: value for key, value in scores.items()}


def _prune(
    model: nn.Module,
    pattern: PatternLike,
    *,
    method: str,
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
    keep_first_last: bool,
    scores: Mapping[str, torch.Tensor] | None,
    straight_through: bool,
    decay: float,
    where: str,
    pad: bool = False,
    progress: bool | None = None,
    permute: bool = False,
) -> tuple[dict[str, nn.Module], PruneReport]:
    """Shared body of :func:`prune_` and :class:`DynamicSparsifier`; returns the pruned modules and the report.

    ``permute``: once the layers are selected, reorder the model's free channels with :func:`nmsparse.permute_`
    (magnitude scores, on the selected layers) before any mask is chosen; its report is ``report.permutation``.
    """
    if permute and scores is not None:
        raise ConfigError(
            f"{where}: permute=True cannot take scores (they describe the unpermuted weights); call "
            "nmsparse.permute_(model, pattern, calibration, scores=...) first, then prune_ with scores of the "
            "permuted model"
        )
    pattern = NMPattern.parse(pattern)
    method = _check_method(method, pattern, where=where)
    selection, unfit = _select(
        model, pattern, include=include, exclude=exclude, keep_first_last=keep_first_last, module_types=None, pad=pad
    )
    by_module = _check_scores(model, scores, where=where)
    require_selected(selection, pattern, where=where)
    permutation: PermuteReport | None = None
    if permute:
        from ..permute import permute_

        permutation = permute_(model, pattern, None, scores="magnitude", layers=list(selection.selected))
    if unfit:
        logger.warning(
            "%s: %d layer(s) left dense because they cannot take pattern %s:\n%s",
            where,
            len(unfit),
            pattern,
            "\n".join(f"  - {n}: {selection.skipped[n]}" for n in unfit),
        )
    excluded = [n for n in selection.skipped if n not in unfit]
    if excluded:
        logger.info("%s: left dense by choice: %s", where, ", ".join(excluded))
    used = method if method != "auto" else ("exact" if pattern.transposable else "topn")

    # Compute every mask before attaching any, so a failing solver leaves the model untouched.
    masks: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        items = with_progress(
            selection.selected.items(),
            desc=f"{where} {pattern}",
            total=len(selection.selected),
            unit="layer",
            enabled=progress,
        )
        for name, module in items:
            masks[name] = layer_mask(
                module,
                pattern,
                method=method,
                pad=name in selection.padded,
                scores=None if by_module is None else by_module.get(name),
            )
    report = PruneReport(
        verb=where,
        pattern=str(pattern),
        method=used,
        skipped=dict(selection.skipped),
        model=model,
        permutation=permutation,
    )
    for name, module in selection.selected.items():
        score = None if by_module is None else by_module.get(name)
        kept = _kept_fraction(_live_weight(module) if score is None else score, masks[name])
        _attach(
            module,
            masks[name],
            pattern=pattern,
            straight_through=straight_through,
            decay=decay,
            padded=name in selection.padded,
        )
        report.pruned.append(
            PrunedLayer(
                name=name,
                tensor=tensor_fqn(name),
                layer_type=_layer_type(module),
                shape=tuple(int(x) for x in weight_of(module).shape),
                transposed=is_transposed_layer(module),
                padded_to=selection.padded.get(name),
                kept_magnitude=kept,
            )
        )
    logger.info("%s: %d layer(s) pruned to %s with method %r", where, len(masks), pattern, used)
    return dict(selection.selected), report


def _layer_type(module: nn.Module) -> str:
    """Class name of a layer, without the ``Parametrized`` prefix torch's parametrizations add."""
    cls = type(module)
    if parametrize.is_parametrized(module):
        cls = cls.__bases__[0]
    return cls.__name__


# ----------------------------------------------------------------------------------------------- public API


def prune_(
    model: nn.Module,
    pattern: PatternLike,
    *,
    method: Method | str = "auto",
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    keep_first_last: bool = False,
    scores: Mapping[str, torch.Tensor] | None = None,
    straight_through: bool = False,
    pad: bool = False,
    progress: bool | None = None,
    permute: bool = False,
) -> PruneReport:
    """Attach n:m (or transposable n:m) masks to the Linear, Conv1d, Conv2d and Conv1D weights of ``model``.

    Layers are chosen by :func:`select_layers` (``include``/``exclude`` globs, ``keep_first_last``, tied weights,
    shape fit); every layer left dense is listed with its reason in the returned
    :class:`~nmsparse.prune.PruneReport` (layers that cannot take the pattern are also logged with
    ``logger.warning`` on the ``"nmsparse"`` logger). Each selected weight gets a mask from
    :func:`~nmsparse.find_mask` (grouped convs: one per group's slice; ``Conv1D`` weights ``[in, out]`` along
    dim 0, the reduction dimension) attached as an :class:`~nmsparse.NMMask` parametrization. The dense weight stays the
    same :class:`~torch.nn.Parameter` object (now ``<layer>.parametrizations.weight.original``) and
    ``model.parameters()`` keeps its order, so optimizers (and optimizer state) from before or after pruning both
    work. All masks are computed before any is attached: if a solver fails the model is unchanged.

    Pruning an already pruned layer replaces its mask in place; it is scored on the dense weight when its mask
    is straight-through, and on ``weight * mask`` otherwise (so statically pruned weights never come back).

    Args:
        model: the model; modified in place (and held by the report as ``.model``).
        pattern: ``"2:4"``, ``"4:8-T"``, ... or an :class:`~nmsparse.NMPattern`.
        method: :func:`~nmsparse.find_mask` method; ``"auto"`` is top-n for plain patterns and ``"exact"``
            for transposable ones.
        include: *optional* fnmatch globs on qualified module names; only matching layers are pruned.
        exclude: *optional* fnmatch globs; matching layers stay dense.
        keep_first_last: keep the model's first and last prunable layers dense (default ``False``, the one
            default of nmsparse's library verbs).
        scores: *optional* tensor name (``"0.weight"``, the key convention of masks) -> importance tensor of
            that weight's shape, replacing ``|w|`` (e.g. Wanda's ``|w| * ||x||``). Layers without one use ``|w|``.
        straight_through: use straight-through masks (dense gradients, for dynamic training) instead of
            static ones (masked gradients, for fine-tuning).
        pad: zero-pad the matrix view of layers whose sizes are not multiples of ``m`` (a 3-channel stem, an
            odd vocabulary) instead of leaving them dense; padded entries are never kept, and the report lists
            the padded shape per layer.
        progress: show a progress bar over the layers (``None``: when stderr is a terminal).
        permute: first reorder the model's free channels with :func:`nmsparse.permute_` (``scores="magnitude"``,
            no calibration, the selected layers scored) so the masks keep more; the function is unchanged and the
            permutation is baked into the weights. The model must carry no masks yet, and ``scores`` cannot be
            given with it (they would describe the unpermuted weights). Its report is ``report.permutation``.

    Returns:
        A :class:`~nmsparse.prune.PruneReport`: every pruned layer (kept magnitude, padding), every layer left
        dense with its reason, ``.model``, the pruned ``model`` itself, and ``.permutation`` (with ``permute``).

    Raises:
        PatternError: unparseable pattern.
        ConfigError: unknown method, ``"topn"`` with a ``-T`` pattern, scores for unknown tensors, or no
            layer at all that can be pruned (the message lists each layer's reason).
        ShapeError: a ``scores`` tensor whose shape differs from its layer's weight.

    Example:
        >>> import torch, nmsparse
        >>> model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        >>> report = nmsparse.prune_(model, "4:8-T", method="greedy")  # the 8x3 output layer cannot take -T
        >>> list(nmsparse.get_masks(report.model)), report.model is model
        (['0.weight'], True)
        >>> report.skipped["2"][:40]
        'Linear weight: the output dimension has '
        >>> nmsparse.is_nm_sparse(model[0].weight, "4:8-T")
        True
    """
    if not isinstance(straight_through, bool):
        raise ConfigError(f"prune_: straight_through must be a bool, got {straight_through!r}")
    if not isinstance(permute, bool):
        raise ConfigError(f"prune_: permute must be a bool, got {permute!r}")
    _, report = _prune(
        model,
        pattern,
        method=method,
        include=include,
        exclude=exclude,
        keep_first_last=keep_first_last,
        scores=scores,
        straight_through=straight_through,
        decay=0.0,
        where="prune_",
        pad=pad,
        progress=progress,
        permute=permute,
    )
    return report


def is_pruned(module: nn.Module) -> bool:
    """Whether ``module.weight`` carries an :class:`~nmsparse.NMMask` (the module itself, not its children).

    Example:
        >>> import torch, nmsparse
        >>> layer = torch.nn.Linear(8, 8)
        >>> nmsparse.is_pruned(layer), nmsparse.is_pruned(nmsparse.prune_(layer, "2:4").model)
        (False, True)
    """
    return _nm_mask(module) is not None


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Masks of every pruned layer: tensor name -> ``torch.bool`` mask of the weight's shape.

    Keys follow the one key convention of nmsparse: the masked tensor's name in a plain state dict
    (``"0.weight"``; ``"weight"`` when the root module itself is pruned), the keys ``nmsparse mask`` writes.
    The tensors are copies: later refreshes or :func:`set_masks_` do not change them.

    Example:
        >>> import torch, nmsparse
        >>> model = nmsparse.prune_(torch.nn.Sequential(torch.nn.Linear(4, 2)), "1:4").model
        >>> {k: v.sum().item() for k, v in nmsparse.get_masks(model).items()}
        {'0.weight': 2}
    """
    return {tensor_fqn(name): nm.mask.detach().clone() for name, (_, nm) in _pruned_modules(model).items()}


def set_masks_(
    model: nn.Module, masks: Mapping[str, torch.Tensor], *, strict: bool = True, pattern: PatternLike | None = None
) -> nn.Module:
    """Set the masks of ``model`` from a mapping, in place: the one way to apply a masks file.

    A pruned layer's mask buffer is overwritten (not replaced); a layer that is not pruned yet (a freshly built
    model) gets a static :class:`~nmsparse.NMMask` with the mask, keeping the parameter order. Every entry is
    checked before anything changes: a key that is not a layer's weight, a missing pruned weight (with
    ``strict=True``), a shape other than the weight's, values other than 0/1, or a mask that breaks ``pattern``
    or the pattern its layer was pruned with (recorded in the layer's state, so also after a reload) are all
    listed in one :class:`MaskMismatchError`.

    Args:
        model: the model, pruned (:func:`prune_`, :func:`nmsparse.io.load_pruned_`) or not.
        masks: tensor name (``"0.weight"``, as :func:`get_masks`, :func:`nmsparse.io.load_masks` and
            ``nmsparse mask`` give) -> mask (``torch.bool``, or 0/1 of any dtype; any device).
        strict: require a mask for every pruned layer; with ``False``, layers without an entry keep theirs.
        pattern: *optional* pattern every mask must obey (recorded on layers pruned here); by default the
            ``pattern`` attribute of ``masks`` when it has one (what :func:`nmsparse.io.load_masks` returns).

    Returns:
        ``model``.

    Raises:
        MaskMismatchError: listing every bad entry.

    Example:
        >>> import torch, nmsparse
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 1))
        >>> _ = nmsparse.set_masks_(model, {"0.weight": torch.tensor([[True, False, False, True]])}, pattern="2:4")
        >>> model[0].weight[0, 1].item(), nmsparse.is_pruned(model[0])
        (0.0, True)
    """
    if not isinstance(masks, Mapping):
        raise MaskMismatchError(f"set_masks_: masks must map tensor names to tensors, got {type(masks).__name__}")
    if pattern is None:  # the pattern a masks file records (nmsparse.io.load_masks), checked and kept
        pattern = getattr(masks, "pattern", None)
    required = None if pattern is None else NMPattern.parse(pattern)
    pruned = {tensor_fqn(name): entry for name, entry in _pruned_modules(model).items()}
    layers = {
        tensor_fqn(name): module
        for name, module in model.named_modules()
        if isinstance(getattr(module, "weight", None), torch.Tensor)
    }
    problems: list[str] = []
    missing = [name for name in pruned if name not in masks]
    if strict and missing:
        problems += [f"missing: {name!r} is pruned but has no mask in the mapping" for name in missing]
    ready: dict[str, torch.Tensor] = {}
    for name, mask in masks.items():
        if name not in layers:
            hint = (
                f"; did you mean {tensor_fqn(name)!r}? (masks are keyed by tensor name)"
                if (isinstance(name, str) and tensor_fqn(name) in layers)
                else ""
            )
            problems.append(
                f"unexpected: {name!r} is not the weight of a layer of the model (pruned: "
                f"{list(pruned)[:8]}{' ...' if len(pruned) > 8 else ''}){hint}"
            )
            continue
        module = layers[name]
        nm = _nm_mask(module)
        if nm is None and parametrize.is_parametrized(module, "weight"):
            problems.append(f"unexpected: {name!r} already carries another parametrization")
            continue
        if not isinstance(mask, torch.Tensor):
            problems.append(f"wrong type: {name!r} got {type(mask).__name__}, expected a torch.Tensor")
            continue
        shape = tuple(weight_of(module).shape)
        if tuple(mask.shape) != shape:
            problems.append(f"wrong shape: {name!r} expects {shape}, got {tuple(mask.shape)}")
            continue
        try:
            bool_mask = _as_bool_mask(mask, where=f"set_masks_[{name!r}]")
        except MaskMismatchError as exc:
            problems.append(f"wrong values: {exc}")
            continue
        transposed = is_transposed_layer(module) if nm is None else nm.transposed
        padded = False if nm is None else nm.padded
        checks = [p for p in (None if nm is None else nm.pattern, required) if p is not None]
        broken = [p for p in checks if not mask_fits(bool_mask, p, transposed=transposed, padded=padded)]
        if broken:
            how = "was pruned with" if nm is not None and nm.pattern == broken[0] else "must obey"
            problems.append(f"wrong pattern: {name!r} {how} {broken[0]} and the new mask breaks it")
            continue
        ready[name] = bool_mask
    if problems:
        raise MaskMismatchError(
            f"set_masks_: {len(problems)} mask(s) do not fit the model, nothing was changed:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )
    with torch.no_grad():
        for name, mask in ready.items():
            if name in pruned:
                nm = pruned[name][1]
                nm.mask.copy_(mask)
                if nm.pattern is None and required is not None:
                    nm.pattern = required
            else:
                apply_mask_(layers[name], mask, pattern=required)
    return model


def squash_masks_(model: nn.Module) -> nn.Module:
    """Bake ``weight * mask`` into plain weights and remove the mask parametrizations, in place.

    Afterwards every formerly pruned layer is a plain module whose ``weight`` (still the same Parameter object)
    holds zeros at pruned positions, and the state dict has plain ``"<layer>.weight"`` keys again.

    Args:
        model: a pruned model (layers without masks are left alone).

    Returns:
        ``model``.

    Raises:
        ConfigError: a pruned weight that also carries another parametrization (nothing is changed then).

    Example:
        >>> import torch, nmsparse
        >>> model = nmsparse.prune_(torch.nn.Sequential(torch.nn.Linear(8, 4)), "2:4").model
        >>> model = nmsparse.squash_masks_(model)
        >>> nmsparse.is_pruned(model[0]), type(model[0].weight).__name__, int((model[0].weight != 0).sum())
        (False, 'Parameter', 16)
    """
    pruned = _pruned_modules(model)
    shared = [name for name, (module, _) in pruned.items() if len(parametrizations_of(module).weight) != 1]
    if shared:
        raise ConfigError(
            f"squash_masks_: the weights of {shared} carry other parametrizations besides the n:m mask; "
            f"remove those first (torch.nn.utils.parametrize.remove_parametrizations)"
        )
    for module, _ in pruned.values():
        remove_mask_(module, leave_masked=True)
    return model
