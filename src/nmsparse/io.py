"""Reading checkpoints and writing masks: safe loading (no arbitrary unpickling) and atomic writes."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from ._version import __version__
from .errors import InputError

__all__ = ["atomic_path", "load_state_dict", "save_masks", "load_masks"]

_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically, on error it vanishes.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_text("done")
        >>> target.read_text()
        'done'
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _tensors_only(obj: Mapping[object, object], path: Path) -> dict[str, torch.Tensor]:
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise InputError(f"{path}: holds no tensors; expected a state dict (name -> tensor)")
    return tensors


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a state dict from ``.safetensors`` or ``.pt``/``.pth``/``.bin``/``.ckpt`` onto the CPU.

    Pickle files are read with ``torch.load(weights_only=True)``, which never unpickles arbitrary objects. A
    checkpoint that nests its weights as ``{"state_dict": ...}`` (or ``"model"``/``"model_state_dict"``) is
    unwrapped. Non-tensor entries are dropped.

    Raises:
        InputError: missing, unreadable or corrupt file, unknown suffix, or no tensors inside.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {str(path)!r} does not exist or is not a file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise InputError(f"{path}: not a readable safetensors file ({exc})") from exc
    if suffix not in _PICKLE_SUFFIXES:
        raise InputError(
            f"{path}: unknown checkpoint suffix {suffix!r}; expected .safetensors or one of {', '.join(_PICKLE_SUFFIXES)}"
        )
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        reason = " ".join(str(exc).split())[:300]
        raise InputError(
            f"{path}: cannot be loaded safely with torch.load(weights_only=True): {reason}. nmsparse only reads plain "
            f"state dicts (re-save with torch.save(model.state_dict(), ...))"
        ) from exc
    if not isinstance(obj, Mapping):
        raise InputError(f"{path}: expected a state dict (a mapping of name -> tensor), got {type(obj).__name__}")
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    return _tensors_only(obj, path)


def save_masks(masks: Mapping[str, torch.Tensor], path: str | os.PathLike[str], *,
               metadata: Mapping[str, str] | None = None) -> Path:
    """Write bool masks to a ``.safetensors`` file atomically, with ``metadata`` (e.g. pattern and method).

    The metadata always records ``nmsparse_version`` and ``format="nmsparse.masks"``.
    """
    from safetensors.torch import save_file

    meta = {"format": "nmsparse.masks", "nmsparse_version": __version__}
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    tensors = {name: mask.detach().to("cpu", torch.bool).contiguous() for name, mask in masks.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def load_masks(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read masks written by :func:`save_masks`: ``(masks, metadata)``."""
    from safetensors import safe_open

    masks = load_state_dict(path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
    return masks, metadata
