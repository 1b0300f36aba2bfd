"""Hugging Face causal LMs in the LM recipe: ``nmsparse train lm --model hf:FOLDER``.

The folder is checked before anything is loaded or written (:func:`check_causal_lm_folder`): no remote code
(``auto_map``), safetensors weights present, a causal-LM architecture (GPT-2, LLaMA, ...; a BERT encoder is
refused). It is loaded with ``AutoModelForCausalLM.from_pretrained(local_files_only=True)``, and a weight that the
folder does not hold is an error, never a random initialisation.

Masks (:func:`attach_masks`):

* a folder written by ``nmsparse oneshot`` (:func:`nmsparse.hf.save_pruned_pretrained`) carries its masks
  (``nmsparse_masks.safetensors``); they are attached unchanged as static masks (``mode: static``, the folder's
  pattern), so fine-tuning keeps the pruned weights at zero and the kept ones train;
* a dense folder gets static masks chosen once from its weights (``mode: static``, ``initial_method``) or dynamic
  SR-STE masks (``mode: dynamic``), on the linears of its decoder blocks unless ``include`` says otherwise.

Text is tokenised with the folder's ``tokenizer.json`` or as bytes (:func:`nmsparse.recipes.lm.text.folder_tokenizer`),
and the result is written by :func:`export_lm` as a transformers folder through the one folder writer,
:func:`nmsparse.hf.save_pruned_pretrained` (weights with the zeros baked in, the masks and
``nmsparse.json``; the tokenizer's files are copied along).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nmsparse.errors import ConfigError, InputError

from .config import DENSE, UNSTRUCTURED, LMTrainConfig
from .data import LMData, build_lm_data
from .model import GPT, SPARSE_LAYERS

__all__ = [
    "check_causal_lm_folder",
    "folder_masks_pattern",
    "load_causal_lm_checked",
    "load_pretrained_lm",
    "default_include",
    "StaticMasks",
    "attach_masks",
    "lm_data",
    "export_lm",
    "settings_from_folder",
    "carries_masks",
    "logits_of",
]

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a model's forward: the recipe's decoder returns them, a transformers model an output object."""
    return output if isinstance(output, torch.Tensor) else output.logits


def _folder(spec: str) -> Path:
    from nmsparse.hf import hf_folder

    return hf_folder(spec)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(value, dict):
        raise InputError(f"{path}: expected a JSON object")
    return value


def _causal_classes() -> tuple[dict[str, Any], set[str]]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names: set[str] = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([value] if isinstance(value, str) else list(value))
    return dict(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES), names


def check_causal_lm_folder(spec: str | os.PathLike[str]) -> Path:
    """The folder of ``hf:FOLDER`` once it is known to be a local causal LM nmsparse can fine-tune.

    Reads only ``config.json`` and file names (nothing is imported from the folder, nothing downloaded).

    Raises:
        InputError: no such folder or no ``config.json``; remote code (``auto_map``); no safetensors weights (a
            pickled ``pytorch_model.bin`` is not read); an architecture without a causal-LM head (e.g. BERT).
    """
    folder = _folder(os.fspath(spec))
    config = _read_json(folder / "config.json")
    if "auto_map" in config:
        raise InputError(
            f"{folder}: the model needs remote code (auto_map in config.json), which nmsparse never "
            f"runs; use a model class that transformers ships (GPT-2, LLaMA, ...)"
        )
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = set((_read_json(index).get("weight_map") or {}).values())
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing or not shards:
            raise InputError(
                f"{folder}: weights missing: model.safetensors.index.json names "
                f"{missing or 'no'} shard file(s) that are not in the folder"
            )
    elif not (folder / "model.safetensors").is_file():
        pickled = [p.name for p in folder.glob("*.bin")]
        hint = (
            (
                f"; it holds {pickled[0]}, a pickle nmsparse does not load: re-save it with "
                f"save_pretrained(safe_serialization=True)"
            )
            if pickled
            else ""
        )
        raise InputError(f"{folder}: no weights (model.safetensors){hint}")
    types, classes = _causal_classes()
    architectures = config.get("architectures") or []
    if architectures:
        if not any(a in classes for a in architectures):
            raise InputError(
                f"{folder}: {', '.join(map(str, architectures))} has no causal language-model head; "
                f"--model hf: fine-tunes causal LMs (GPT-2, LLaMA, ...), not encoders such as BERT"
            )
    elif config.get("model_type") not in types:
        raise InputError(
            f"{folder}: model_type {config.get('model_type')!r} is not a causal language model "
            f"transformers knows; --model hf: fine-tunes causal LMs (GPT-2, LLaMA, ...)"
        )
    return folder


def carries_masks(config: LMTrainConfig) -> bool:
    """Whether ``config.model`` is a folder with nmsparse masks (written by ``nmsparse oneshot``)."""
    from nmsparse.io import MASKS_FILE

    return config.model is not None and (_folder(config.model) / MASKS_FILE).is_file()


def folder_masks_pattern(folder: str | os.PathLike[str]) -> str | None:
    """The pattern of the masks a folder carries (from its ``nmsparse.json``), ``None`` when it records none.

    Raises:
        InputError: the masks record several patterns.
    """
    root = Path(os.fspath(folder).removeprefix("hf:"))
    record = root / "nmsparse.json"
    if not record.is_file():
        return None
    info = _read_json(record)
    patterns = {
        str(v.get("pattern")) for v in (info.get("masks") or {}).values() if isinstance(v, dict) and v.get("pattern")
    }
    oneshot = ((info.get("metadata") or {}).get("oneshot") or {}).get("pattern")
    if not patterns and oneshot:
        patterns = {str(oneshot)}
    if len(patterns) > 1:
        raise InputError(
            f"{root}: its masks have several patterns ({sorted(patterns)}); the LM recipe fine-tunes one pattern"
        )
    if not patterns:
        return None
    from nmsparse.pattern import NMPattern

    return str(NMPattern.parse(patterns.pop()))


def settings_from_folder(config: LMTrainConfig, *, given: Collection[str]) -> LMTrainConfig:
    """``config`` with ``mode: static`` and the folder's pattern when ``model`` carries masks and the user set
    neither (``given``: the settings the user gave, in a file or as flags); otherwise ``config`` itself."""
    if config.model is None or not carries_masks(config):
        return config
    changes: dict[str, Any] = {}
    if "mode" not in given:
        changes["mode"] = "static"
    pattern = folder_masks_pattern(config.model)
    if "pattern" not in given and pattern is not None:
        changes["pattern"] = pattern
    return replace(config, **changes) if changes else config


def load_causal_lm_checked(folder: str | os.PathLike[str]) -> nn.Module:
    """:func:`nmsparse.hf.load_causal_lm` (float32, eval mode, no download, no remote code, every weight checked)
    of a folder :func:`check_causal_lm_folder` accepts.

    Raises:
        InputError: see :func:`check_causal_lm_folder` and :func:`nmsparse.hf.load_causal_lm`.
    """
    from nmsparse.hf import load_causal_lm

    return load_causal_lm(check_causal_lm_folder(folder))


def load_pretrained_lm(config: LMTrainConfig, *, device: torch.device | str = "cpu") -> nn.Module:
    """The model of ``config.model`` (``hf:FOLDER``), dense, in float32, in training mode, on ``device``.

    Raises:
        InputError: see :func:`check_causal_lm_folder`; weights the folder does not hold.
        ConfigError: a context longer than the model's positions; a folder with masks asked to train other than
            ``mode: static`` with its own pattern.
    """
    if config.model is None:
        raise ConfigError("load_pretrained_lm: config.model is not set (expected 'hf:FOLDER')")
    folder = check_causal_lm_folder(config.model)
    if carries_masks(config):
        pattern = folder_masks_pattern(folder)
        if config.mode != "static":
            raise ConfigError(
                f"{folder} carries the masks of one-shot pruning ({pattern or 'pattern unrecorded'}); "
                f"fine-tune them with --mode static (the masks stay as they are), or pass the dense "
                f"folder it was pruned from"
            )
        if pattern is not None and config.structure != pattern:
            raise ConfigError(
                f"{folder} carries {pattern} masks but the pattern asked for is {config.structure}; "
                f"pass --pattern {pattern} (or leave --pattern out)"
            )
    from nmsparse.hf import load_causal_lm

    started = time.perf_counter()
    model = load_causal_lm(folder)  # checked above
    positions = int(getattr(model.config, "n_positions", 0) or getattr(model.config, "max_position_embeddings", 0) or 0)
    if positions and config.context > positions:
        raise ConfigError(
            f"context {config.context} is longer than the {positions} positions of {folder}; pass "
            f"--context {positions} or less"
        )
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False  # training: no key/value cache
    from nmsparse._logging import logger

    logger.info("lm: loaded %s (%s) in %.1f s", folder, type(model).__name__, time.perf_counter() - started)
    return model.to(device).train()


def default_include(model: nn.Module) -> list[str]:
    """Layers the recipe sparsifies by default: the recipe decoder's blocks, or a transformers model's decoder
    blocks (the ``nn.ModuleList`` that holds most of its linears: GPT-2's ``transformer.h``, LLaMA's
    ``model.layers``); embeddings and the head stay dense."""
    if isinstance(model, GPT):
        return list(SPARSE_LAYERS)
    from nmsparse.oneshot.engine import find_blocks, linear_types

    types = linear_types()
    names = [name for name, module in model.named_modules() if isinstance(module, types)]
    blocks = find_blocks(model, names)
    if not blocks:
        return ["*"]
    prefix = blocks[0][0].rsplit(".", 1)[0]
    return [f"{prefix}.*"]


class StaticMasks:
    """Fixed masks with the part of :class:`nmsparse.DynamicSparsifier`'s interface the LM trainer uses: they are
    never refreshed (:meth:`step` returns ``False``), and :meth:`masks_valid` checks them against the pattern.

    Args:
        model: the model with its masks attached (static, masked gradients).
        pattern: the masks' pattern.
        layers: qualified module name -> masked module.
        origin: ``"folder"`` (the masks a pruned folder carries) or ``"weights"`` (chosen once from the weights).
    """

    refreshes = 0
    refresh_seconds = 0.0
    last_changed = 0.0

    def __init__(self, model: nn.Module, pattern: str, layers: dict[str, nn.Module], *, origin: str) -> None:
        from nmsparse.pattern import NMPattern

        self.model = model
        self.pattern = NMPattern.parse(pattern)
        self.layers = layers
        self.origin = origin

    def step(self) -> bool:
        """Nothing to do: the masks are fixed."""
        return False

    def masks_valid(self) -> bool:
        """Whether every layer's mask obeys the pattern on its ``[out, in]`` matrix view."""
        from nmsparse.prune import get_masks, is_transposed_layer
        from nmsparse.prune._views import mask_fits

        masks = get_masks(self.model)
        for name, module in self.layers.items():
            mask = masks.get(f"{name}.weight" if name else "weight")
            if mask is None or not mask_fits(mask, self.pattern, transposed=is_transposed_layer(module)):
                return False
        return True

    def state_dict(self) -> dict[str, Any]:
        """What identifies the masks (they themselves are in the model's checkpoint)."""
        return {"kind": "static", "pattern": str(self.pattern), "layers": list(self.layers), "origin": self.origin}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Check a saved :meth:`state_dict` against these masks.

        Raises:
            ConfigError: another kind of state, pattern or layer set.
        """
        if not isinstance(state, dict) or state.get("kind") != "static":
            raise ConfigError("StaticMasks.load_state_dict: the checkpoint was not written with static masks")
        if state.get("pattern") != str(self.pattern) or list(state.get("layers") or []) != list(self.layers):
            raise ConfigError(
                f"StaticMasks.load_state_dict: the checkpoint's masks ({state.get('pattern')}, "
                f"{len(state.get('layers') or [])} layers) are not these ({self.pattern}, "
                f"{len(self.layers)} layers)"
            )


def attach_masks(
    model: nn.Module, config: LMTrainConfig, structure: str, *, include: list[str] | None, exclude: list[str] | None
) -> StaticMasks:
    """Static masks on ``model`` for ``structure``: the ones ``config.model``'s folder carries, else chosen once
    from the weights with ``config.initial_method``.

    Raises:
        MaskMismatchError: the folder's masks do not fit its weights.
        ConfigError: no layer can take the pattern.
    """
    from nmsparse.prune import get_masks, prune_

    if carries_masks(config):
        from nmsparse.hf import load_masks_into_

        assert config.model is not None
        keys = list(load_masks_into_(model, _folder(config.model)))
        origin = "folder"
    else:
        before = set(get_masks(model))
        prune_(
            model,
            structure,
            method=config.initial_method,
            include=include,
            exclude=exclude,
            keep_first_last=config.keep_first_last,
        )
        keys = [k for k in get_masks(model) if k not in before]
        origin = "weights"
    modules = dict(model.named_modules())
    layers = {key.removesuffix(".weight"): modules[key.removesuffix(".weight")] for key in keys}
    return StaticMasks(model, structure, layers, origin=origin)


def lm_data(config: LMTrainConfig) -> LMData:
    """The token streams of a run: ``config.data`` files (or the embedded sources), tokenised with the
    ``config.model`` folder's tokenizer (or bytes for the recipe's decoder).

    Raises:
        InputError: unreadable ``--data`` or a folder whose tokenizer does not fit its model.
    """
    tokenizer = None
    if config.model is not None:
        from .text import folder_tokenizer

        folder = check_causal_lm_folder(config.model)
        tokenizer = folder_tokenizer(folder, _vocab_size(folder))
    return build_lm_data(
        sources=config.sources, heldout_permille=config.heldout_permille, files=config.data, tokenizer=tokenizer
    )


def _vocab_size(folder: Path) -> int:
    raw = _read_json(folder / "config.json")
    vocab = raw.get("vocab_size") or (raw.get("text_config") or {}).get("vocab_size")
    if not isinstance(vocab, int) or vocab < 1:
        raise InputError(f"{folder}/config.json: no vocab_size")
    return vocab


def export_lm(model: nn.Module, path: Path, *, config: LMTrainConfig, structure: str, metadata: dict[str, Any]) -> Path:
    """Write the trained model as a transformers folder: the recipe's decoder through
    :func:`~nmsparse.recipes.lm.model.save_hf` (a GPT-2 folder), a transformers model through
    :func:`nmsparse.hf.save_pruned_pretrained` with its masks, ``nmsparse.json`` and the source folder's
    tokenizer files."""
    if isinstance(model, GPT):
        from .model import save_hf

        return save_hf(model, path, metadata=metadata, overwrite=True)
    from nmsparse.hf import save_pruned_pretrained

    from .text import FolderTokenizer, folder_tokenizer

    assert config.model is not None
    folder = _folder(config.model)
    tokenizer = folder_tokenizer(folder, _vocab_size(folder))
    pattern = None if structure in (DENSE, UNSTRUCTURED) else structure
    return save_pruned_pretrained(
        model,
        path,
        pattern=pattern,
        method=None,
        overwrite=True,
        extra={"train": {**metadata, "source": str(folder), "mode": config.mode}},
        tokenizer=tokenizer if isinstance(tokenizer, FolderTokenizer) else None,
    )
