"""Hugging Face causal language models: load a local folder, make calibration windows, measure perplexity, and save
a pruned model as a normal ``transformers`` folder.

A saved folder (:func:`nmsparse.io.save_pretrained_dense`) holds what ``model.save_pretrained`` writes
(``config.json``, ``model.safetensors``) with the pruned weights baked in as zeros, so
``AutoModelForCausalLM.from_pretrained(folder)`` loads it with no nmsparse code; plus ``nmsparse_masks.safetensors``
(one bool mask per pruned tensor, keyed by the tensor's name in the plain state dict, e.g.
``"transformer.h.0.attn.c_attn.weight"``, in that tensor's stored layout) and ``nmsparse.json`` (each mask's
pattern and layout, and the one-shot settings). :func:`load_masks_into_` puts the masks back as parametrizations,
so a reloaded model is a pruned nmsparse model again (fine-tuning keeps the zeros).

``transformers`` is imported only inside these functions.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._logging import progress as _progress
from .errors import InputError, MaskMismatchError
from .pattern import NMPattern

__all__ = [
    "hf_folder",
    "load_causal_lm",
    "save_pruned_pretrained",
    "load_masks_into_",
    "calibration_windows",
    "perplexity",
]


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
        raise InputError(
            f"{text!r} is not a folder; expected a transformers model folder (config.json and "
            f"model.safetensors), e.g. one written by save_pretrained; nothing is downloaded"
        )
    if not (folder / "config.json").is_file():
        raise InputError(f"{str(folder)!r} has no config.json, so it is not a transformers model folder")
    return folder


def load_causal_lm(source: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained`` of a local folder (``"hf:PATH"`` or ``PATH``), in eval mode.

    Never downloads (``local_files_only=True``) and never runs a folder's own code (``trust_remote_code=False``). A
    folder saved by :func:`save_pruned_pretrained` loads as its dense weights with zeros; call
    :func:`load_masks_into_` to get the masks back as parametrizations.

    Raises:
        InputError: not a model folder, a folder transformers cannot load (truncated or pickled weights, remote
            code, an unknown ``model_type``), or weights that do not fit the model: missing ones (transformers would
            initialise them at random, e.g. ``config.json`` asks for more layers than the weights hold, or a BERT
            folder has no language-model head), unexpected ones, or ones of another shape.
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    folder = hf_folder(source)
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the missing and unexpected weights are raised below, as one line
    hf_logging.disable_progress_bar()
    try:
        loaded = AutoModelForCausalLM.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False, dtype=dtype, output_loading_info=True
        )
    except Exception as exc:  # noqa: BLE001 - transformers, safetensors and torch raise many types here
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(
            f"{folder}: transformers cannot load this model folder ({type(exc).__name__}: {first})"
        ) from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    model, info = loaded if isinstance(loaded, tuple) else (loaded, {})
    problems = [f"missing {key}" for key in sorted(info.get("missing_keys") or [])]
    problems += [f"unexpected {key}" for key in sorted(info.get("unexpected_keys") or [])]
    problems += [
        f"wrong shape {entry[0] if isinstance(entry, tuple) else entry}" for entry in info.get("mismatched_keys") or []
    ]
    if problems:
        shown = ", ".join(problems[:3]) + (f" and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise InputError(
            f"{folder}: its weights do not fit {type(model).__name__} (transformers would initialise "
            f"the missing ones at random): {shown}"
        )
    return model.eval()


def save_pruned_pretrained(
    model: nn.Module,
    out: str | os.PathLike[str],
    *,
    pattern: str | NMPattern | None = None,
    method: str | None = None,
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    tokenizer: Any = None,
) -> Path:
    """Save a (pruned) transformers model as a normal folder that ``AutoModelForCausalLM.from_pretrained`` loads.

    The layout of :func:`nmsparse.io.save_pretrained_dense`: dense weights with the zeros baked in
    (:func:`nmsparse.io.export_dense`, safetensors), the masks in :data:`nmsparse.io.MASKS_FILE`, ``nmsparse.json``
    with each mask's settings and the one-shot ``pattern``, ``method`` and ``extra``; plus the tokenizer, if given.
    The model is not changed.

    Args:
        model: a ``transformers`` ``PreTrainedModel`` (pruned by :func:`nmsparse.prune_oneshot_` or not).
        out: the folder to write (it appears complete or not at all).
        pattern, method: recorded in ``nmsparse.json``.
        extra: more JSON-ready entries for the record (e.g. the perplexities).
        overwrite: replace an existing ``out``; without it an existing ``out`` raises.
        tokenizer: *optional* tokenizer saved into the folder afterwards (``tokenizer.save_pretrained``).

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Raises:
        OverwriteError: ``out`` exists and ``overwrite`` is false.
        ConfigError: ``model`` has no ``save_pretrained``.

    Example:
        >>> import tempfile, pathlib, torch, transformers
        >>> from nmsparse.oneshot import prune_oneshot_
        >>> config = transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=32, n_positions=16)
        >>> model = transformers.GPT2LMHeadModel(config).eval()
        >>> _ = prune_oneshot_(model, [torch.randint(0, 32, (2, 8))], "2:4", algorithm="wanda")
        >>> folder = save_pruned_pretrained(model, pathlib.Path(tempfile.mkdtemp()) / "pruned", pattern="2:4")
        >>> reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(folder))
        >>> ids = torch.randint(0, 32, (1, 8))
        >>> torch.equal(reloaded(ids).logits, model(ids).logits)
        True
    """
    from .io import _write_pretrained_folder

    record: dict[str, Any] = {
        "oneshot": {
            "pattern": None if pattern is None else str(NMPattern.parse(pattern)),
            "method": method,
            **dict(extra or {}),
        }
    }

    def save_tokenizer(staging: Path) -> None:
        if tokenizer is not None:
            tokenizer.save_pretrained(str(staging))

    return _write_pretrained_folder(
        model, out, metadata=record, overwrite=overwrite, fill=save_tokenizer, where="save_pruned_pretrained"
    )


def load_masks_into_(model: nn.Module, folder: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Attach the masks of a folder saved by :func:`save_pruned_pretrained` to ``model`` (loaded from it).

    The masks file and the settings ``nmsparse.json`` records for each mask (pattern, mode, layout) go through
    :func:`nmsparse.io.load_pruned_state_dict_` with the model's own weights, so they are checked as any pruned
    checkpoint is: every mask must name a weight of ``model`` with its stored shape and obey its recorded pattern.
    The weight must also already be zero where the mask prunes (true of a folder written by
    :func:`save_pruned_pretrained`). Nothing changes on a mismatch.

    Returns:
        The masks (tensor name -> bool mask).

    Raises:
        InputError: the folder has no masks file, or an unreadable ``nmsparse.json``.
        MaskMismatchError: a mask for a missing tensor, of another shape, breaking its pattern, or with weights
            kept where it prunes.
    """
    from .io import FORMAT, MASK_PREFIX, MASKS_FILE, _load_pruned, load_masks

    root = Path(os.fspath(folder).removeprefix("hf:"))
    path = root / MASKS_FILE
    if not path.is_file():
        raise InputError(
            f"load_masks_into_: {str(path)!r} does not exist; the folder was not saved by "
            f"save_pruned_pretrained (or nothing in it was pruned)"
        )
    masks = load_masks(path)
    settings: Any = {}
    if (root / "nmsparse.json").is_file():
        try:
            settings = json.loads((root / "nmsparse.json").read_text(encoding="utf-8")).get("masks", {})
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
            raise InputError(f"load_masks_into_: {root / 'nmsparse.json'} is not a valid record ({exc})") from None
    modules = dict(model.named_modules())
    weights = {key: getattr(modules.get(key[: -len("weight")].rstrip(".")), "weight", None) for key in masks}
    kept = [
        key
        for key, weight in weights.items()
        if isinstance(weight, torch.Tensor)
        and weight.shape == masks[key].shape
        and bool((weight.detach()[~masks[key].to(weight.device)] != 0).any())
    ]
    if kept:
        raise MaskMismatchError(
            f"load_masks_into_: the weights of {kept} are non-zero where their masks prune; the masks were not "
            f"saved with these weights, nothing was attached"
        )
    tensors = {key: w.detach() for key, w in weights.items() if isinstance(w, torch.Tensor)}
    tensors |= {MASK_PREFIX + key: mask for key, mask in masks.items()}
    metadata = {"format": FORMAT, "kind": "pruned", "masks": json.dumps(settings)}
    _load_pruned(model, tensors, metadata, strict=False, where="load_masks_into_")
    return dict(masks)


def calibration_windows(
    tokens: torch.Tensor, *, samples: int, context: int, batch_size: int = 8, seed: int = 0
) -> list[torch.Tensor]:
    """``samples`` random windows of ``context`` token ids from a 1-D token stream, as ``[batch, context]`` batches.

    Raises:
        InputError: a stream shorter than one window, or non-positive counts.
    """
    if tokens.dim() != 1:
        raise InputError(f"calibration_windows: expected a 1-D tensor of token ids, got shape {tuple(tokens.shape)}")
    if samples < 1 or context < 2 or batch_size < 1:
        raise InputError(
            f"calibration_windows: need samples >= 1, context >= 2 and batch_size >= 1, got "
            f"{samples}, {context}, {batch_size}"
        )
    if tokens.numel() < context:
        raise InputError(
            f"calibration_windows: the token stream has {tokens.numel()} tokens, fewer than one "
            f"window of {context}; use a shorter context"
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - context + 1, (samples,), generator=generator)
    windows = torch.stack([tokens[s : s + context] for s in starts.tolist()]).long()
    return list(windows.split(batch_size))


def perplexity(
    model: nn.Module, tokens: torch.Tensor, *, context: int, batch_size: int = 8, progress: bool | None = None
) -> float:
    """Perplexity of a causal LM on a 1-D token stream cut into non-overlapping windows of ``context`` tokens.

    Every window predicts its tokens 2..context from the ones before (no cross-window context); the result is
    ``exp(mean negative log-likelihood)`` over all predicted tokens. The model may return a tensor of logits or an
    object with ``.logits``.
    """
    if tokens.dim() != 1 or tokens.numel() < context or context < 2:
        raise InputError(
            f"perplexity: need a 1-D token stream of at least context={context} >= 2 tokens, got "
            f"shape {tuple(tokens.shape)}"
        )
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
                    logits[:, :-1].reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1), reduction="sum"
                )
                total += float(loss)
                count += batch[:, 1:].numel()
    finally:
        model.train(training)
    return math.exp(total / count)
