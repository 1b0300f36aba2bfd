"""``nmsparse export CHECKPOINT --out OUT``: a pruned checkpoint as plain weights with the zeros baked in.

* With ``--model hf:FOLDER`` (the ``transformers`` folder the checkpoint was pruned from), a pruned checkpoint
  becomes a normal ``transformers`` folder that ``from_pretrained`` loads: ``save_pretrained`` safetensors with
  the zeros in, the source folder's tokenizer files (a fixed list, :data:`_COPIED`), the masks in
  ``nmsparse_masks.safetensors`` and the pattern per tensor in ``nmsparse.json``. The folder is taken from the
  command line only, never from the checkpoint's metadata (a file must not decide what a command reads).
* Any other pruned checkpoint (``save_pruned``, ``nmsparse train``'s ``model.safetensors``, a run folder) becomes
  ``OUT`` (``.safetensors``, loaded by a plain ``model.load_state_dict``) plus ``OUT``'s ``.masks.safetensors``
  side file with the masks, keyed by tensor name.

Nothing existing is replaced without ``--overwrite``; even with it, the checkpoint, the model folder and folders
nmsparse did not write are never replaced.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..errors import ConfigError, InputError, OverwriteError

#: The files export copies from the ``--model`` folder: a tokenizer's and a processor's, nothing else (the
#: weights and config are what save_pretrained writes; anything else of the folder is not export's to carry).
_COPIED = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export",
        help="write a pruned checkpoint as plain weights with zeros (or a transformers folder)",
        description="Bake the masks of a pruned checkpoint into plain weights that a normal load_state_dict / "
        "from_pretrained reads, keeping the masks and their pattern beside them.",
    )
    parser.add_argument(
        "checkpoint", type=Path, help="pruned checkpoint (.safetensors) or a run folder holding model.safetensors"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="output: a .safetensors file, or a folder for transformers models"
    )
    parser.add_argument(
        "--model",
        default=None,
        metavar="hf:FOLDER",
        help="the transformers folder the checkpoint was pruned from (to write a transformers folder)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return parser


def masks_side_file(out: Path) -> Path:
    """``dense.safetensors`` -> ``dense.masks.safetensors``."""
    return out.with_name(out.name.removesuffix(".safetensors") + ".masks.safetensors")


def _refuse(path: Path, overwrite: bool) -> None:
    if os.path.lexists(path) and not overwrite:
        raise OverwriteError(f"{path} exists; pass --overwrite to replace it")


def _within(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (both resolved)."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _build_hf(folder: Path):  # noqa: ANN202 - a transformers PreTrainedModel
    try:
        import transformers
    except ImportError as exc:
        raise InputError("exporting a transformers model needs transformers (pip install transformers)") from exc
    if not (folder / "config.json").is_file():
        raise InputError(f"--model hf:{folder}: no config.json there; expected a folder written by save_pretrained")
    try:  # never runs a folder's own code (auto_map is refused), and a bad config.json is one line
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
        architectures = getattr(config, "architectures", None) or []
        cls = getattr(transformers, architectures[0], None) if architectures else None
        if cls is None:
            return transformers.AutoModel.from_config(config)
        return cls(config)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for a bad folder
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(
            f"--model hf:{folder}: transformers cannot build the model ({type(exc).__name__}: {first})"
        ) from exc


def run(args: argparse.Namespace) -> int:
    from ..io import (
        MASKS_FILE,
        _metadata,
        _save_safetensors,
        dense_from_pruned,
        load_pruned_,
        load_state_dict,
        read_metadata,
        save_masks,
        save_pretrained_dense,
    )
    from ..prune import get_masks

    source = args.checkpoint / "model.safetensors" if args.checkpoint.is_dir() else args.checkpoint
    if not source.is_file():
        raise InputError(
            f"{args.checkpoint}: no such checkpoint (expected a .safetensors file or a run folder "
            f"holding model.safetensors)"
        )
    if source.resolve() == args.out.resolve() or args.checkpoint.resolve() == args.out.resolve():
        raise OverwriteError(f"--out {args.out} is the checkpoint itself; choose another output")
    meta = read_metadata(source)
    # The model folder comes from the command line only: a checkpoint's metadata must not decide which folder
    # this command reads or copies files from (it only words the hint below).
    model_spec = args.model
    if model_spec is not None and not model_spec.startswith("hf:"):
        raise ConfigError(f"--model must be hf:FOLDER, got {model_spec!r}")
    recorded = str(meta.get("source", ""))
    if model_spec is None and recorded.startswith("hf:") and args.out.suffix != ".safetensors":
        raise ConfigError(
            f"{source} was pruned from a transformers model ({recorded}, says its metadata); pass "
            f"--model hf:FOLDER to write a transformers folder (export reads a model folder only "
            f"when the command line names it), or an --out ending in .safetensors for plain weights"
        )
    if model_spec is not None:
        folder = Path(model_spec[3:]).expanduser()
        if _within(source, args.out) or _within(folder, args.out):
            raise OverwriteError(
                f"--out {args.out} holds the checkpoint or the model folder being exported; choose another output"
            )
        _refuse(args.out, args.overwrite)
        model = _build_hf(folder)
        load_pruned_(model, source)
        extra = [folder / name for name in _COPIED if (folder / name).is_file()]
        save_pretrained_dense(
            model,
            args.out,
            overwrite=args.overwrite,
            extra_files=extra,
            metadata={"source": model_spec, "checkpoint": str(source)},
        )
        masks = get_masks(model)
        print(
            f"wrote {args.out}: a transformers folder ({type(model).__name__}) with {len(masks)} masked "
            f"tensor(s) baked in; masks in {args.out / MASKS_FILE}"
        )
        return 0
    if args.out.suffix != ".safetensors":
        raise ConfigError(
            f"--out must end in .safetensors for a checkpoint without a transformers model, got "
            f"{str(args.out)!r} (pass --model hf:FOLDER to write a transformers folder)"
        )
    side = masks_side_file(args.out)
    if side.resolve() in (source.resolve(), args.checkpoint.resolve()):
        raise OverwriteError(
            f"--out {args.out} would write its masks to {side}, the checkpoint itself; choose another output"
        )
    _refuse(args.out, args.overwrite)
    _refuse(side, args.overwrite)
    dense, masks, info = dense_from_pruned(load_state_dict(source), meta or None)
    if not masks:
        raise InputError(f"{source}: holds no masks; it is not a pruned checkpoint")
    out_meta = _metadata("dense", {"source": source.name})
    out_meta["masks"] = json.dumps(info, sort_keys=True)
    save_masks(masks, side, overwrite=args.overwrite, metadata={"source": source.name})
    _save_safetensors(dense, args.out, out_meta, overwrite=args.overwrite)
    patterns = sorted({str(v.get("pattern")) for v in info.values()}) or ["unrecorded"]
    print(
        f"wrote {args.out} ({len(dense)} tensors, {len(masks)} masked with {', '.join(patterns)}, zeros baked "
        f"in; a plain load_state_dict reads it) and the masks to {side}"
    )
    return 0
