"""``nmsparse export CHECKPOINT --out OUT``: a pruned checkpoint as plain weights with the zeros baked in.

* A pruned checkpoint of a ``transformers`` model (its metadata names ``source: hf:FOLDER``, as ``nmsparse
  adaprune`` writes, or ``--model hf:FOLDER`` is given) becomes a normal ``transformers`` folder that
  ``from_pretrained`` loads: ``save_pretrained`` safetensors with the zeros in, the source folder's tokenizer
  files, the masks in ``nmsparse_masks.safetensors`` and the pattern per tensor in ``nmsparse.json``.
* Any other pruned checkpoint (``save_pruned``, ``nmsparse train``'s ``model.safetensors``, a run folder) becomes
  ``OUT`` (``.safetensors``, loaded by a plain ``model.load_state_dict``) plus ``OUT``'s ``.masks.safetensors``
  side file with the masks, keyed by tensor name.

Nothing existing is replaced without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..errors import ConfigError, InputError, OverwriteError

#: Files of a transformers folder that export does not copy (the weights and what save_pretrained writes).
_NOT_COPIED = ("config.json", "generation_config.json", "model.safetensors.index.json",
               "pytorch_model.bin.index.json")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export", help="write a pruned checkpoint as plain weights with zeros (or a transformers folder)",
        description="Bake the masks of a pruned checkpoint into plain weights that a normal load_state_dict / "
                    "from_pretrained reads, keeping the masks and their pattern beside them.",
    )
    parser.add_argument("checkpoint", type=Path,
                        help="pruned checkpoint (.safetensors) or a run folder holding model.safetensors")
    parser.add_argument("--out", type=Path, required=True,
                        help="output: a .safetensors file, or a folder for transformers models")
    parser.add_argument("--model", default=None, metavar="hf:FOLDER",
                        help="the transformers folder the checkpoint was pruned from (default: from its metadata)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return parser


def masks_side_file(out: Path) -> Path:
    """``dense.safetensors`` -> ``dense.masks.safetensors``."""
    return out.with_name(out.name.removesuffix(".safetensors") + ".masks.safetensors")


def _refuse(path: Path, overwrite: bool) -> None:
    if os.path.lexists(path) and not overwrite:
        raise OverwriteError(f"{path} exists; pass --overwrite to replace it")


def _build_hf(folder: Path):  # noqa: ANN202 - a transformers PreTrainedModel
    try:
        import transformers
    except ImportError as exc:
        raise InputError("exporting a transformers model needs transformers (pip install transformers)") from exc
    if not (folder / "config.json").is_file():
        raise InputError(f"--model hf:{folder}: no config.json there; expected a folder written by save_pretrained")
    config = transformers.AutoConfig.from_pretrained(str(folder))
    architectures = getattr(config, "architectures", None) or []
    cls = getattr(transformers, architectures[0], None) if architectures else None
    if cls is None:
        return transformers.AutoModel.from_config(config)
    return cls(config)


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
        raise InputError(f"{args.checkpoint}: no such checkpoint (expected a .safetensors file or a run folder "
                         f"holding model.safetensors)")
    if source.resolve() == args.out.resolve() or args.checkpoint.resolve() == args.out.resolve():
        raise OverwriteError(f"--out {args.out} is the checkpoint itself; choose another output")
    meta = read_metadata(source)
    model_spec = args.model or (meta.get("source") if str(meta.get("source", "")).startswith("hf:") else None)
    if model_spec is not None and not model_spec.startswith("hf:"):
        raise ConfigError(f"--model must be hf:FOLDER, got {model_spec!r}")
    if model_spec is not None:
        folder = Path(model_spec[3:]).expanduser()
        _refuse(args.out, args.overwrite)
        model = _build_hf(folder)
        load_pruned_(model, source)
        extra = [p for p in sorted(folder.iterdir()) if p.is_file() and p.name not in _NOT_COPIED
                 and not p.name.endswith((".safetensors", ".bin", ".pt", ".pth")) and p.name != "nmsparse.json"]
        save_pretrained_dense(model, args.out, overwrite=args.overwrite, extra_files=extra,
                              metadata={"source": model_spec, "checkpoint": str(source)})
        masks = get_masks(model)
        print(f"wrote {args.out}: a transformers folder ({type(model).__name__}) with {len(masks)} masked "
              f"tensor(s) baked in; masks in {args.out / MASKS_FILE}")
        return 0
    if args.out.suffix != ".safetensors":
        raise ConfigError(f"--out must end in .safetensors for a checkpoint without a transformers model, got "
                          f"{str(args.out)!r} (pass --model hf:FOLDER to write a transformers folder)")
    side = masks_side_file(args.out)
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
    print(f"wrote {args.out} ({len(dense)} tensors, {len(masks)} masked with {', '.join(patterns)}, zeros baked "
          f"in; a plain load_state_dict reads it) and the masks to {side}")
    return 0
