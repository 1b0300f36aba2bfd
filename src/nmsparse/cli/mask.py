"""``nmsparse mask CHECKPOINT --pattern 4:8-T --out MASKS.safetensors``: masks for every prunable weight.

The masks are keyed by tensor name (``"0.weight"``), so ``nmsparse.set_masks_(model, nmsparse.io.load_masks(OUT))``
applies them to a model pruned with the same pattern. Embedding tables stay dense unless
``--include-embeddings``. A ``transformers`` folder (``hf:PATH``, or a folder holding ``config.json``) is read
with its architecture, so GPT-2's ``Conv1D`` weights (stored ``[in, out]``) are grouped along their input
dimension; ``--transposed GLOB`` names such weights in other checkpoints.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from ..errors import ConfigError, InputError, OverwriteError
from ..io import load_state_dict, save_masks
from ..pattern import NMPattern
from ..solvers import list_methods
from ..tensors import mask_state_dict, transposed_keys
from ._table import format_table


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "mask",
        help="solve masks for every prunable weight of a checkpoint",
        description="Solve an n:m or transposable n:m mask for every 2-D/3-D/4-D '*weight' tensor of a state dict "
        "(.pt/.pth loaded with weights_only=True, .safetensors, or a transformers folder as hf:PATH) "
        "and write them, keyed by tensor name, to a safetensors file with the pattern and method in "
        "its metadata. Embedding tables stay dense unless --include-embeddings.",
    )
    parser.add_argument("checkpoint", help="state dict (.safetensors, .pt, .pth, .bin, .ckpt) or hf:FOLDER")
    parser.add_argument("--pattern", required=True, help='e.g. "2:4", "4:8-T", "8:16-T"')
    parser.add_argument("--method", default="auto", choices=list_methods(), help="mask method (default: auto)")
    parser.add_argument("--out", type=Path, required=True, help="output masks file (.safetensors)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--include", action="append", metavar="GLOB", help="only tensors matching (repeatable)")
    parser.add_argument("--exclude", action="append", metavar="GLOB", help="skip tensors matching (repeatable)")
    parser.add_argument(
        "--include-embeddings",
        action="store_true",
        help="also mask embedding tables (keys like *embed*, wte, wpe); default: left dense",
    )
    parser.add_argument(
        "--transposed",
        action="append",
        metavar="GLOB",
        help="weights stored [in, out] (transformers Conv1D), grouped along dim 0 (repeatable; "
        "found automatically for transformers folders)",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: min(cores, 4))")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress bars (default: when stderr is a terminal)",
    )
    return parser


def _hf_folder(spec: str) -> Path | None:
    if spec.startswith("hf:"):
        return Path(spec[3:]).expanduser()
    path = Path(spec).expanduser()
    return path if path.is_dir() and (path / "config.json").is_file() else None


def _load_hf(folder: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Weights of a transformers folder and the keys of its [in, out] (Conv1D) weights, from its architecture."""
    try:
        import transformers
    except ImportError as exc:
        raise InputError(
            f"{folder}: reading a transformers folder needs transformers (pip install transformers)"
        ) from exc
    if not (folder / "config.json").is_file():
        raise InputError(f"hf:{folder}: no config.json there; expected a folder written by save_pretrained")
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    files = [f for f in files if not f.name.startswith("nmsparse")]
    if not files:
        raise InputError(f"hf:{folder}: no model.safetensors or pytorch_model.bin there")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_state_dict(file))
    try:  # never runs a folder's own code (auto_map is refused), and a bad config.json is one line
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
        architectures = getattr(config, "architectures", None) or []
        cls = getattr(transformers, architectures[0], None) if architectures else None
        if cls is None:
            cls = transformers.AutoModel
            model = cls.from_config(config)
        else:
            with torch.device("meta"):
                model = cls(config)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for a bad folder
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"hf:{folder}: transformers cannot build the model ({type(exc).__name__}: {first})") from exc
    flipped = transposed_keys(model)
    known = set(model.state_dict())
    # a checkpoint of the bare model under a head's prefix (or the reverse): match keys by suffix
    matched = [key for key in state if any(key == k or key.endswith("." + k) or k.endswith("." + key) for k in flipped)]
    if flipped and not matched and not known & set(state):
        raise InputError(f"hf:{folder}: the weights' keys do not match architecture {type(model).__name__}")
    return state, matched


def run(args: argparse.Namespace) -> int:
    from ._runtime import configure_runtime

    pattern = NMPattern.parse(args.pattern)
    if args.out.suffix != ".safetensors":
        raise ConfigError(f"--out must end in .safetensors, got {str(args.out)!r}")
    if os.path.lexists(args.out) and not args.overwrite:
        raise OverwriteError(f"--out {args.out} exists; pass --overwrite to replace it")
    configure_runtime(args.threads, None)
    folder = _hf_folder(args.checkpoint)
    if folder is not None:
        state_dict, flipped = _load_hf(folder)
    else:
        state_dict, flipped = load_state_dict(args.checkpoint), []
    solved = mask_state_dict(
        state_dict,
        pattern,
        method=args.method,
        include=args.include,
        exclude=args.exclude,
        progress=args.progress,
        transposed=flipped + list(args.transposed or []),
        include_embeddings=args.include_embeddings,
    )
    method = args.method if args.method != "auto" else ("exact" if pattern.transposable else "topn")
    save_masks(
        solved.masks,
        args.out,
        pattern=pattern,
        overwrite=args.overwrite,
        metadata={
            "method": method,
            "source": Path(args.checkpoint.removeprefix("hf:")).name,
            "transposed": solved.transposed,
        },
    )
    rows = [
        [r.name, "x".join(map(str, r.shape)), f"{100 * r.kept_magnitude:.2f}%", f"{1000 * r.seconds:.1f}"]
        for r in solved.results
    ]
    print(format_table(["tensor", "shape", "kept |w|", "ms"], rows))
    print(
        f"\n{len(solved.results)} tensors masked with {pattern} ({method}) in {solved.seconds:.2f} s, "
        f"kept {100 * solved.kept_magnitude:.2f}% of |w|; wrote {args.out}"
    )
    if solved.skipped:
        print(f"skipped {len(solved.skipped)} tensor(s), left dense:")
        for name, reason in solved.skipped.items():
            print(f"  {name}: {reason}")
    return 0
