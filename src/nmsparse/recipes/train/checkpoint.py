"""Checkpoints of training runs: weights and masks in ``model.safetensors``, the rest in ``trainer_state.pt``.

Both files are written atomically (temporary file beside the target, then ``os.replace``), so an interrupted
write never leaves a half-written checkpoint; a resumed run sees either the previous epoch's files or the new
ones. ``trainer_state.pt`` holds only tensors and plain Python values and is read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nmsparse._version import __version__
from nmsparse.errors import InputError
from nmsparse.io import atomic_path, load_state_dict

__all__ = [
    "MODEL_FILE",
    "STATE_FILE",
    "save_model",
    "read_model_metadata",
    "load_model_file",
    "save_trainer_state",
    "load_trainer_state",
    "capture_rng_state",
    "restore_rng_state",
    "write_text_atomic",
]

#: File name of the weights-and-masks checkpoint in a run directory.
MODEL_FILE = "model.safetensors"
#: File name of the optimizer/schedule/sparsifier/RNG state in a run directory.
STATE_FILE = "trainer_state.pt"
_FORMAT = "nmsparse.recipes.train.model"


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def save_model(path: str | Path, model: nn.Module, *, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``model.state_dict()`` (dense weights, masks, batch-norm statistics) to a safetensors file.

    Pruned layers appear as ``<layer>.parametrizations.weight.original`` and ``...weight.0.mask``; read them back
    with :func:`nmsparse.load_pruned_state_dict_`. ``metadata`` values are stored as strings (non-strings as
    JSON), next to ``format`` and ``nmsparse_version``.
    """
    from safetensors.torch import save_file

    tensors = {name: value.detach().to("cpu").contiguous().clone() for name, value in model.state_dict().items()}
    meta = {"format": _FORMAT, "nmsparse_version": __version__}
    for key, value in (metadata or {}).items():
        meta[str(key)] = value if isinstance(value, str) else json.dumps(value)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def read_model_metadata(path: str | Path) -> dict[str, str]:
    """Metadata of a ``.safetensors`` checkpoint (empty for other files or files without metadata)."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return {}
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise InputError(f"{path}: not a readable safetensors file ({exc})") from exc


def load_model_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(state_dict, metadata)`` of a checkpoint (``.safetensors``, or a torch state dict read safely)."""
    return load_state_dict(path), read_model_metadata(path)


def save_trainer_state(path: str | Path, state: Mapping[str, Any]) -> Path:
    """``torch.save`` a dict of tensors and plain values atomically."""
    with atomic_path(path) as tmp:
        torch.save(dict(state), str(tmp))
    return Path(path)


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    """Read :func:`save_trainer_state`'s file with ``weights_only=True``.

    Raises:
        InputError: missing or unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist; a run directory holds it once its first epoch has finished")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        raise InputError(f"{path}: not a readable trainer state ({' '.join(str(exc).split())[:200]})") from exc
    if not isinstance(state, dict):
        raise InputError(f"{path}: expected a dict, got {type(state).__name__}")
    return state


def capture_rng_state() -> dict[str, Any]:
    """torch (CPU and every CUDA device), numpy-global and python ``random`` generator states."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
