"""Static pruning of a model: attach n:m masks (``prune_``), read and replace them, save, load and bake them in."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from .._logging import logger, progress
from ..errors import ConfigError, MaskMismatchError
from ..metrics import is_nm_sparse
from ..nn.parametrize import NMMask, _as_bool_mask
from ..pattern import NMPattern, PatternLike
from ..solvers import Method, find_mask, list_methods
from .select import DEFAULT_MODULE_TYPES, _select, group_shape, require_selected

__all__ = [
    "prune_",
    "squash_masks_",
    "get_masks",
    "set_masks_",
    "is_pruned",
    "load_pruned_state_dict_",
    "layer_mask",
    "MASK_KEY_SUFFIX",
]

#: state-dict key suffix of a pruned layer's mask (the key is ``"<module name>" + MASK_KEY_SUFFIX``).
MASK_KEY_SUFFIX = ".parametrizations.weight.0.mask"
_ORIGINAL_KEY_SUFFIX = ".parametrizations.weight.original"


# ----------------------------------------------------------------------------------------------- helpers


def _nm_mask(module: nn.Module) -> NMMask | None:
    """The :class:`NMMask` on ``module.weight``, or ``None``."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    for p in module.parametrizations.weight:
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
        return module.weight.detach()
    original = module.parametrizations.weight.original.detach()
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


def layer_mask(module: nn.Module, pattern: NMPattern, *, method: str, scores: torch.Tensor | None = None,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mask of one layer's weight; grouped convs get one :func:`find_mask` per group's slice.

    Args:
        module: a layer selected by :func:`select_layers`.
        pattern: the pattern.
        method: :func:`find_mask` method.
        scores: *optional* importance of the weight's shape (replaces ``|weight|``).
        weight: *optional* weight to score instead of the module's live weight.

    Returns:
        ``torch.bool`` mask of the weight's shape, on the weight's device.
    """
    if weight is None:
        weight = _live_weight(module)
    groups, _ = group_shape(module)
    if groups == 1 or not pattern.transposable:
        # Plain n:m groups lie within one output row, so a grouped conv's per-group masks are its row masks.
        return find_mask(weight, pattern, method=method, scores=scores, progress=False)
    rows = weight.shape[0] // groups
    parts = [
        find_mask(weight[g * rows:(g + 1) * rows], pattern, method=method, progress=False,
                  scores=None if scores is None else scores[g * rows:(g + 1) * rows])
        for g in range(groups)
    ]
    return torch.cat(parts, dim=0)


def _attach(module: nn.Module, mask: torch.Tensor, *, pattern: NMPattern | None, straight_through: bool,
            decay: float) -> NMMask:
    """Register an :class:`NMMask` on ``module.weight``, or update the existing one in place."""
    nm = _nm_mask(module)
    if nm is None:
        nm = NMMask(mask, straight_through=straight_through, decay=decay, pattern=pattern)
        # unsafe=True: NMMask keeps shape and dtype by construction, and skipping the check saves a forward.
        parametrize.register_parametrization(module, "weight", nm, unsafe=True)
        return nm
    with torch.no_grad():
        nm.mask.copy_(mask)
    nm.straight_through = straight_through
    nm.set_decay(decay)
    nm.pattern = pattern
    return nm


def _prune(model: nn.Module, pattern: PatternLike, *, method: str, include: Sequence[str] | None,
           exclude: Sequence[str] | None, keep_first_last: bool, scores: Mapping[str, torch.Tensor] | None,
           straight_through: bool, decay: float, where: str) -> dict[str, nn.Module]:
    """Shared body of :func:`prune_` and :class:`DynamicSparsifier`; returns the pruned modules by name."""
    pattern = NMPattern.parse(pattern)
    method = _check_method(method, pattern, where=where)
    selection, unfit = _select(model, pattern, include=include, exclude=exclude,
                               keep_first_last=keep_first_last, module_types=DEFAULT_MODULE_TYPES)
    if scores is not None:
        if not isinstance(scores, Mapping):
            raise ConfigError(f"{where}: scores must map module names to tensors, got {type(scores).__name__}")
        known = {name for name, module in model.named_modules() if isinstance(module, DEFAULT_MODULE_TYPES)}
        unknown = sorted(set(scores) - known)
        if unknown:
            raise ConfigError(
                f"{where}: scores has entries for {unknown}, which are not Linear/Conv2d modules of the model; "
                f"keys must be qualified module names such as {sorted(known)[:3]}"
            )
    require_selected(selection, pattern, where=where)
    if unfit:
        logger.warning("%s: %d layer(s) left dense because they cannot take pattern %s:\n%s", where, len(unfit),
                       pattern, "\n".join(f"  - {n}: {selection.skipped[n]}" for n in unfit))
    excluded = [n for n in selection.skipped if n not in unfit]
    if excluded:
        logger.info("%s: left dense by choice: %s", where, ", ".join(excluded))

    # Compute every mask before attaching any, so a failing solver leaves the model untouched.
    masks: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        items = progress(selection.selected.items(), desc=f"{where} {pattern}", total=len(selection.selected),
                         unit="layer")
        for name, module in items:
            masks[name] = layer_mask(module, pattern, method=method,
                                     scores=None if scores is None else scores.get(name))
    for name, module in selection.selected.items():
        _attach(module, masks[name], pattern=pattern, straight_through=straight_through, decay=decay)
    logger.info("%s: %d layer(s) pruned to %s with method %r", where, len(masks), pattern, method)
    return dict(selection.selected)


# ----------------------------------------------------------------------------------------------- public API


def prune_(model: nn.Module, pattern: PatternLike, *, method: Method | str = "auto",
           include: Sequence[str] | None = None, exclude: Sequence[str] | None = None,
           keep_first_last: bool = False, scores: Mapping[str, torch.Tensor] | None = None,
           straight_through: bool = False) -> nn.Module:
    """Attach n:m (or transposable n:m) masks to the Linear and Conv2d weights of ``model``, in place.

    Layers are chosen by :func:`select_layers` (``include``/``exclude`` globs, ``keep_first_last``, shape fit);
    layers that cannot take the pattern are left dense and logged with their reason (``logger.warning`` on the
    ``"nmsparse"`` logger). Each selected weight gets a mask from :func:`~nmsparse.find_mask` (grouped convs: one
    per group's slice) attached as an :class:`~nmsparse.NMMask` parametrization. The dense weight stays the same
    :class:`~torch.nn.Parameter` object (now ``<layer>.parametrizations.weight.original``), so optimizers
    created before or after pruning both work. All masks are computed before any is attached: if a solver fails
    the model is unchanged.

    Pruning an already pruned layer replaces its mask in place; it is scored on the dense weight when its mask
    is straight-through, and on ``weight * mask`` otherwise (so statically pruned weights never come back).

    Args:
        model: the model; modified in place and returned.
        pattern: ``"2:4"``, ``"4:8-T"``, ... or an :class:`~nmsparse.NMPattern`.
        method: :func:`~nmsparse.find_mask` method; ``"auto"`` is top-n for plain patterns and ``"exact"``
            for transposable ones.
        include: *optional* fnmatch globs on qualified module names; only matching layers are pruned.
        exclude: *optional* fnmatch globs; matching layers stay dense.
        keep_first_last: keep the model's first and last Linear/Conv2d dense.
        scores: *optional* module name -> importance tensor of that layer's weight shape, replacing ``|w|``
            (e.g. Wanda's ``|w| * ||x||``). Layers without an entry use ``|w|``.
        straight_through: use straight-through masks (dense gradients, for dynamic training) instead of
            static ones (masked gradients, for fine-tuning).

    Returns:
        ``model``.

    Raises:
        PatternError: unparseable pattern.
        ConfigError: unknown method, ``"topn"`` with a ``-T`` pattern, scores for unknown modules, or no
            layer at all that can be pruned (the message lists each layer's reason).
        ShapeError: a ``scores`` tensor whose shape differs from its layer's weight.

    Example:
        >>> import torch, nmsparse
        >>> model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        >>> _ = nmsparse.prune_(model, "4:8-T", method="greedy")  # the 8x3 output layer cannot take -T
        >>> list(nmsparse.get_masks(model))
        ['0']
        >>> nmsparse.is_nm_sparse(model[0].weight, "4:8-T")
        True
    """
    if not isinstance(straight_through, bool):
        raise ConfigError(f"prune_: straight_through must be a bool, got {straight_through!r}")
    _prune(model, pattern, method=method, include=include, exclude=exclude, keep_first_last=keep_first_last,
           scores=scores, straight_through=straight_through, decay=0.0, where="prune_")
    return model


def is_pruned(module: nn.Module) -> bool:
    """Whether ``module.weight`` carries an :class:`~nmsparse.NMMask` (the module itself, not its children).

    Example:
        >>> import torch, nmsparse
        >>> layer = torch.nn.Linear(8, 8)
        >>> nmsparse.is_pruned(layer), nmsparse.is_pruned(nmsparse.prune_(layer, "2:4"))
        (False, True)
    """
    return _nm_mask(module) is not None


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Masks of every pruned layer: qualified module name -> ``torch.bool`` mask of the weight's shape.

    The tensors are copies: later refreshes or :func:`set_masks_` do not change them. The root module, when
    pruned itself, is named ``""``.

    Example:
        >>> import torch, nmsparse
        >>> model = nmsparse.prune_(torch.nn.Sequential(torch.nn.Linear(4, 2)), "1:4")
        >>> {k: v.sum().item() for k, v in nmsparse.get_masks(model).items()}
        {'0': 2}
    """
    return {name: nm.mask.detach().clone() for name, (_, nm) in _pruned_modules(model).items()}


def set_masks_(model: nn.Module, masks: Mapping[str, torch.Tensor], *, strict: bool = True) -> nn.Module:
    """Replace the masks of already pruned layers, in place (the mask buffers are overwritten, not replaced).

    Every entry is checked before any mask changes: a key that is not a pruned layer, a missing pruned layer
    (with ``strict=True``), a shape other than the weight's, values other than 0/1, or a mask that breaks the
    pattern its layer was pruned with are all listed in one :class:`MaskMismatchError`.

    Args:
        model: a model pruned by :func:`prune_` (or loaded with :func:`load_pruned_state_dict_`).
        masks: qualified module name -> mask (``torch.bool``, or 0/1 of any dtype; any device).
        strict: require a mask for every pruned layer; with ``False``, layers without an entry keep theirs.

    Returns:
        ``model``.

    Raises:
        MaskMismatchError: listing every bad entry.

    Example:
        >>> import torch, nmsparse
        >>> model = nmsparse.prune_(torch.nn.Sequential(torch.nn.Linear(4, 1)), "2:4")
        >>> _ = nmsparse.set_masks_(model, {"0": torch.tensor([[True, False, False, True]])})
        >>> model[0].weight[0, 1].item()
        0.0
    """
    if not isinstance(masks, Mapping):
        raise MaskMismatchError(f"set_masks_: masks must map module names to tensors, got {type(masks).__name__}")
    pruned = _pruned_modules(model)
    problems: list[str] = []
    missing = [name for name in pruned if name not in masks]
    if strict and missing:
        problems += [f"missing: {name!r} is pruned but has no mask in the mapping" for name in missing]
    ready: dict[str, torch.Tensor] = {}
    for name, mask in masks.items():
        if name not in pruned:
            problems.append(f"unexpected: {name!r} is not a pruned layer of the model (pruned: "
                            f"{list(pruned)[:8]}{' ...' if len(pruned) > 8 else ''})")
            continue
        _, nm = pruned[name]
        if not isinstance(mask, torch.Tensor):
            problems.append(f"wrong type: {name!r} got {type(mask).__name__}, expected a torch.Tensor")
            continue
        if tuple(mask.shape) != tuple(nm.mask.shape):
            problems.append(f"wrong shape: {name!r} expects {tuple(nm.mask.shape)}, got {tuple(mask.shape)}")
            continue
        try:
            bool_mask = _as_bool_mask(mask, where=f"set_masks_[{name!r}]")
        except MaskMismatchError as exc:
            problems.append(f"wrong values: {exc}")
            continue
        if nm.pattern is not None and not is_nm_sparse(bool_mask, nm.pattern):
            problems.append(f"wrong pattern: {name!r} was pruned with {nm.pattern} and the new mask breaks it")
            continue
        ready[name] = bool_mask
    if problems:
        raise MaskMismatchError(f"set_masks_: {len(problems)} mask(s) do not fit the model, nothing was changed:\n"
                                + "\n".join(f"  - {p}" for p in problems))
    with torch.no_grad():
        for name, mask in ready.items():
            pruned[name][1].mask.copy_(mask)
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
        >>> model = nmsparse.prune_(torch.nn.Sequential(torch.nn.Linear(8, 4)), "2:4")
        >>> model = nmsparse.squash_masks_(model)
        >>> nmsparse.is_pruned(model[0]), type(model[0].weight).__name__, int((model[0].weight != 0).sum())
        (False, 'Parameter', 16)
    """
    pruned = _pruned_modules(model)
    shared = [name for name, (module, _) in pruned.items() if len(module.parametrizations.weight) != 1]
    if shared:
        raise ConfigError(
            f"squash_masks_: the weights of {shared} carry other parametrizations besides the n:m mask; "
            f"remove those first (torch.nn.utils.parametrize.remove_parametrizations)"
        )
    for module, _ in pruned.values():
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


def load_pruned_state_dict_(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *,
                            strict: bool = True) -> nn.Module:
    """Load a pruned model's state dict into a model, attaching the masks it contains first.

    For every ``"<layer>.parametrizations.weight.0.mask"`` key, an unpruned ``<layer>`` gets a static
    :class:`~nmsparse.NMMask` with that mask (an already pruned one keeps its own, overwritten by the load);
    then :meth:`~torch.nn.Module.load_state_dict` runs. Everything is checked before the model changes: a mask
    for a module that does not exist or has no weight, a mask whose shape is not the weight's, a mask without
    its ``...parametrizations.weight.original``, a pruned layer of the model with no mask in the state dict and
    (with ``strict=True``) any other missing or unexpected key or wrong shape are all listed in one error.

    Args:
        model: the model (typically freshly built, unpruned); modified in place and returned.
        state_dict: e.g. ``pruned_model.state_dict()`` or ``torch.load(path)``.
        strict: as in :meth:`torch.nn.Module.load_state_dict`; mask checks are always strict.

    Returns:
        ``model``.

    Raises:
        MaskMismatchError: listing every mismatched entry; the model is left unchanged.

    Example:
        >>> import torch, nmsparse
        >>> pruned = nmsparse.prune_(torch.nn.Sequential(torch.nn.Linear(8, 4)), "2:4")
        >>> fresh = nmsparse.load_pruned_state_dict_(torch.nn.Sequential(torch.nn.Linear(8, 4)),
        ...                                          pruned.state_dict())
        >>> torch.equal(fresh[0].weight, pruned[0].weight)
        True
    """
    if not isinstance(state_dict, Mapping):
        raise MaskMismatchError(
            f"load_pruned_state_dict_: state_dict must be a mapping of names to tensors, got "
            f"{type(state_dict).__name__}"
        )
    modules = dict(model.named_modules())
    pruned = _pruned_modules(model)
    problems: list[str] = []
    to_attach: dict[str, torch.Tensor] = {}
    mask_layers: set[str] = set()
    for key, value in state_dict.items():
        if key == MASK_KEY_SUFFIX[1:]:
            name = ""
        elif key.endswith(MASK_KEY_SUFFIX):
            name = key[: -len(MASK_KEY_SUFFIX)]
        else:
            continue
        mask_layers.add(name)
        module = modules.get(name)
        if module is None:
            problems.append(f"unexpected: {key!r}: the model has no module named {name!r}")
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            problems.append(f"unexpected: {key!r}: module {name!r} ({type(module).__name__}) has no weight")
            continue
        if not isinstance(value, torch.Tensor):
            problems.append(f"wrong type: {key!r} holds {type(value).__name__}, expected a tensor")
            continue
        if tuple(value.shape) != tuple(weight.shape):
            problems.append(f"wrong shape: {key!r} is {tuple(value.shape)} but {name!r}.weight is "
                            f"{tuple(weight.shape)}")
            continue
        original_key = (name + _ORIGINAL_KEY_SUFFIX) if name else _ORIGINAL_KEY_SUFFIX[1:]
        if original_key not in state_dict:
            problems.append(f"missing: {original_key!r}, the dense weight that goes with mask {key!r}")
        try:
            mask = _as_bool_mask(value, where=f"load_pruned_state_dict_[{key!r}]")
        except MaskMismatchError as exc:
            problems.append(f"wrong values: {exc}")
            continue
        if name in pruned:
            pattern = pruned[name][1].pattern
            if pattern is not None and not is_nm_sparse(mask, pattern):
                problems.append(f"wrong pattern: {key!r} breaks {pattern}, the pattern {name!r} was pruned with")
        else:
            if parametrize.is_parametrized(module, "weight"):
                problems.append(f"unexpected: {key!r}: {name!r}.weight already carries another parametrization")
                continue
            to_attach[name] = mask.to(weight.device)
    for name in pruned:
        if name not in mask_layers:
            key = (name + MASK_KEY_SUFFIX) if name else MASK_KEY_SUFFIX[1:]
            problems.append(f"missing: {key!r}: layer {name!r} of the model is pruned but the state dict has no "
                            f"mask for it (squash_masks_ the model first to load dense weights)")
    if problems:
        raise MaskMismatchError(
            f"load_pruned_state_dict_: {len(problems)} mask entr{'y' if len(problems) == 1 else 'ies'} do not "
            f"fit the model, nothing was loaded:\n" + "\n".join(f"  - {p}" for p in problems)
        )

    attached: list[nn.Module] = []
    for name, mask in to_attach.items():
        parametrize.register_parametrization(modules[name], "weight", NMMask(mask), unsafe=True)
        attached.append(modules[name])
    try:
        if strict:
            _check_keys(model, state_dict)
        model.load_state_dict(state_dict, strict=strict)
    except (MaskMismatchError, RuntimeError) as exc:
        for module in attached:  # undo: the model is left as it was
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        if isinstance(exc, MaskMismatchError):
            raise
        raise MaskMismatchError(f"load_pruned_state_dict_: {exc}") from exc
    return model


def _check_keys(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Strict key and shape check before loading, so a failing load copies nothing."""
    expected = model.state_dict(keep_vars=True)
    problems = [f"missing: {k!r}" for k in expected if k not in state_dict]
    problems += [f"unexpected: {k!r}" for k in state_dict if k not in expected]
    for key, value in state_dict.items():
        target = expected.get(key)
        if (isinstance(value, torch.Tensor) and isinstance(target, torch.Tensor)
                and not isinstance(target, nn.parameter.UninitializedParameter)
                and tuple(value.shape) != tuple(target.shape)):
            problems.append(f"wrong shape: {key!r} is {tuple(value.shape)}, the model expects {tuple(target.shape)}")
    if problems:
        raise MaskMismatchError(
            f"load_pruned_state_dict_: the state dict does not match the model (after attaching its masks), "
            f"nothing was loaded:\n" + "\n".join(f"  - {p}" for p in problems)
            + "\npass strict=False to load the matching entries only"
        )

