"""``nmsparse oneshot --model MODEL --algorithm sparsegpt --pattern 4:8-T --out DIR``: one-shot pruning.

The flags of the settings are generated from :class:`~nmsparse.oneshot.OneShotConfig` and from the option table of
every registered algorithm (``--damping``, ``--block-size``, ``--iterations``, ...; a flag the chosen algorithm
has no option for is refused). ``--method`` names the mask solver; an algorithm name there is the deprecated
spelling of ``--algorithm``. ``nmsparse adaprune ARGS`` is ``nmsparse oneshot --algorithm adaprune ARGS``
(:mod:`nmsparse.cli.adaprune`).

Two kinds of model:

* **causal LMs**: a ``transformers`` causal-LM folder (``hf:PATH`` or ``PATH``), or a run directory of
  ``nmsparse train --task lm`` (its dense ``baseline/hf`` folder, else its ``hf`` folder). With ``--model lm`` (the
  default) the recipe's default decoder is first trained dense into ``DIR/source-run`` (a few minutes on 2 cores).
  Calibration windows come from the training split of the text embedded in Python (the LM recipe's corpus), or of
  ``--data`` files (text, ``.jsonl`` with a ``"text"`` field, or folders of them: :mod:`nmsparse.recipes.lm.text`),
  and perplexity is measured on its held-out split before and after pruning, with the recipe's byte-level
  tokenizer when the folder records it (or has no tokenizer of its own) and the folder's ``tokenizer.json``
  otherwise. ``DIR`` becomes a normal ``transformers`` folder (dense weights with the zeros baked in, safetensors)
  that ``AutoModelForCausalLM.from_pretrained`` loads, plus ``nmsparse_masks.safetensors`` and ``oneshot.json``
  (the per-layer report and the perplexities).
* **other models** (:func:`nmsparse.recipes.integrations.sources.resolve_source`): ``minilm`` (the packaged
  all-MiniLM-L6-v2), a ``transformers`` folder that is not a causal LM (``hf:FOLDER``: calibrated and evaluated on
  sentences), or a ``model.safetensors`` written by ``nmsparse train`` (or its run folder: calibrated on its
  built-in training images, evaluated by test accuracy). ``DIR`` then holds ``model.safetensors`` (masks
  included: :func:`nmsparse.io.load_pruned_`) and the JSON report; layers outside the model's repeated blocks are
  pruned too unless ``--no-prune-outside-blocks``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..errors import ConfigError, InputError, OverwriteError
from ..oneshot import OneShotConfig, OneShotReport, get_method, list_algorithms, prune_oneshot_
from ..pattern import NMPattern
from ..solvers import list_methods
from ._flags import add_config_arguments, explicit_overrides
from ._table import format_table

REPORT_FILE = "oneshot.json"
MODEL_FILE = "model.safetensors"
SOURCE_RUN = "source-run"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "oneshot",
        help="one-shot n:m / n:m-T pruning of a trained model (SparseGPT, Wanda, AdaPrune, ...)",
        description="Prune a trained model in one shot, block by block, from a small calibration set: magnitude, "
        "wanda, sparsegpt or adaprune; -T patterns get exact transposable masks on each method's "
        "saliency. A causal LM becomes a normal transformers folder (zeros baked in), its masks and a "
        "report with held-out perplexity; any other model (minilm, an encoder folder, an 'nmsparse "
        f"train' checkpoint) becomes {MODEL_FILE} (masks included) and a report with its held-out "
        "quality.",
    )
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser, *, algorithm: str | None = None) -> None:
    """The flags of ``nmsparse oneshot``; ``algorithm`` fixes the algorithm (an alias such as ``adaprune``)."""
    parser.add_argument(
        "--model",
        default="lm",
        help="'hf:FOLDER' or FOLDER (a transformers model: a causal LM, or an encoder such as BERT), "
        "a 'nmsparse train' run directory or model.safetensors, 'minilm' (the packaged "
        "all-MiniLM-L6-v2), or 'lm' to train the LM recipe's default decoder dense first "
        "(default)",
    )
    if algorithm is None:
        parser.add_argument(
            "--algorithm", default=None, choices=list_algorithms(), help="per-layer algorithm (default: sparsegpt)"
        )
    else:
        parser.set_defaults(algorithm=algorithm)
    solvers = list(dict.fromkeys([*list_methods(), *list_algorithms()]))  # list_methods() starts with "auto"
    parser.add_argument(
        "--method",
        default=None,
        choices=solvers,
        help="mask solver of find_mask (default: auto: top-n for plain patterns, exact for -T); an "
        "algorithm name here is the deprecated spelling of --algorithm",
    )
    parser.add_argument("--pattern", required=True, help='e.g. "2:4", "4:8-T", "8:16-T"')
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --out (a causal LM's folder) or the model and report in it"
    )
    parser.add_argument(
        "--data",
        nargs="+",
        metavar="PATH",
        default=None,
        help='calibration and held-out text: text files, .jsonl files with a "text" field, or '
        "folders of them (default: the text embedded in Python)",
    )
    parser.add_argument(
        "--calibration",
        default="builtin",
        help="text encoders (minilm, hf:FOLDER): 'builtin' (English sentences shipped with Python) "
        "or a file with one sentence per line (default: builtin)",
    )
    parser.add_argument(
        "--calibration-samples",
        type=int,
        default=None,
        metavar="N",
        help="calibration windows of a causal LM (default: 128), or sentences / images of other models (default: 256)",
    )
    parser.add_argument(
        "--calibration-size", type=int, dest="calibration_samples", action=_Deprecated, help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--context",
        type=int,
        default=None,
        metavar="T",
        help="causal LMs: tokens per window (default: the model's context, at most 128)",
    )
    parser.add_argument(
        "--eval-tokens",
        type=int,
        default=65536,
        metavar="N",
        help="causal LMs: held-out tokens for perplexity, 0 to skip (default: 65536)",
    )
    parser.add_argument(
        "--eval-size",
        type=int,
        default=300,
        metavar="N",
        help="text encoders: held-out sentences, 0 to skip evaluation (default: 300)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the calibration windows and of the algorithm's own random choices "
        "(adaprune's row subsets) (default: 0)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads of torch and numba (default: min(cores, 4); on a busy machine 1 is often fastest)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress bars (default: when stderr is a terminal)",
    )
    add_config_arguments(parser, OneShotConfig, *_option_tables(), exclude=("algorithm", "method", "seed"))


class _Deprecated(argparse.Action):
    """A former spelling of a flag: stores into the new flag's ``dest`` and notes the new spelling."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        print(f"note: {option_string} is deprecated; use --{self.dest.replace('_', '-')}")


def _option_tables() -> list[Any]:
    return list(dict.fromkeys(get_method(name).options for name in list_algorithms()))


def config_from_flags(
    args: argparse.Namespace, *, where: str = "nmsparse oneshot", defaults: dict[str, Any] | None = None
) -> OneShotConfig:
    """:class:`OneShotConfig` from the generated flags, ``--algorithm``, ``--method`` (old meaning accepted) and
    ``--seed``; ``defaults`` fill settings the flags leave out (a model source's choices)."""
    algorithm, method = args.algorithm, args.method
    if method in list_algorithms():
        if algorithm is not None and algorithm != method:
            raise ConfigError(
                f"--method {method} names an algorithm (the old meaning of --method) but --algorithm "
                f"is {algorithm}; pass --algorithm only (--method names the mask solver)"
            )
        print(f"note: --method {method} is deprecated for the algorithm; use --algorithm {method}")
        algorithm, method = method, None
    algorithm = algorithm or "sparsegpt"
    table = get_method(algorithm).options
    option_names = {n for t in _option_tables() for n in t.field_names()}
    values = {**(defaults or {}), **explicit_overrides(args, OneShotConfig, ignore=option_names)}
    options = explicit_overrides(
        args, table, context=f"--algorithm {algorithm}", ignore=set(OneShotConfig.field_names()) - option_names
    )
    seed = int(getattr(args, "seed", 0) or 0)
    if seed and "seed" in table.field_names():
        options["seed"] = seed
    values.update(algorithm=algorithm, options=options or None, **({"method": method} if method else {}))
    return OneShotConfig.from_dict(values, where=where)


def _source_spec(spec: str) -> str | None:
    """``--model`` as a :func:`~nmsparse.recipes.integrations.sources.resolve_source` spec when it names minilm, a
    transformers model that is not a causal LM, or an ``nmsparse train`` checkpoint; ``None``: a causal LM."""
    if spec == "minilm" or spec.endswith(".safetensors"):
        return spec
    path, folder = _find_folder(spec)
    if folder is not None:
        try:  # an unreadable config.json is the causal-LM loader's to report
            architectures = json.loads((folder / "config.json").read_text()).get("architectures")
        except (OSError, ValueError, AttributeError):
            architectures = None
        causal = any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in architectures or ["ForCausalLM"])
        return None if causal else f"hf:{folder}"
    return spec if spec.startswith("hf:") or (path / MODEL_FILE).is_file() else None


def _find_folder(spec: str) -> tuple[Path, Path | None]:
    """``--model``'s path, and the transformers folder it names: its ``baseline/hf/`` (a comparison or train run's
    dense model), its ``hf/`` or itself, the first holding a ``config.json`` (``None``: none does)."""
    path = Path(spec[3:] if spec.startswith("hf:") else spec).expanduser()
    return path, next((c for c in (path / "baseline" / "hf", path / "hf", path) if (c / "config.json").is_file()), None)


def _resolve_folder(spec: str) -> Path:
    """The transformers folder of ``--model`` (a run directory resolves to its dense model's folder)."""
    folder = _find_folder(spec)[1]
    if folder is not None:
        return folder
    raise InputError(
        f"--model {spec!r}: no transformers folder there (config.json not found in it, its hf/ or "
        f"its baseline/hf/); pass hf:FOLDER, a 'nmsparse train' run, 'minilm', or 'lm'"
    )


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
    from ..hf import calibration_windows, perplexity, save_pruned_pretrained
    from ..io import write_text_atomic
    from ._runtime import configure_runtime

    pattern = NMPattern.parse(args.pattern)
    config = config_from_flags(args, where=f"nmsparse {getattr(args, 'command', 'oneshot')}")
    for flag, value, low in (
        ("--calibration-samples", args.calibration_samples or 1, 1),
        ("--eval-tokens", args.eval_tokens, 0),
        ("--eval-size", args.eval_size, 0),
        ("--seed", args.seed, 0),
    ):
        if value < low:
            raise ConfigError(f"{flag} must be >= {low}, got {value}")
    if args.context is not None and args.context < 2:
        raise ConfigError(f"--context must be >= 2, got {args.context}")
    if args.data and args.calibration != "builtin":
        raise ConfigError("--data gives the calibration text; drop --calibration (or --data)")
    source = _source_spec(args.model)
    if source is not None:
        return _run_source(args, source, pattern, config, configure_runtime(args.threads))
    if args.calibration != "builtin":
        raise ConfigError(
            "--calibration: a causal LM calibrates on the text embedded in Python or on --data files; pass --data"
        )
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
        raise InputError(
            f"{folder}: token ids reach {int(max(train.max(), heldout.max()))} but the model's "
            f"vocabulary has {vocab}; the tokenizer does not match the model"
        )
    print(
        f"model: {folder} ({type(model).__name__}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M "
        f"parameters); threads {threads}"
    )
    samples = args.calibration_samples or 128
    calibration = calibration_windows(train, samples=samples, context=context, seed=args.seed)
    eval_stream = heldout[: args.eval_tokens]
    evaluate = args.eval_tokens > 0 and eval_stream.numel() >= context
    ppl_dense = perplexity(model, eval_stream, context=context, progress=args.progress) if evaluate else None

    report = prune_oneshot_(model, calibration, pattern, config=config, progress=args.progress)
    ppl_pruned = perplexity(model, eval_stream, context=context, progress=args.progress) if evaluate else None

    _print_report(report)
    if ppl_dense is not None and ppl_pruned is not None:
        print(
            f"held-out perplexity ({eval_stream.numel()} tokens, context {context}): dense {ppl_dense:.3f}, "
            f"{config.algorithm} {pattern} {ppl_pruned:.3f} ({100 * (ppl_pruned / ppl_dense - 1):+.1f}%)"
        )
    summary = {
        "nmsparse_version": __version__,
        "source": str(folder),
        "method": config.algorithm,
        "algorithm": config.algorithm,
        "pattern": str(pattern),
        "config": config.to_dict(),
        "calibration": {"samples": samples, "context": context, "seed": args.seed, **data_info},
        "perplexity": {
            "dense": ppl_dense,
            "pruned": ppl_pruned,
            "eval_tokens": int(eval_stream.numel()) if evaluate else 0,
        },
        "threads": threads,
        "seconds": time.perf_counter() - began,
        "report": report.to_dict(),
    }
    save_pruned_pretrained(
        model,
        out,
        pattern=pattern,
        method=config.algorithm,
        overwrite=args.overwrite,
        extra={
            "options": report.config["options"],  # e.g. refit: the weights are not the method's as published
            "perplexity_dense": ppl_dense,
            "perplexity_pruned": ppl_pruned,
            **_permutation_record(report),
        },
        tokenizer=tokenizer if hasattr(tokenizer, "save_pretrained") else None,
    )
    write_text_atomic(out / _report_file(args), json.dumps(summary, indent=2) + "\n")
    print(
        f"wrote {out} ({report.seconds:.1f} s pruning, working memory {report.peak_tracked_mb:.0f} MiB of "
        f"{report.max_memory_mb:.0f} MiB); load it with AutoModelForCausalLM.from_pretrained({str(out)!r})"
    )
    return 0


def _report_file(args: argparse.Namespace) -> str:
    return str(getattr(args, "report_file", REPORT_FILE))


def _permutation_record(report: OneShotReport) -> dict[str, Any]:
    """``{"permutation": ...}`` for the nmsparse record when ``--permute`` ran (what was permuted), else ``{}``."""
    return {} if report.permutation is None else {"permutation": report.permutation.to_dict()}


def _print_report(report: OneShotReport) -> None:
    """One line per pruned layer (AdaPrune adds the masked start's error and the fit step kept), then the layers
    left dense and why."""
    fit = report.algorithm == "adaprune"
    rows = [
        [
            r.name,
            f"{r.shape[0]}x{r.shape[1]}",
            r.block,
            r.tokens,
            *([f"{math.sqrt(r.relative_before):.4f}"] if fit else []),
            f"{r.relative_error:.4f}",
            *([r.best_iteration] if fit else []),
            f"{r.seconds:.2f}",
        ]
        for r in report
    ]
    print(
        format_table(
            [
                "layer",
                "out x in",
                "block",
                "rows",
                *(["rel.err masked"] if fit else []),
                f"rel.err {report.algorithm}",
                *(["best step"] if fit else []),
                "s",
            ],
            rows,
        )
    )
    if report.skipped:
        print(f"\nleft dense ({len(report.skipped)}):")
        for name, reason in report.skipped.items():
            print(f"  {name}: {reason}")
    if report.permutation is not None:
        print(f"\n{report.permutation.summary()}")


def _run_source(args: argparse.Namespace, spec: str, pattern: NMPattern, config: OneShotConfig, threads: int) -> int:
    """Prune a model of :func:`~nmsparse.recipes.integrations.sources.resolve_source`; write ``model.safetensors``
    and the report."""
    from ..io import save_pruned, write_text_atomic
    from ..metrics import is_nm_sparse
    from ..prune import get_masks
    from ..recipes.integrations.sources import resolve_source
    from ._flags import DEST_PREFIX

    out: Path = args.out
    report_file = _report_file(args)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; pass a folder")
    existing = [name for name in (MODEL_FILE, report_file) if (out / name).exists()]
    if existing and not args.overwrite:
        raise OverwriteError(
            f"--out {str(out)!r} already holds {' and '.join(existing)} (e.g. the source run's "
            f"weights); pass another folder, or --overwrite to replace them"
        )
    began = time.perf_counter()
    if not args.progress and spec.startswith("hf:"):
        from transformers.utils import logging as hf_logging  # a folder: its loading bar is not ours to show

        hf_logging.disable_progress_bar()
    source = resolve_source(
        spec,
        args.calibration,
        calibration_size=args.calibration_samples,
        eval_size=args.eval_size,
        seed=0,
        data=args.data,
    )
    # the source's recipe choices, where the flags do not say: its include globs and keep_first_last, and every
    # layer pruned, in the model's repeated blocks or not (poolers, classifier heads, convolutions)
    defaults = {"include": source.include, "keep_first_last": source.keep_first_last, "prune_outside_blocks": True}
    config = config.replace(**{k: v for k, v in defaults.items() if not hasattr(args, DEST_PREFIX + k)})
    print(f"model: {source.description}")
    print(
        f"settings: {config.algorithm} {pattern}, include {list(config.include) if config.include else 'all'}, "
        f"keep_first_last={config.keep_first_last}, {threads} thread(s)"
    )
    before = source.evaluate(source.model) if source.evaluate is not None else None
    report = prune_oneshot_(source.model, source.calibration, pattern, config=config, progress=args.progress)
    after = source.evaluate(source.model) if source.evaluate is not None else None
    masks = get_masks(source.model)
    valid = all(f"{r.name}.weight" in masks and is_nm_sparse(masks[f"{r.name}.weight"], str(pattern)) for r in report)
    _print_report(report)
    seconds = time.perf_counter() - began
    record = {
        "format": "nmsparse.oneshot.report",
        "nmsparse_version": __version__,
        "model": args.model,
        "description": source.description,
        "calibration": args.calibration,
        "data": args.data,
        "calibration_batches": len(source.calibration),
        "threads": threads,
        "masks_valid": valid,
        "evaluation": {"dense": before, "pruned": after},
        **report.to_dict(),
        "seconds": seconds,
    }
    out.mkdir(parents=True, exist_ok=True)
    metadata = {"source": args.model, "oneshot": json.dumps(config.to_dict()), **source.metadata}
    metadata.update({k: json.dumps(v) for k, v in _permutation_record(report).items()})
    save_pruned(source.model, out / MODEL_FILE, metadata=metadata, overwrite=args.overwrite)
    write_text_atomic(out / report_file, json.dumps(record, indent=2) + "\n", overwrite=args.overwrite)
    print(
        f"\n{len(report)} layer(s) pruned to {pattern}, {len(report.skipped)} left dense, in {seconds:.1f} s; "
        f"masks valid: {valid}"
    )
    for key, value in (before or {}).items():
        if isinstance(value, float) and after is not None and key != "sentences":
            print(f"  {key}: dense {value:.4f} -> pruned {after[key]:.4f}")
    print(f"wrote {out / MODEL_FILE} and {out / report_file}")
    return 0


__all__ = ["add_parser", "add_arguments", "run", "config_from_flags", "REPORT_FILE"]
