"""The one persistence module of nmsparse: masks, pruned models and dense exports; safe reads, atomic writes.

**Key convention.** Masks are keyed by the name of the tensor they mask in a plain (unpruned) model's
``state_dict`` (``"0.weight"``, ``"encoder.layer.0.attention.self.query.weight"``; torch.ao.pruning's
``tensor_fqn``), everywhere: :func:`nmsparse.get_masks`, :func:`nmsparse.set_masks_`, :func:`save_masks`,
:func:`load_masks`, ``nmsparse mask`` and the checkpoints below.

**Files.** Every file is one safetensors file whose metadata holds ``"format": "nmsparse/1"`` (:data:`FORMAT`),
a ``"kind"`` and ``"nmsparse_version"``:

* ``kind="masks"`` (:func:`save_masks`): bool tensors under tensor names; ``"pattern"`` when known.
* ``kind="pruned"`` (:func:`save_pruned`): every entry of the model's plain state dict under its plain key (the
  *dense* master weight for pruned layers), plus each mask under ``MASK_PREFIX + tensor name``
  (``"__nmsparse_mask__.0.weight"``), and ``"masks"``: JSON ``{tensor name: {"pattern", "mode", "decay",
  "transposed", "padded"}}``. :func:`load_pruned_` re-creates the masks with their pattern and mode.
* ``kind="dense"`` (:func:`save_dense`): plain weights with the zeros baked in (``torch.nn.Module.load_state_dict``
  reads it directly) and the same ``"masks"`` JSON; the masks themselves go to a side file of ``kind="masks"``.

**Writes** go to a temporary file beside the target, get the mode a plain ``open`` would give (``0o666 & ~umask``)
and are renamed over it atomically; a failed write leaves the old file and no temporary one. ``overwrite=False``
(the default of the ``save_*`` functions) raises :class:`~nmsparse.errors.OverwriteError` when the target exists.
**Reads** never unpickle arbitrary objects (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._version import __version__
from .errors import ConfigError, InputError, MaskMismatchError, OverwriteError
from .nn.parametrize import KeepOrder, NMMask, _as_bool_mask
from .nn.state import raw_state_dict
from .pattern import NMPattern
from .prune._views import mask_fits
from .prune.select import is_transposed_layer
from .prune.static import MASK_KEY_SUFFIX, _nm_mask, _pruned_modules, apply_mask_, remove_mask_, tensor_fqn

__all__ = [
    "FORMAT",
    "MASK_PREFIX",
    "MASKS_FILE",
    "atomic_path",
    "write_text_atomic",
    "load_state_dict",
    "read_metadata",
    "save_masks",
    "load_masks",
    "LoadedMasks",
    "pruned_state_dict",
    "load_pruned_state_dict_",
    "save_pruned",
    "load_pruned_",
    "export_dense",
    "save_dense",
    "save_pretrained_dense",
    "dense_from_pruned",
    "masks_info",
]

#: Format tag in the metadata of every safetensors file nmsparse writes.
FORMAT = "nmsparse/1"
#: Key prefix of the masks inside a ``kind="pruned"`` file: ``MASK_PREFIX + "0.weight"``.
MASK_PREFIX = "__nmsparse_mask__."
#: Side file with the masks in a folder written by :func:`save_pretrained_dense` / ``nmsparse export``.
MASKS_FILE = "nmsparse_masks.safetensors"
_LEGACY_MASK_FORMATS = ("nmsparse.masks",)
_RESERVED = ("format", "kind", "nmsparse_version", "masks")
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


# ----------------------------------------------------------------------------------------------- writing


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux), else by setting it back."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically, on error it vanishes.

    The finished file gets the mode a plain ``open(path, "w")`` would give it (``0o666 & ~umask``), not the
    private ``0o600`` of a temporary file.

    Args:
        path: the target file; its folder is created if needed.
        overwrite: replace an existing ``path``; with ``False`` an existing one raises :class:`OverwriteError`
            (checked before writing and again, without a race, when the file is committed).

    Raises:
        OverwriteError: ``overwrite=False`` and ``path`` exists.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_text("done")
        >>> target.read_text()
        'done'
    """
    target = Path(path)
    if not overwrite and os.path.lexists(target):
        raise OverwriteError(f"{target} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        if overwrite:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)  # fails if the target appeared meanwhile: no silent replacement
            except FileExistsError:
                raise OverwriteError(f"{target} appeared while writing it; pass overwrite=True to replace it") from None
            except OSError:  # a file system without hard links
                if os.path.lexists(target):
                    raise OverwriteError(f"{target} exists; pass overwrite=True to replace it") from None
                os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike[str], text: str, *, overwrite: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_path`.

    Example:
        >>> import tempfile, pathlib
        >>> write_text_atomic(pathlib.Path(tempfile.mkdtemp()) / "a.txt", "hi").read_text()
        'hi'
    """
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


@contextlib.contextmanager
def _write_errors_as_oserror(path: str | os.PathLike[str]) -> Iterator[None]:
    """A failed safetensors write (e.g. a full disk) raised as an ``OSError`` like any other failed write."""
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as exc:
        raise OSError(f"{path}: could not be written ({' '.join(str(exc).split())}); nothing was replaced") from exc


def _save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike[str], metadata: dict[str, str], *, overwrite: bool
) -> Path:
    from safetensors.torch import save_file

    # contiguous CPU copies: safetensors refuses views and tensors that share memory (tied weights)
    data = {key: value.detach().to("cpu").contiguous().clone() for key, value in tensors.items()}
    with atomic_path(path, overwrite=overwrite) as tmp, _write_errors_as_oserror(path):
        save_file(data, str(tmp), metadata=metadata)
    return Path(path)


def _metadata(kind: str, extra: Mapping[str, Any] | None) -> dict[str, str]:
    meta = {"format": FORMAT, "kind": kind, "nmsparse_version": __version__}
    for key, value in (extra or {}).items():
        if key in _RESERVED:
            raise ConfigError(f"metadata key {key!r} is reserved by nmsparse ({', '.join(_RESERVED)}); rename it")
        meta[str(key)] = value if isinstance(value, str) else json.dumps(value)
    return meta


# ----------------------------------------------------------------------------------------------- reading


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
            f"{path}: unknown checkpoint suffix {suffix!r}; expected .safetensors or one of "
            f"{', '.join(_PICKLE_SUFFIXES)}"
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
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise InputError(f"{path}: holds no tensors; expected a state dict (name -> tensor)")
    return tensors


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """Metadata of a ``.safetensors`` file (empty for other files and files without metadata).

    Raises:
        InputError: an unreadable safetensors file.
    """
    path = Path(path)
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return {}
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable safetensors file ({exc})") from exc


def _check_format(metadata: Mapping[str, str], kinds: tuple[str, ...], *, where: str) -> str | None:
    """The file's kind; raises for another nmsparse format or kind. ``None`` for files without a tag."""
    fmt = metadata.get("format")
    if fmt is None:
        return None
    if fmt in _LEGACY_MASK_FORMATS:
        return "masks"
    if not fmt.startswith("nmsparse/"):
        return None  # another tool's file, or an older nmsparse writer's own tag: judged by its content
    if fmt != FORMAT:
        raise InputError(f"{where}: written in format {fmt!r}; this nmsparse reads {FORMAT!r} (upgrade nmsparse)")
    kind = metadata.get("kind")
    if kind not in kinds:
        raise InputError(f"{where}: holds kind={kind!r}, expected {' or '.join(map(repr, kinds))}")
    return kind


# ----------------------------------------------------------------------------------------------- masks


def save_masks(
    masks: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    pattern: Any = None,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write bool masks (keyed by tensor name, e.g. ``"0.weight"``) to a safetensors file atomically.

    Args:
        masks: tensor name -> mask (``torch.bool``, or 0/1 of any dtype).
        path: target ``.safetensors`` file.
        pattern: *optional* pattern every mask obeys, recorded as ``"pattern"``.
        metadata: *optional* extra string metadata (non-strings are stored as JSON), e.g. the method.
        overwrite: replace an existing file.

    Returns:
        ``path``.

    Raises:
        OverwriteError: ``path`` exists and ``overwrite`` is ``False``.
        MaskMismatchError: a mask with values other than 0/1.

    Example:
        >>> import tempfile, pathlib, torch
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "masks.safetensors"
        >>> _ = save_masks({"0.weight": torch.tensor([[True, False]])}, path, pattern="1:2")
        >>> load_masks(path)["0.weight"].tolist(), read_metadata(path)["pattern"]
        ([[True, False]], '1:2')
    """
    extra = dict(metadata or {})
    if pattern is not None:
        extra["pattern"] = str(NMPattern.parse(pattern))
    meta = _metadata("masks", extra)
    tensors = {str(name): _as_bool_mask(mask, where=f"save_masks[{name!r}]").cpu() for name, mask in masks.items()}
    return _save_safetensors(tensors, path, meta, overwrite=overwrite)


class LoadedMasks(dict[str, torch.Tensor]):
    """The masks of a file (a plain ``dict``) plus ``pattern``, the pattern the file records for all of them.

    :func:`nmsparse.set_masks_` checks and records that pattern when it is not given one, so
    ``set_masks_(model, load_masks(path))`` keeps the file's pattern (a later mask that breaks it is refused).
    """

    pattern: NMPattern | None = None


def load_masks(path: str | os.PathLike[str]) -> LoadedMasks:
    """Read the masks of a file written by :func:`save_masks`, ``nmsparse mask`` or :func:`save_pruned`.

    Keys are tensor names (``"0.weight"``), ready for :func:`nmsparse.set_masks_`. The result is a ``dict`` whose
    ``pattern`` attribute is the pattern the file records for every mask (``None`` when it records none, or
    several); the rest of the file's metadata (method, ...) is read with :func:`read_metadata`.

    Raises:
        InputError: missing or unreadable file, another kind of nmsparse file, non-bool tensors, or an invalid
            recorded pattern.
    """
    path = Path(path)
    tensors = load_state_dict(path)
    meta = read_metadata(path)
    kind = _check_format(meta, ("masks", "pruned"), where=str(path))
    out = LoadedMasks()
    recorded: Any = meta.get("pattern")
    if kind == "pruned":
        out.update({key[len(MASK_PREFIX) :]: value for key, value in tensors.items() if key.startswith(MASK_PREFIX)})
        problems: list[str] = []
        _, _, info = _split({}, meta, problems)
        if problems:
            raise InputError(f"{path}: {problems[0]}")
        entries = [info.get(key) or {} for key in out]
        patterns = {entry.get("pattern") for entry in entries}
        padded = any(entry.get("padded") for entry in entries)
        recorded = next(iter(patterns)) if len(patterns) == 1 and not padded else None
    else:
        bad = [key for key, value in tensors.items() if value.dtype != torch.bool]
        if bad:
            raise InputError(
                f"{path}: {bad[:5]} are not bool masks; expected a masks file (nmsparse mask / save_masks)"
            )
        out.update(tensors)
    if recorded is not None:
        try:
            out.pattern = NMPattern.parse(recorded)
        except ValueError as exc:
            raise InputError(f"{path}: the pattern in its metadata is not valid ({exc})") from None
    return out


# ----------------------------------------------------------------------------------------------- pruned models


def _mask_info(nm: NMMask) -> dict[str, Any]:
    info = nm.describe()
    info.pop("version")
    return info


def _raw_to_plain_keys(model: nn.Module) -> dict[str, str | None]:
    """Raw ``model.state_dict()`` key -> plain key (``None``: a mask entry, stored elsewhere) for pruned layers."""
    out: dict[str, str | None] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if _nm_mask(module) is None:
            continue
        prefix = f"{name}." if name else ""
        out[f"{prefix}parametrizations.weight.original"] = f"{prefix}weight"
        out[f"{prefix}parametrizations.weight.0.mask"] = None
        out[f"{prefix}parametrizations.weight.0._extra_state"] = None
        for tensor, plist in module.parametrizations.items():
            if tensor != "weight" and len(plist) == 1 and isinstance(plist[0], KeepOrder):
                out[f"{prefix}parametrizations.{tensor}.original"] = f"{prefix}{tensor}"
    return out


def _plain_state_dict(model: nn.Module, *, baked: bool) -> dict[str, torch.Tensor]:
    keys = _raw_to_plain_keys(model)
    masks = {f"{tensor_fqn(name)}": nm.mask for name, (_, nm) in _pruned_modules(model).items()}
    out: dict[str, torch.Tensor] = {}
    with raw_state_dict():
        state = model.state_dict()
    for key, value in state.items():
        plain = keys.get(key, key)
        if plain is None:
            continue
        value = value.detach()
        if baked and key in keys and plain in masks and key.endswith("parametrizations.weight.original"):
            value = value * masks[plain]
        out[plain] = value
    return out


def masks_info(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Tensor name -> ``{"pattern", "mode", "decay", "transposed", "padded"}`` of every mask of ``model``."""
    return {tensor_fqn(name): _mask_info(nm) for name, (_, nm) in _pruned_modules(model).items()}


def pruned_state_dict(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A pruned model's state as ``(tensors, metadata)`` with plain keys (the ``kind="pruned"`` layout).

    ``tensors`` holds every entry of the plain state dict under its plain key (the *dense* master weight for
    pruned layers, under ``"<layer>.weight"``) and each mask under ``MASK_PREFIX + "<layer>.weight"``;
    ``metadata`` the format tag, ``kind="pruned"`` and ``"masks"`` (JSON: pattern, mode, decay and layout per
    masked tensor). :func:`load_pruned_state_dict_` reverses it.

    Example:
        >>> import torch, nmsparse
        >>> model = nmsparse.prune_(torch.nn.Sequential(torch.nn.Linear(8, 4)), "2:4").model
        >>> tensors, meta = pruned_state_dict(model)
        >>> sorted(tensors), meta["kind"]
        (['0.bias', '0.weight', '__nmsparse_mask__.0.weight'], 'pruned')
    """
    tensors = _plain_state_dict(model, baked=False)
    for name, (_, nm) in _pruned_modules(model).items():
        tensors[MASK_PREFIX + tensor_fqn(name)] = nm.mask.detach()
    meta = _metadata("pruned", None)
    meta["masks"] = json.dumps(masks_info(model), sort_keys=True)
    return tensors, meta


def _decode_extra_state(value: Any, key: str, problems: list[str]) -> dict[str, Any] | None:
    try:
        probe = NMMask(torch.ones(1, dtype=torch.bool))
        probe.set_extra_state(value)
        return _mask_info(probe)
    except (MaskMismatchError, ValueError) as exc:
        problems.append(f"wrong state: {key!r}: {exc}")
        return None


def _add_mask(masks: dict[str, Any], fqn: str, value: Any, key: str, problems: list[str]) -> None:
    """``masks[fqn] = value`` unless another key already gave that mask (a file must not hold two)."""
    if fqn in masks:
        problems.append(f"duplicate: {key!r} is a second mask for {fqn!r}; the file holds two, so neither is taken")
        return
    masks[fqn] = value


def _split(
    tensors: Mapping[str, Any], metadata: Mapping[str, str] | None, problems: list[str]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[str, Any]]]:
    """``(plain entries, masks, mask info)`` of either layout: plain keys + MASK_PREFIX, or a raw state dict."""
    info: dict[str, dict[str, Any]] = {}
    if metadata and "masks" in metadata:
        try:
            parsed = json.loads(metadata["masks"])
            if not isinstance(parsed, dict):
                raise ValueError("not a JSON object")
            for fqn, entry in parsed.items():
                if isinstance(entry, dict):
                    info[fqn] = entry
                else:
                    problems.append(
                        f"wrong metadata: 'masks' entry {fqn!r} is {entry!r}, not a JSON object of mask settings"
                    )
        except ValueError as exc:
            problems.append(f"wrong metadata: 'masks' is not a JSON object of mask settings ({exc})")
    masks: dict[str, Any] = {}
    raw_modules = set()
    for key in tensors:
        if key.endswith(MASK_KEY_SUFFIX) or key == MASK_KEY_SUFFIX[1:]:
            raw_modules.add(key[: -len(MASK_KEY_SUFFIX)] if key.endswith(MASK_KEY_SUFFIX) else "")
    plain: dict[str, Any] = {}
    for key, value in tensors.items():
        if key.startswith(MASK_PREFIX):
            _add_mask(masks, key[len(MASK_PREFIX) :], value, key, problems)
            continue
        head, sep, tail = key.partition("parametrizations.")
        module = head[:-1] if head.endswith(".") else head
        if sep and (head == "" or head.endswith(".")) and module in raw_modules:
            prefix = head
            if tail == "weight.0.mask":
                _add_mask(masks, tensor_fqn(module), value, key, problems)
                continue
            if tail == "weight.0._extra_state":
                decoded = _decode_extra_state(value, key, problems)
                if decoded is not None:
                    info.setdefault(tensor_fqn(module), decoded)
                continue
            tensor, dot, rest = tail.partition(".")
            if dot and rest == "original":
                plain[f"{prefix}{tensor}"] = value
                continue
        plain[key] = value
    return plain, masks, info


def load_pruned_state_dict_(
    model: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    *,
    strict: bool = True,
) -> nn.Module:
    """Load a pruned model's state into ``model``, re-creating its masks with their pattern and mode.

    Accepts what :func:`pruned_state_dict` returns (plain keys, masks under :data:`MASK_PREFIX`, settings in
    ``metadata["masks"]``) and also the raw ``state_dict()`` of a pruned model (``...parametrizations.weight.0.mask``
    keys; the settings then come from the masks' saved extra state; files of older nmsparse versions without it
    load as static masks with no recorded pattern).

    Unpruned layers named by a mask get an :class:`~nmsparse.NMMask` (already pruned ones are overwritten).
    Everything is checked before the model changes: masks for tensors that are not a layer's weight, masks of
    the wrong shape or values, masks that break their recorded pattern, a mask without its dense weight, a pruned
    layer of the model with no mask, and (with ``strict=True``) every other missing or unexpected key or wrong
    shape are all listed in one error; on any of them nothing is loaded.

    Args:
        model: the model (typically freshly built, unpruned); modified in place and returned.
        tensors: the tensors (see above).
        metadata: the string metadata of :func:`pruned_state_dict` (``None`` for a raw state dict).
        strict: as in :meth:`torch.nn.Module.load_state_dict`; mask checks are always strict.

    Returns:
        ``model``.

    Raises:
        MaskMismatchError: listing every mismatched entry; the model is left unchanged.
        InputError: metadata of another format or kind.

    Example:
        >>> import torch, nmsparse
        >>> from nmsparse.io import load_pruned_state_dict_, pruned_state_dict
        >>> pruned = nmsparse.prune_(torch.nn.Sequential(torch.nn.Linear(8, 4)), "2:4").model
        >>> fresh = load_pruned_state_dict_(torch.nn.Sequential(torch.nn.Linear(8, 4)), *pruned_state_dict(pruned))
        >>> torch.equal(fresh[0].weight, pruned[0].weight), str(fresh[0].parametrizations.weight[0].pattern)
        (True, '2:4')
    """
    return _load_pruned(model, tensors, metadata, strict=strict, where="load_pruned_state_dict_")


def _load_pruned(
    model: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None,
    *,
    strict: bool,
    where: str,
) -> nn.Module:
    """:func:`load_pruned_state_dict_`, its errors prefixed with ``where``."""
    if not isinstance(tensors, Mapping):
        raise MaskMismatchError(f"{where}: expected a mapping of names to tensors, got {type(tensors).__name__}")
    if metadata:
        _check_format(metadata, ("pruned",), where=where)
    problems: list[str] = []
    plain, masks, info = _split(tensors, metadata, problems)
    modules = dict(model.named_modules())
    pruned = {tensor_fqn(name): entry for name, entry in _pruned_modules(model).items()}
    ready: dict[str, tuple[nn.Module, torch.Tensor, dict[str, Any] | None]] = {}
    for fqn, value in masks.items():
        if fqn != "weight" and not fqn.endswith(".weight"):
            problems.append(f"unexpected: mask {fqn!r}: masks are keyed by weight names ('<layer>.weight')")
            continue
        name = fqn[: -len(".weight")] if fqn != "weight" else ""
        module = modules.get(name)
        weight = None if module is None else getattr(module, "weight", None)
        if module is None or not isinstance(weight, torch.Tensor):
            problems.append(f"unexpected: mask {fqn!r}: the model has no layer {name!r} with a weight")
            continue
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(weight.shape):
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            problems.append(f"wrong shape: mask {fqn!r} is {got} but {fqn!r} is {tuple(weight.shape)}")
            continue
        try:
            mask = _as_bool_mask(value, where=f"mask {fqn!r}")
        except MaskMismatchError as exc:
            problems.append(f"wrong values: {exc}")
            continue
        if fqn not in plain:
            problems.append(f"missing: {fqn!r}, the dense weight that goes with mask {fqn!r}")
        settings = info.get(fqn)
        nm = _nm_mask(module)
        if nm is None and parametrize_other(module):
            problems.append(f"unexpected: mask {fqn!r}: {name!r}.weight already carries another parametrization")
            continue
        if settings is not None and not isinstance(settings, dict):
            problems.append(f"wrong metadata: mask {fqn!r}: its settings are {settings!r}, not a JSON object")
            continue
        pattern = (settings or {}).get("pattern") or (None if nm is None or nm.pattern is None else str(nm.pattern))
        # The file's layout claims are checked against the module: a crafted "transposed" would test the mask
        # against the wrong axis, and only JSON true/false count (the string "false" is not false).
        transposed = (settings or {}).get("transposed", is_transposed_layer(module))
        padded = (settings or {}).get("padded", False if nm is None else nm.padded)
        if not isinstance(transposed, bool) or not isinstance(padded, bool):
            problems.append(
                f"wrong metadata: mask {fqn!r}: 'transposed' and 'padded' must be true or false, got "
                f"{transposed!r} and {padded!r}"
            )
            continue
        if transposed != is_transposed_layer(module):
            problems.append(
                f"wrong metadata: mask {fqn!r}: the file says transposed={transposed} but "
                f"{type(module).__name__} {name!r} stores its weight "
                f"{'[in, out]' if is_transposed_layer(module) else '[out, in]'}"
            )
            continue
        if pattern is not None:
            try:
                ok = mask_fits(mask, NMPattern.parse(pattern), transposed=transposed, padded=padded)
            except ValueError as exc:
                problems.append(f"wrong metadata: mask {fqn!r}: {exc}")
                continue
            if not ok:
                problems.append(f"wrong pattern: mask {fqn!r} breaks {pattern}, the pattern it was saved with")
                continue
        ready[fqn] = (module, mask.to(weight.device), settings)
    for fqn in pruned:
        if fqn not in masks:
            problems.append(
                f"missing: mask {fqn!r}: that layer of the model is pruned but the state has no mask "
                f"for it (squash_masks_ the model first to load dense weights)"
            )
    if problems:
        raise MaskMismatchError(
            f"{where}: {len(problems)} entr{'y' if len(problems) == 1 else 'ies'} do not fit the "
            f"model, nothing was loaded:\n" + "\n".join(f"  - {p}" for p in problems)
        )

    attached: list[nn.Module] = []
    previous: dict[str, dict[str, Any]] = {}
    try:
        for fqn, (module, mask, settings) in ready.items():
            nm = _nm_mask(module)
            if nm is None:
                nm = apply_mask_(module, mask)
                attached.append(module)
            else:
                previous[fqn] = nm.describe()
            if settings is not None:
                nm.configure({"version": 1, **settings}, where=f"{where}[{fqn!r}]")
        raw = _raw_state_dict(model, plain, masks=ready, strict=strict)
        model.load_state_dict(raw, strict=strict)
    except (MaskMismatchError, RuntimeError, ValueError) as exc:
        for module in attached:  # undo: the model is left as it was
            remove_mask_(module, leave_masked=False)
        for fqn, described in previous.items():
            nm = _nm_mask(ready[fqn][0])
            if nm is not None:
                nm.configure(described)
        if isinstance(exc, MaskMismatchError):
            raise
        raise MaskMismatchError(f"{where}: {exc}") from exc
    return model


def parametrize_other(module: nn.Module) -> bool:
    """Whether ``module.weight`` carries a parametrization that is not nmsparse's mask."""
    from torch.nn.utils import parametrize

    return parametrize.is_parametrized(module, "weight") and _nm_mask(module) is None


def _raw_state_dict(
    model: nn.Module,
    plain: Mapping[str, Any],
    masks: Mapping[str, tuple[nn.Module, torch.Tensor, Any]],
    *,
    strict: bool,
) -> dict[str, Any]:
    """The raw state dict the (now pruned) model loads, from plain entries; key and shape checks first."""
    keys = _raw_to_plain_keys(model)
    with raw_state_dict():
        expected = model.state_dict(keep_vars=True)
    raw: dict[str, Any] = {}
    used: set[str] = set()
    problems: list[str] = []
    for key, target in expected.items():
        plain_key = keys.get(key, key)
        if plain_key is None:
            fqn = tensor_fqn(key.split("parametrizations.")[0].rstrip("."))
            if key.endswith("mask"):
                raw[key] = masks[fqn][1] if fqn in masks else target
            else:  # the extra state, as configured on the module just now (load_state_dict sets it again)
                raw[key] = target
            continue
        if plain_key not in plain:
            if strict:
                problems.append(f"missing: {plain_key!r}")
            continue
        value = plain[plain_key]
        used.add(plain_key)
        if (
            isinstance(value, torch.Tensor)
            and isinstance(target, torch.Tensor)
            and not isinstance(target, nn.parameter.UninitializedParameter)
            and tuple(value.shape) != tuple(target.shape)
        ):
            problems.append(
                f"wrong shape: {plain_key!r} is {tuple(value.shape)}, the model expects {tuple(target.shape)}"
            )
            continue
        raw[key] = value
    if strict:
        problems += [f"unexpected: {k!r}" for k in plain if k not in used]
    if problems:
        raise MaskMismatchError(
            "load_pruned_state_dict_: the state does not match the model (after attaching its masks), nothing "
            "was loaded:\n" + "\n".join(f"  - {p}" for p in problems) + "\npass strict=False to load the "
            "matching entries only"
        )
    return raw


def save_pruned(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write :func:`pruned_state_dict` of ``model`` to one safetensors file, atomically.

    Args:
        model: a (pruned or unpruned) model.
        path: target ``.safetensors`` file.
        metadata: *optional* extra metadata (strings, or JSON-serialisable values stored as JSON).
        overwrite: replace an existing file.

    Returns:
        ``path``.

    Raises:
        OverwriteError: ``path`` exists and ``overwrite`` is ``False``.
        ConfigError: a metadata key reserved by nmsparse.

    Example:
        >>> import tempfile, pathlib, torch, nmsparse
        >>> from nmsparse.io import load_pruned_, save_pruned
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "model.safetensors"
        >>> _ = save_pruned(nmsparse.prune_(torch.nn.Sequential(torch.nn.Linear(8, 4)), "4:8").model, path)
        >>> list(nmsparse.get_masks(load_pruned_(torch.nn.Sequential(torch.nn.Linear(8, 4)), path)))
        ['0.weight']
    """
    tensors, meta = pruned_state_dict(model)
    meta.update({k: v for k, v in _metadata("pruned", metadata).items() if k not in meta})
    return _save_safetensors(tensors, path, meta, overwrite=overwrite)


def load_pruned_(model: nn.Module, path: str | os.PathLike[str], *, strict: bool = True) -> nn.Module:
    """Load a file written by :func:`save_pruned` (or a pruned model's raw ``state_dict`` file) into ``model``.

    See :func:`load_pruned_state_dict_` for the checks.

    Raises:
        InputError: missing or unreadable file, or another kind of nmsparse file.
        MaskMismatchError: the file does not fit the model (nothing is loaded).
    """
    return load_pruned_state_dict_(model, load_state_dict(path), read_metadata(path) or None, strict=strict)


# ----------------------------------------------------------------------------------------------- dense export


def export_dense(model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain state dict of ``model`` with the zeros baked in: ``model.load_state_dict`` of an unpruned model
    of the same architecture reads it directly (no parametrization keys). The model is not changed.

    Example:
        >>> import torch, nmsparse
        >>> pruned = nmsparse.prune_(torch.nn.Sequential(torch.nn.Linear(8, 4)), "2:4").model
        >>> plain = torch.nn.Sequential(torch.nn.Linear(8, 4))
        >>> _ = plain.load_state_dict(export_dense(pruned))
        >>> int((plain[0].weight == 0).sum())
        16
    """
    copies: dict[int, torch.Tensor] = {}  # tied weights (one tensor under two keys) stay one tensor
    out = {}
    for key, value in _plain_state_dict(model, baked=True).items():
        if id(value) not in copies:
            copies[id(value)] = value.clone()
        out[key] = copies[id(value)]
    return out


def save_dense(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    masks_path: str | os.PathLike[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write :func:`export_dense` to a safetensors file (``kind="dense"``, the masks' settings in its metadata).

    Args:
        model: a pruned model (not changed).
        path: target ``.safetensors`` file; a plain ``load_state_dict`` reads it.
        masks_path: *optional* side file for the masks themselves (:func:`save_masks`; a kept weight may be 0,
            so the zeros alone do not give the mask back).
        metadata: *optional* extra metadata.
        overwrite: replace existing files.

    Returns:
        ``path``.

    Raises:
        OverwriteError: a target exists and ``overwrite`` is ``False`` (nothing is written then).
    """
    if not overwrite:
        for target in (path, masks_path):
            if target is not None and os.path.lexists(target):
                raise OverwriteError(f"{target} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    meta = _metadata("dense", metadata)
    meta["masks"] = json.dumps(masks_info(model), sort_keys=True)
    from .prune.static import get_masks

    if masks_path is not None:
        save_masks(get_masks(model), masks_path, overwrite=overwrite)
    return _save_safetensors(export_dense(model), path, meta, overwrite=overwrite)


def dense_from_pruned(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """``(dense state dict with zeros baked in, masks, mask settings)`` of a pruned checkpoint, without a model.

    Accepts both layouts :func:`load_pruned_state_dict_` reads (a :func:`save_pruned` file, or the raw
    ``state_dict()`` of a pruned model).

    Raises:
        MaskMismatchError: a mask without its weight, of another shape, or with values other than 0/1.
        InputError: metadata of another format or kind.

    Example:
        >>> import torch, nmsparse
        >>> model = nmsparse.prune_(torch.nn.Sequential(torch.nn.Linear(8, 4)), "2:4").model
        >>> dense, masks, info = dense_from_pruned(*pruned_state_dict(model))
        >>> sorted(dense), info["0.weight"]["pattern"], int((dense["0.weight"] == 0).sum())
        (['0.bias', '0.weight'], '2:4', 16)
    """
    if metadata:
        _check_format(metadata, ("pruned",), where="dense_from_pruned")
    problems: list[str] = []
    plain, masks, info = _split(tensors, metadata, problems)
    dense = {key: value for key, value in plain.items() if isinstance(value, torch.Tensor)}
    bool_masks: dict[str, torch.Tensor] = {}
    for fqn, mask in masks.items():
        weight = dense.get(fqn)
        if weight is None:
            problems.append(f"missing: {fqn!r}, the dense weight that goes with mask {fqn!r}")
            continue
        if tuple(mask.shape) != tuple(weight.shape):
            problems.append(f"wrong shape: mask {fqn!r} is {tuple(mask.shape)}, the weight {tuple(weight.shape)}")
            continue
        try:
            bool_masks[fqn] = _as_bool_mask(mask, where=f"mask {fqn!r}")
        except MaskMismatchError as exc:
            problems.append(f"wrong values: {exc}")
            continue
        dense[fqn] = weight * bool_masks[fqn]
    if problems:
        raise MaskMismatchError(
            "dense_from_pruned: the checkpoint is inconsistent:\n" + "\n".join(f"  - {p}" for p in problems)
        )
    return dense, bool_masks, {k: v for k, v in info.items() if k in bool_masks}


def save_pretrained_dense(
    model: nn.Module,
    folder: str | os.PathLike[str],
    *,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    extra_files: Sequence[str | os.PathLike[str]] = (),
) -> Path:
    """Save a pruned ``transformers`` model as a normal ``transformers`` folder with the zeros baked in.

    The folder is what ``save_pretrained(..., safe_serialization=True)`` writes for the model's
    :func:`export_dense` state dict (``from_pretrained`` loads it with no nmsparse involved; ``model`` itself is
    not changed), plus :data:`MASKS_FILE` (the masks,
    ``kind="masks"``) and ``nmsparse.json`` (format tag, mask settings per tensor, ``metadata``). It is written
    to a temporary folder beside ``folder`` and renamed into place, so it appears complete or not at all.

    Args:
        model: a ``transformers`` ``PreTrainedModel`` (pruned or not; not changed).
        folder: target folder.
        metadata: *optional* JSON-serialisable values recorded in ``nmsparse.json``.
        overwrite: replace an existing folder.
        extra_files: files copied into the folder as well (a tokenizer's files, say).

    Returns:
        ``folder``.

    Raises:
        ConfigError: ``model`` has no ``save_pretrained``.
        OverwriteError: ``folder`` exists and ``overwrite`` is ``False``.
    """

    def copy_extras(staging: Path) -> None:
        for extra in extra_files:
            shutil.copy2(extra, staging / Path(extra).name)

    return _write_pretrained_folder(
        model,
        folder,
        metadata=metadata,
        overwrite=overwrite,
        fill=copy_extras,
        where="save_pretrained_dense",
        hint="; use save_dense for a plain safetensors file",
    )


def _write_pretrained_folder(
    model: nn.Module,
    folder: str | os.PathLike[str],
    *,
    metadata: Mapping[str, Any] | None,
    overwrite: bool,
    fill: Callable[[Path], None] | None = None,
    where: str,
    hint: str = "",
) -> Path:
    """The folder of :func:`save_pretrained_dense` (also :func:`nmsparse.hf.save_pruned_pretrained`'s).

    ``fill`` adds more files to the staging folder after ``save_pretrained``, before the masks and
    ``nmsparse.json``; ``where`` and ``hint`` word the error for a model without ``save_pretrained``.
    """
    from .prune.static import get_masks

    if not callable(getattr(model, "save_pretrained", None)):
        raise ConfigError(f"{where}: {type(model).__name__} is not a transformers model (no save_pretrained){hint}")
    # Resolved, so that ``"."`` or ``"run/.."`` name a real folder (and its parent) rather than an empty name.
    target = Path(folder).expanduser().resolve()
    if os.path.lexists(target) and not overwrite:
        raise OverwriteError(f"{target} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    if os.path.lexists(target):
        _check_replaceable_folder(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    masks = get_masks(model)
    info = masks_info(model)
    # The model is saved with a plain state dict, never squashed: removing a parametrization from a deep copy
    # would change the parametrized class it shares with ``model`` and break ``model``.
    dense = export_dense(model)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        os.chmod(staging, 0o777 & ~_umask())
        with _write_errors_as_oserror(target):
            model.save_pretrained(str(staging), state_dict=dense, safe_serialization=True)  # type: ignore[operator]
        if fill is not None:
            fill(staging)
        save_masks(masks, staging / MASKS_FILE, overwrite=True)
        record = {
            "format": FORMAT,
            "kind": "dense",
            "nmsparse_version": __version__,
            "masks": info,
            "metadata": dict(metadata or {}),
        }
        write_text_atomic(staging / "nmsparse.json", json.dumps(record, indent=2, sort_keys=True) + "\n")
        _chmod_files(staging)  # safetensors and save_pretrained write 0o600; a plain open respects the umask
        if os.path.lexists(target):
            # A fresh folder for the old one: never deletes anything of the caller's beside ``folder``.
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            try:
                os.replace(target, old / target.name)
                try:
                    os.replace(staging, target)
                except OSError:
                    os.replace(old / target.name, target)  # put the old folder back
                    raise
            finally:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return Path(folder)


def _chmod_files(folder: Path) -> None:
    """Give every file under ``folder`` the mode a plain ``open`` would (``0o666 & ~umask``)."""
    mode = 0o666 & ~_umask()
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, mode)


def _check_replaceable_folder(target: Path) -> None:
    """Refuse to replace ``target`` unless it is a folder nmsparse wrote (its ``nmsparse.json`` says so).

    ``overwrite=True`` replaces the whole folder; a folder of the caller's (a run folder, a source model, the
    current directory) would lose files nmsparse never wrote.

    Raises:
        OverwriteError: ``target`` is not such a folder, or holds the current working directory.
    """
    record = target / "nmsparse.json"
    try:
        ours = (
            target.is_dir()
            and not target.is_symlink()
            and json.loads(record.read_text(encoding="utf-8")).get("format") == FORMAT
        )
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise OverwriteError(
            f"{target} exists and is not a folder nmsparse wrote (no nmsparse.json of format "
            f"{FORMAT}); overwrite replaces only those, so remove it yourself or choose another "
            f"output"
        )
    cwd = Path.cwd().resolve()
    if cwd == target or target in cwd.parents:
        raise OverwriteError(f"{target} holds the current directory; choose another output")
