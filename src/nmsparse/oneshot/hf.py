"""Hugging Face causal language models: load a local folder, make calibration windows, measure perplexity, and save
a pruned model as a normal ``transformers`` folder.

A saved folder holds what ``model.save_pretrained`` writes (``config.json``, ``model.safetensors``) with the
pruned weights baked in as zeros, so ``AutoModelForCausalLM.from_pretrained(folder)`` loads it with no nmsparse
code; plus ``nmsparse_masks.safetensors`` (one bool mask per pruned tensor, keyed by the tensor's name in the
plain state dict, e.g. ``"transformer.h.0.attn.c_attn.weight"``, stored in that tensor's own layout) and an
``"nmsparse"`` entry in ``config.json`` (pattern, method, masks file). :func:`load_masks_into_` puts the masks
back as parametrizations, so a reloaded model is a pruned nmsparse model again (fine-tuning keeps the zeros).

``transformers`` is imported only inside these functions.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from .._logging import progress as _progress
from ..errors import InputError, MaskMismatchError, OverwriteError
from ..nn.parametrize import NMMask
from ..pattern import NMPattern

__all__ = [
    "MASKS_FILE",
    "CONFIG_KEY",
    "hf_folder",
    "load_causal_lm",
    "dense_state_dict",
    "pruned_masks",
    "save_pruned_pretrained",
    "load_masks_into_",
    "calibration_windows",
    "perplexity",
]

#: Side file of a saved pruned folder with the masks.
MASKS_FILE = "nmsparse_masks.safetensors"
#: Key of the nmsparse entry in ``config.json``.
CONFIG_KEY = "nmsparse"
_ORIGINAL = ".parametrizations.weight.original"
_MASK = ".parametrizations.weight.0.mask"


def hf_folder(source: str | os.PathLike[str]) -> Path:
    """The folder of ``"hf:PATH"`` or ``PATH``; it must hold a ``config.json``.

    Raises:
        InputError: no such folder, or no ``config.json`` in it.
    """
    text = os.fspath(source)
    if text.startswith("hf:"):
        text = text[3:]
    folder = Path(text).expanduser()
    if not folder.is_dir():
        raise InputError(f"{text!r} is not a folder; expected a transformers model folder (config.json and "
                         f"model.safetensors), e.g. one written by save_pretrained; nothing is downloaded")
    if not (folder / "config.json").is_file():
        raise InputError(f"{str(folder)!r} has no config.json, so it is not a transformers model folder")
    return folder


def load_causal_lm(source: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained`` of a local folder (``"hf:PATH"`` or ``PATH``), in eval mode.

    Never downloads (``local_files_only=True``). A folder saved by :func:`save_pruned_pretrained` loads as its dense
    weights with zeros; call :func:`load_masks_into_` to get the masks back as parametrizations.
    """
    from transformers import AutoModelForCausalLM

    folder = hf_folder(source)
    model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=dtype)
    return model.eval()


def _pruned_entries(model: nn.Module) -> dict[str, tuple[nn.Module, NMMask]]:
    out: dict[str, tuple[nn.Module, NMMask]] = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if isinstance(p, NMMask):
                    out[f"{name}.weight" if name else "weight"] = (module, p)
    return out


def pruned_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Tensor name (plain state-dict key, e.g. ``"model.layers.0.mlp.up_proj.weight"``) -> bool mask."""
    return {key: nm.mask.detach().clone() for key, (_, nm) in _pruned_entries(model).items()}


def dense_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain state dict of a pruned model: every masked weight as ``original * mask`` under its plain key."""
    state = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(_MASK):
            continue
        if key.endswith(_ORIGINAL):
            base = key[: -len(_ORIGINAL)]
            mask = state[base + _MASK]
            out[base + ".weight"] = value * mask
        else:
            out[key] = value
    return out


def _replace_folder(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` folder to ``out``, replacing an old ``out`` only after ``tmp`` is complete."""
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def save_pruned_pretrained(model: nn.Module, out: str | os.PathLike[str], *, pattern: str | NMPattern | None = None,
                           method: str | None = None, extra: Mapping[str, Any] | None = None,
                           overwrite: bool = False, tokenizer: Any = None) -> Path:
    """Save a (pruned) transformers model as a normal folder that ``AutoModelForCausalLM.from_pretrained`` loads.

    The weights are saved dense with the zeros baked in (safetensors); the masks go to ``nmsparse_masks.safetensors``
    and ``config.json`` gets an ``"nmsparse"`` entry (pattern, method, masks file, ``extra``). The folder is
    written beside ``out`` and moved into place when complete.

    Args:
        model: a ``transformers`` ``PreTrainedModel`` (pruned by :func:`nmsparse.prune_oneshot_` or not).
        out: the folder to write.
        pattern, method: recorded in ``config.json``.
        extra: more JSON-ready entries for the ``"nmsparse"`` record (e.g. the perplexities).
        overwrite: replace an existing ``out``; without it an existing ``out`` raises.
        tokenizer: *optional* tokenizer saved alongside (``tokenizer.save_pretrained``).

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Raises:
        OverwriteError: ``out`` exists and ``overwrite`` is false.
        InputError: ``model`` has no ``save_pretrained``.
    """
    out = Path(out)
    if not hasattr(model, "save_pretrained"):
        raise InputError(f"save_pruned_pretrained: expected a transformers PreTrainedModel, got "
                         f"{type(model).__name__}")
    if out.exists() and not overwrite:
        raise OverwriteError(f"save_pruned_pretrained: {str(out)!r} already exists; pass overwrite=True "
                             f"(--overwrite) to replace it, or choose another folder")
    if out.exists() and not out.is_dir():
        raise OverwriteError(f"save_pruned_pretrained: {str(out)!r} is a file, not a folder")
    from ..io import save_masks

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        model.save_pretrained(str(tmp), state_dict=dense_state_dict(model), safe_serialization=True)
        masks = pruned_masks(model)
        record: dict[str, Any] = {"masks_file": MASKS_FILE if masks else None, "masked_tensors": len(masks),
                                  "pattern": None if pattern is None else str(NMPattern.parse(pattern)),
                                  "method": method}
        record.update(dict(extra or {}))
        if masks:
            save_masks(masks, tmp / MASKS_FILE, metadata={"pattern": record["pattern"] or "",
                                                          "method": method or ""})
        config_path = tmp / "config.json"
        config = json.loads(config_path.read_text())
        config[CONFIG_KEY] = record
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        _replace_folder(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_masks_into_(model: nn.Module, folder: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Attach the masks of a folder saved by :func:`save_pruned_pretrained` to ``model`` (loaded from it).

    Every mask must name a weight of ``model`` with its shape; the model's weights must already be zero where the
    mask is ``False`` (true of a folder written by :func:`save_pruned_pretrained`). Nothing changes on a mismatch.

    Returns:
        The masks (tensor name -> bool mask).

    Raises:
        InputError: the folder has no masks file.
        MaskMismatchError: a mask for a missing tensor, of another shape, or with weights kept where it prunes.
    """
    from ..io import load_masks

    path = Path(os.fspath(folder).removeprefix("hf:")) / MASKS_FILE
    if not path.is_file():
        raise InputError(f"load_masks_into_: {str(path)!r} does not exist; the folder was not saved by "
                         f"save_pruned_pretrained (or nothing in it was pruned)")
    loaded = load_masks(path)
    masks = loaded[0] if isinstance(loaded, tuple) else loaded
    modules = dict(model.named_modules())
    problems: list[str] = []
    plan: list[tuple[nn.Module, torch.Tensor]] = []
    for key, mask in masks.items():
        name = key[: -len(".weight")] if key.endswith(".weight") else None
        module = modules.get(name) if name is not None else None
        weight = getattr(module, "weight", None) if module is not None else None
        if not isinstance(weight, torch.Tensor):
            problems.append(f"{key!r}: the model has no such weight")
            continue
        if tuple(mask.shape) != tuple(weight.shape):
            problems.append(f"{key!r}: mask {tuple(mask.shape)} but weight {tuple(weight.shape)}")
            continue
        if parametrize.is_parametrized(module, "weight"):
            problems.append(f"{key!r}: the weight already carries a parametrization")
            continue
        if bool((weight.detach()[~mask.bool()] != 0).any()):
            problems.append(f"{key!r}: the weight is non-zero where the mask prunes; it was not saved with it")
            continue
        plan.append((module, mask.bool().to(weight.device)))
    if problems:
        raise MaskMismatchError("load_masks_into_: the masks do not fit the model, nothing was attached:\n"
                                + "\n".join(f"  - {p}" for p in problems))
    for module, mask in plan:
        parametrize.register_parametrization(module, "weight", NMMask(mask), unsafe=True)
    return masks


def calibration_windows(tokens: torch.Tensor, *, samples: int, context: int, batch_size: int = 8,
                        seed: int = 0) -> list[torch.Tensor]:
    """``samples`` random windows of ``context`` token ids from a 1-D token stream, as ``[batch, context]`` batches.

    Raises:
        InputError: a stream shorter than one window, or non-positive counts.
    """
    if tokens.dim() != 1:
        raise InputError(f"calibration_windows: expected a 1-D tensor of token ids, got shape {tuple(tokens.shape)}")
    if samples < 1 or context < 2 or batch_size < 1:
        raise InputError(f"calibration_windows: need samples >= 1, context >= 2 and batch_size >= 1, got "
                         f"{samples}, {context}, {batch_size}")
    if tokens.numel() < context:
        raise InputError(f"calibration_windows: the token stream has {tokens.numel()} tokens, fewer than one "
                         f"window of {context}; use a shorter context")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - context + 1, (samples,), generator=generator)
    windows = torch.stack([tokens[s:s + context] for s in starts.tolist()]).long()
    return list(windows.split(batch_size))


def perplexity(model: nn.Module, tokens: torch.Tensor, *, context: int, batch_size: int = 8,
               progress: bool | None = None) -> float:
    """Perplexity of a causal LM on a 1-D token stream cut into non-overlapping windows of ``context`` tokens.

    Every window predicts its tokens 2..context from the ones before (no cross-window context); the result is
    ``exp(mean negative log-likelihood)`` over all predicted tokens. The model may return a tensor of logits or an
    object with ``.logits``.
    """
    if tokens.dim() != 1 or tokens.numel() < context or context < 2:
        raise InputError(f"perplexity: need a 1-D token stream of at least context={context} >= 2 tokens, got "
                         f"shape {tuple(tokens.shape)}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    usable = (tokens.numel() // context) * context
    windows = tokens[:usable].reshape(-1, context).long()
    total, count = 0.0, 0
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            batches = windows.split(batch_size)
            for batch in _progress(batches, desc="perplexity", total=len(batches), enabled=progress):
                batch = batch.to(device)
                out = model(batch)
                logits = out.logits if hasattr(out, "logits") else out
                loss = torch.nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1), reduction="sum")
                total += float(loss)
                count += batch[:, 1:].numel()
    finally:
        model.train(training)
    return math.exp(total / count)
