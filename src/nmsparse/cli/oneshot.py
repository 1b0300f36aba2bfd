"""``nmsparse oneshot --model hf:FOLDER --method sparsegpt --pattern 4:8-T --out DIR``: one-shot pruning of a causal LM.

The source is a ``transformers`` causal-LM folder (``hf:PATH`` or ``PATH``), or a run directory of
``nmsparse train --task lm`` (its dense ``baseline/hf`` folder, else its ``hf`` folder). With ``--model lm`` (the
default) the recipe's default decoder is first trained dense into ``DIR/source-run`` (a few minutes on 2 cores).
Calibration windows come from the training split of the text embedded in Python (the LM recipe's corpus), or of
``--data`` files (text, ``.jsonl`` with a ``"text"`` field, or folders of them: :mod:`nmsparse.recipes.lm.text`),
and perplexity is measured on its held-out split before and after pruning, with the recipe's byte-level tokenizer
when the folder records it (or has no tokenizer of its own) and the folder's ``tokenizer.json`` otherwise.

``DIR`` becomes a normal ``transformers`` folder (dense weights with the zeros baked in, safetensors) that
``AutoModelForCausalLM.from_pretrained`` loads, plus ``nmsparse_masks.safetensors`` and ``oneshot.json`` (the
per-layer report and the perplexities).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..errors import ConfigError, InputError, OverwriteError
from ..oneshot import METHODS, OneShotConfig, prune_oneshot_
from ..pattern import NMPattern
from ._flags import add_config_arguments, config_from_args
from ._table import format_table

REPORT_FILE = "oneshot.json"
SOURCE_RUN = "source-run"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "oneshot", help="one-shot n:m / n:m-T pruning of a causal language model (SparseGPT, Wanda, ...)",
        description="Prune a causal language model in one shot, decoder block by decoder block, from a few "
                    "calibration windows of the text embedded in Python: magnitude, wanda, sparsegpt or adaprune; "
                    "-T patterns get exact transposable masks on each method's saliency. Writes DIR as a normal "
                    "transformers folder (zeros baked in), the masks and a report with held-out perplexity.",
    )
    parser.add_argument("--model", default="lm",
                        help="'hf:FOLDER' or FOLDER (a transformers causal LM), a 'nmsparse train --task lm' run "
                             "directory, or 'lm' to train the LM recipe's default decoder dense first (default)")
    parser.add_argument("--method", default="sparsegpt", choices=METHODS, help="one-shot method (default: sparsegpt)")
    parser.add_argument("--pattern", required=True, help='e.g. "2:4", "4:8-T", "8:16-T"')
    parser.add_argument("--out", type=Path, required=True, help="output folder (a transformers model folder)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--data", nargs="+", metavar="PATH", default=None,
                        help="calibration and held-out text: text files, .jsonl files with a \"text\" field, or "
                             "folders of them (default: the text embedded in Python)")
    parser.add_argument("--calibration-samples", type=int, default=128, metavar="N",
                        help="calibration windows from the training split (default: 128)")
    parser.add_argument("--context", type=int, default=None, metavar="T",
                        help="tokens per window (default: the model's context, at most 128)")
    parser.add_argument("--eval-tokens", type=int, default=65536, metavar="N",
                        help="held-out tokens for perplexity, 0 to skip (default: 65536)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration windows (default: 0)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: min(cores, 4))")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="show progress bars (default: when stderr is a terminal)")
    add_config_arguments(parser, OneShotConfig)
    return parser


def _resolve_folder(spec: str) -> Path:
    """The transformers folder of ``--model`` (a run directory resolves to its dense model's folder)."""
    text = spec[3:] if spec.startswith("hf:") else spec
    path = Path(text).expanduser()
    for candidate in (path / "baseline" / "hf", path / "hf", path):
        if (candidate / "config.json").is_file():
            return candidate
    raise InputError(f"--model {spec!r}: no transformers folder there (config.json not found in it, its hf/ or "
                     f"its baseline/hf/); pass hf:FOLDER of a causal LM, a 'nmsparse train --task lm' run, or 'lm'")


def _train_default(out: Path, progress: bool | None) -> Path:
    from nmsparse.recipes.lm import LMTrainConfig, run_lm_training

    run_dir = out.parent / f".{out.name}.{SOURCE_RUN}"
    print(f"model: training the LM recipe's default decoder dense into {run_dir} (a few minutes)")
    config = LMTrainConfig(pattern="dense", baseline=False)
    run_lm_training(config, run_dir, resume=(run_dir / "summary.json").exists(), progress=progress)
    return _resolve_folder(str(run_dir))


def _texts_tokenizer(folder: Path, vocab_size: int) -> Any:
    """The folder's ``tokenizer.json``, or the recipe's byte tokenizer
    (:func:`~nmsparse.recipes.lm.text.folder_tokenizer`)."""
    from nmsparse.recipes.lm.text import folder_tokenizer

    return folder_tokenizer(folder, vocab_size)


def _streams(tokenizer: Any, data: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Train and held-out token streams of ``--data`` files, or of the LM recipe's embedded corpus."""
    from nmsparse.recipes.lm.data import build_lm_data

    streams = build_lm_data(files=data, tokenizer=tokenizer)
    return streams.train.long(), streams.heldout.long(), streams.describe()


def run(args: argparse.Namespace) -> int:
    from ..io import write_text_atomic
    from ..oneshot.hf import calibration_windows, perplexity, save_pruned_pretrained
    from ._runtime import configure_runtime

    pattern = NMPattern.parse(args.pattern)
    config = config_from_args(OneShotConfig, args, where="nmsparse oneshot")
    for flag, value, low in (("--calibration-samples", args.calibration_samples, 1),
                             ("--eval-tokens", args.eval_tokens, 0), ("--seed", args.seed, 0)):
        if value < low:
            raise ConfigError(f"{flag} must be >= {low}, got {value}")
    if args.context is not None and args.context < 2:
        raise ConfigError(f"--context must be >= 2, got {args.context}")
    out: Path = args.out
    if out.exists() and not args.overwrite:
        raise OverwriteError(f"--out {str(out)!r} already exists; pass --overwrite to replace it")
    threads = configure_runtime(args.threads, None)
    began = time.perf_counter()

    if args.data:
        from ..recipes.lm.text import read_documents

        read_documents(args.data)  # bad --data is refused before any model is trained or loaded
    folder = _train_default(out, args.progress) if args.model == "lm" else _resolve_folder(args.model)
    from ..recipes.lm.pretrained import load_causal_lm_checked

    model = load_causal_lm_checked(folder)  # no remote code, every weight in safetensors, a causal-LM head
    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    limit = int(getattr(model.config, "n_positions", 0) or getattr(model.config, "max_position_embeddings", 0) or 128)
    context = args.context or min(limit, 128)
    if context > limit:
        raise ConfigError(f"--context {context} is longer than the model's {limit} positions")
    tokenizer = _texts_tokenizer(folder, vocab)
    train, heldout, data_info = _streams(tokenizer, args.data)
    if vocab and int(max(train.max(), heldout.max())) >= vocab:
        raise InputError(f"{folder}: token ids reach {int(max(train.max(), heldout.max()))} but the model's "
                         f"vocabulary has {vocab}; the tokenizer does not match the model")
    print(f"model: {folder} ({type(model).__name__}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M "
          f"parameters); threads {threads}")
    calibration = calibration_windows(train, samples=args.calibration_samples, context=context, seed=args.seed)
    eval_stream = heldout[: args.eval_tokens]
    evaluate = args.eval_tokens > 0 and eval_stream.numel() >= context
    ppl_dense = perplexity(model, eval_stream, context=context, progress=args.progress) if evaluate else None

    report = prune_oneshot_(model, calibration, pattern, method=args.method, config=config, progress=args.progress)
    ppl_pruned = perplexity(model, eval_stream, context=context, progress=args.progress) if evaluate else None

    rows = [[r.name, f"{r.shape[0]}x{r.shape[1]}", r.block, f"{r.relative_error:.4f}", f"{r.seconds:.2f}"]
            for r in report.layers]
    print(format_table(["layer", "out x in", "block", "rel. error", "s"], rows))
    if ppl_dense is not None and ppl_pruned is not None:
        print(f"held-out perplexity ({eval_stream.numel()} tokens, context {context}): dense {ppl_dense:.3f}, "
              f"{args.method} {pattern} {ppl_pruned:.3f} ({100 * (ppl_pruned / ppl_dense - 1):+.1f}%)")
    summary = {
        "nmsparse_version": __version__, "source": str(folder), "method": args.method, "pattern": str(pattern),
        "config": config.to_dict(), "calibration": {"samples": args.calibration_samples, "context": context,
                                                    "seed": args.seed, **data_info},
        "perplexity": {"dense": ppl_dense, "pruned": ppl_pruned,
                       "eval_tokens": int(eval_stream.numel()) if evaluate else 0},
        "threads": threads, "seconds": time.perf_counter() - began, "report": report.to_dict(),
    }
    save_pruned_pretrained(model, out, pattern=pattern, method=args.method, overwrite=args.overwrite,
                           extra={"perplexity_dense": ppl_dense, "perplexity_pruned": ppl_pruned},
                           tokenizer=tokenizer if hasattr(tokenizer, "save_pretrained") else None)
    write_text_atomic(out / REPORT_FILE, json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out} ({report.seconds:.1f} s pruning, working memory {report.peak_tracked_mb:.0f} MiB of "
          f"{report.max_memory_mb:.0f} MiB); load it with AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return 0


__all__ = ["add_parser", "run", "REPORT_FILE"]

