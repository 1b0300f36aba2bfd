"""Model files and random-generator states of training runs.

The resumable checkpoint itself (one atomic file per trainer) is :mod:`nmsparse.recipes.rundir`'s; this
module writes the user-facing model file of older layouts (:func:`save_model`), reads model files given as
``init`` and captures / restores every random generator (stored in checkpoints through
:func:`~nmsparse.recipes.rundir.pack_state`).
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
from nmsparse.io import atomic_path, load_state_dict, read_metadata
from nmsparse.nn.state import raw_state_dict

__all__ = [
    "MODEL_FILE",
    "save_model",
    "read_model_metadata",
    "load_model_file",
    "capture_rng_state",
    "restore_rng_state",
]

#: File name of the weights-and-masks checkpoint in a run directory.
MODEL_FILE = "model.safetensors"
_FORMAT = "nmsparse.recipes.train.model"


def save_model(path: str | Path, model: nn.Module, *, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``model.state_dict()`` (dense weights, masks, batch-norm statistics) to a safetensors file.

    Pruned layers appear as ``<layer>.parametrizations.weight.original`` and ``...weight.0.mask``; read them back
    with :func:`nmsparse.load_pruned_state_dict_`. ``metadata`` values are stored as strings (non-strings as
    JSON), next to ``format`` and ``nmsparse_version``.
    """
    from safetensors.torch import save_file

    with raw_state_dict():  # nmsparse's raw layout: dense weights and masks (the plain state dict has neither)
        state = model.state_dict()
    tensors = {name: value.detach().to("cpu").contiguous().clone() for name, value in state.items()}
    meta = {"format": _FORMAT, "nmsparse_version": __version__}
    for key, value in (metadata or {}).items():
        meta[str(key)] = value if isinstance(value, str) else json.dumps(value)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def read_model_metadata(path: str | Path) -> dict[str, str]:
    """Metadata of a ``.safetensors`` checkpoint (empty for other files or files without metadata)."""
    return read_metadata(path)


def load_model_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(state_dict, metadata)`` of a checkpoint (``.safetensors``, or a torch state dict read safely)."""
    return load_state_dict(path), read_model_metadata(path)


def capture_rng_state() -> dict[str, Any]:
    """torch (CPU and every CUDA device), numpy-global and python ``random`` generator states."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
