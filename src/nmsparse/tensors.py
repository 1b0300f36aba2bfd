"""Masks for every prunable weight of a state dict (no model needed): what ``nmsparse mask`` and the demo run.

Prunable: floating 2-D (Linear), 3-D (Conv1d) and 4-D (Conv2d) tensors whose key ends in ``weight``, except
embedding tables (skipped by default, see :data:`EMBEDDING_GLOBS`). Weights stored ``[in, out]``
(``transformers``' ``Conv1D``, GPT-2's linears) are named by ``transposed`` globs, or found from a model with
:func:`transposed_keys`; their groups then run along dim 0, the reduction dimension of the product. Masks are
keyed by the tensor's name, the key convention of :func:`nmsparse.set_masks_`.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ._logging import progress as with_progress
from ._logging import renamed_progress
from .errors import ConfigError, ShapeError
from .layout import check_fits
from .pattern import NMPattern, PatternLike
from .prune._views import from_view, to_view
from .solvers import find_mask

__all__ = [
    "TensorMaskResult",
    "StateDictMasks",
    "mask_state_dict",
    "transposed_keys",
    "EMBEDDING_GLOBS",
    "is_embedding_key",
]

#: Key globs of embedding tables (token, position, type embeddings), left dense by :func:`mask_state_dict`
#: unless ``include_embeddings=True``: an embedding is a lookup, no product runs over its rows.
EMBEDDING_GLOBS: tuple[str, ...] = (
    "*embed*",
    "*wte.weight",
    "*wpe.weight",
    "wte.weight",
    "wpe.weight",
    "*shared.weight",
    "shared.weight",
    "*embedding*",
)


def is_embedding_key(name: str) -> bool:
    """Whether the state-dict key ``name`` is an embedding table by its name (:data:`EMBEDDING_GLOBS`).

    Example:
        >>> is_embedding_key("transformer.wte.weight"), is_embedding_key("transformer.h.0.mlp.c_fc.weight")
        (True, False)
    """
    lowered = name.lower()
    return any(fnmatch.fnmatchcase(lowered, glob) for glob in EMBEDDING_GLOBS)


def transposed_keys(model: nn.Module) -> list[str]:
    """State-dict keys of ``model`` whose weights are stored ``[in, out]`` (``transformers``' ``Conv1D``).

    Example:
        >>> import torch
        >>> transposed_keys(torch.nn.Sequential(torch.nn.Linear(2, 2)))
        []
    """
    from .prune.select import is_transposed_layer

    return [
        f"{name}.weight" if name else "weight" for name, module in model.named_modules() if is_transposed_layer(module)
    ]


@dataclass(frozen=True)
class TensorMaskResult:
    """One solved tensor: name, shape, fraction of ``|w|`` kept, solve time."""

    name: str
    shape: tuple[int, ...]
    kept_magnitude: float
    seconds: float


@dataclass
class StateDictMasks:
    """Masks of a state dict, per-tensor results, and the weights that were skipped with the reason."""

    masks: dict[str, torch.Tensor]
    results: list[TensorMaskResult]
    skipped: dict[str, str]
    kept_abs_sum: float = 0.0
    total_abs_sum: float = 0.0
    transposed: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """Total solve time."""
        return sum(r.seconds for r in self.results)

    @property
    def kept_magnitude(self) -> float:
        """Fraction of ``|w|`` kept over all masked tensors together."""
        return self.kept_abs_sum / self.total_abs_sum if self.total_abs_sum else 1.0


def _selected(name: str, include: Sequence[str] | None, exclude: Sequence[str] | None) -> bool:
    if include and not any(fnmatch.fnmatchcase(name, g) for g in include):
        return False
    return not (exclude and any(fnmatch.fnmatchcase(name, g) for g in exclude))


def mask_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    pattern: PatternLike,
    *,
    method: str = "auto",
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    progress: bool | None = None,
    transposed: Sequence[str] | None = None,
    include_embeddings: bool = False,
    progress_bar: bool | None = None,
) -> StateDictMasks:
    """Solve a mask for every prunable weight of ``state_dict``.

    Prunable: floating 2-D, 3-D or 4-D tensors whose name ends in ``weight`` (after ``include``/``exclude``
    globs), except embedding tables unless ``include_embeddings``. Tensors whose shape cannot take ``pattern``
    and embeddings are skipped and listed with the reason.

    Args:
        state_dict: name -> tensor.
        pattern: the pattern.
        method: :func:`~nmsparse.find_mask` method.
        include: *optional* key globs; only matching tensors.
        exclude: *optional* key globs to skip.
        progress: show a progress bar (``None``: when the output is a terminal).
        transposed: *optional* exact keys or globs of weights stored ``[in, out]`` (``Conv1D``).
        include_embeddings: also mask 2-D tables whose key names an embedding (:data:`EMBEDDING_GLOBS`).
        progress_bar: deprecated name of ``progress``.

    Raises:
        ConfigError: when no tensor can take the pattern (the message lists why for each candidate).

    Example:
        >>> import torch
        >>> sd = {"fc.weight": torch.randn(8, 16), "fc.bias": torch.randn(8), "odd.weight": torch.randn(8, 6)}
        >>> out = mask_state_dict(sd, "4:8-T", method="greedy")
        >>> list(out.masks), out.skipped["odd.weight"][:28]
        (['fc.weight'], 'the reduction dimension (in)')
    """
    progress = renamed_progress(progress, progress_bar, where="mask_state_dict")
    pattern = NMPattern.parse(pattern)
    candidates: dict[str, torch.Tensor] = {}
    skipped: dict[str, str] = {}
    flipped = list(transposed or [])
    is_flipped = {name: any(fnmatch.fnmatchcase(name, g) for g in flipped) for name in state_dict}
    for name, tensor in state_dict.items():
        if not name.endswith("weight") or not _selected(name, include, exclude):
            continue
        if not torch.is_floating_point(tensor) or tensor.dim() not in (2, 3, 4):
            continue
        if tensor.dim() == 2 and not include_embeddings and is_embedding_key(name):
            skipped[name] = "embedding table (a lookup, no product to speed up); pass --include-embeddings to mask it"
            continue
        if is_flipped[name] and tensor.dim() != 2:
            raise ConfigError(f"transposed: {name!r} is {tensor.dim()}-D; only 2-D [in, out] weights can be transposed")
        try:
            check_fits(to_view(tensor, transposed=is_flipped[name]).shape, pattern, where="")
        except ShapeError as exc:
            skipped[name] = str(exc).split("; ")[0] + (" (stored [in, out])" if is_flipped[name] else "")
            continue
        candidates[name] = tensor
    if not candidates:
        reasons = "; ".join(f"{k}: {v}" for k, v in skipped.items()) or "no 2-D, 3-D or 4-D floating '*weight' tensors"
        raise ConfigError(f"nothing to prune with pattern {pattern}: {reasons}")
    out = StateDictMasks({}, [], skipped)
    for name in with_progress(
        candidates, desc=f"{pattern} masks", total=len(candidates), enabled=progress, unit="tensor"
    ):
        weight = candidates[name]
        start = time.perf_counter()
        flip = is_flipped[name]
        mask = from_view(
            find_mask(to_view(weight, transposed=flip), pattern, method=method, progress=progress),
            tuple(weight.shape),
            transposed=flip,
        )
        seconds = time.perf_counter() - start
        out.masks[name] = mask
        if flip:
            out.transposed.append(name)
        magnitude = weight.detach().abs().double()
        total, kept = float(magnitude.sum()), float((magnitude * mask).sum())
        out.total_abs_sum += total
        out.kept_abs_sum += kept
        out.results.append(TensorMaskResult(name, tuple(weight.shape), kept / total if total else 1.0, seconds))
    return out
