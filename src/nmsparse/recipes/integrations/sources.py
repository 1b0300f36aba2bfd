"""Models, calibration data and quality checks for one-shot pruning, resolved from a short spec.

``resolve_source(spec, calibration)`` understands:

* ``"minilm"``: the packaged all-MiniLM-L6-v2 sentence encoder; calibration is English text (``"builtin"``:
  sentences that ship with Python, or a text file with one sentence per line); quality is how close the pruned
  sentence embeddings stay to the dense ones on held-out sentences.
* ``"hf:PATH"``: a Hugging Face ``transformers`` model folder; calibration as for ``minilm`` (the folder needs a
  tokenizer); quality as for ``minilm`` when the model returns ``last_hidden_state``.
* a checkpoint written by ``nmsparse train`` (its ``model.safetensors``, or the run folder): the built-in model
  named in its metadata, calibrated on images of the training split of its built-in data set
  (``"builtin"``); quality is top-1 accuracy on the held-out test split.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nmsparse.errors import ConfigError, InputError

from .minilm import embedding_agreement, encode, english_sentences, load_hf_model, load_minilm, tokenize_batches

__all__ = ["ModelSource", "resolve_source", "read_sentences", "DEFAULT_SENTENCES", "DEFAULT_IMAGES"]

#: Calibration sentences taken from the built-in text by default (the paper-style "small calibration set").
DEFAULT_SENTENCES = 256
#: Calibration images taken from a built-in image data set's training split by default.
DEFAULT_IMAGES = 256
_EVAL_SENTENCES = 300
#: Per mille of --data documents held out for evaluation (the LM recipe's default split).
_DATA_HELDOUT_PERMILLE = 100


@dataclass
class ModelSource:
    """A model ready for :func:`nmsparse.adaprune_`, its calibration batches and how to judge the result.

    Attributes:
        name: the spec it was resolved from.
        kind: ``"minilm"``, ``"hf"`` or ``"builtin"``.
        model: the dense model (eval mode).
        calibration: batches for :func:`nmsparse.adaprune_`.
        description: one line about the model and the calibration data.
        include: default ``include`` globs for this kind of model (``None``: every layer).
        keep_first_last: this recipe's ``keep_first_last`` (the library's default is ``False``: prune every
            eligible layer); used when the command line does not say.
        evaluate: ``evaluate(model) -> metrics`` on held-out data; call it on the dense model first
            (:meth:`reference`), then on the pruned one.
        metadata: extra strings stored with the pruned checkpoint (e.g. the training config).
    """

    name: str
    kind: str
    model: nn.Module
    calibration: list[Any]
    description: str
    include: list[str] | None = None
    keep_first_last: bool = False
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def read_sentences(path: str | Path) -> list[str]:
    """Non-empty lines of a UTF-8 text file, stripped.

    Raises:
        InputError: missing or unreadable file, or a file without any non-empty line.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise InputError(
            f"calibration text {str(file)!r} does not exist; pass a text file with one sentence per line, or 'builtin'"
        )
    try:
        lines = [line.strip() for line in file.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"calibration text {str(file)!r} cannot be read as UTF-8 text: {exc}") from exc
    sentences = [line for line in lines if line]
    if not sentences:
        raise InputError(f"calibration text {str(file)!r} holds no non-empty line; put one sentence per line")
    return sentences


def _text_source(
    name: str,
    kind: str,
    model: nn.Module,
    tokenizer: Any,
    calibration: str,
    *,
    size: int | None,
    eval_size: int,
    include: list[str] | None,
    keep_first_last: bool,
    data: Sequence[str] | None = None,
) -> ModelSource:
    if tokenizer is None:
        raise InputError(f"{name}: the model folder has no tokenizer, so text calibration is not possible")
    if data:  # --data: documents of the user's files, split like the LM recipe's (nmsparse.recipes.lm.text)
        from nmsparse.recipes.lm.text import load_text_corpus

        train_docs, heldout_docs = load_text_corpus(data).split(_DATA_HELDOUT_PERMILLE)
        sentences = [d.text for d in train_docs][: size or DEFAULT_SENTENCES]
        held_out = [d.text for d in heldout_docs][:eval_size]
        origin = f"documents of --data {' '.join(data)}"
    elif calibration == "builtin":
        sentences = english_sentences("calibration", limit=size or DEFAULT_SENTENCES)
        origin = "sentences from Python's own documentation"
    else:
        sentences = read_sentences(calibration)[: size or None]
        origin = f"lines of {calibration}"
    batches = tokenize_batches(tokenizer, sentences, batch_size=32)
    if not data:
        held_out = english_sentences("evaluation", limit=eval_size)
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None
    dense_embeddings: list[torch.Tensor] = []

    def evaluate_embeddings(candidate: nn.Module) -> dict[str, float]:
        embeddings = encode(candidate, tokenizer, held_out)
        if not dense_embeddings:  # the first call is the dense reference
            dense_embeddings.append(embeddings)
        return {
            key: float(value) for key, value in embedding_agreement(dense_embeddings[0], embeddings).as_dict().items()
        }

    with torch.no_grad():
        probe = model(**tokenize_batches(tokenizer, held_out[:2], batch_size=2)[0])
    if hasattr(probe, "last_hidden_state") and eval_size >= 2:
        evaluate = evaluate_embeddings
    return ModelSource(
        name=name,
        kind=kind,
        model=model,
        calibration=batches,
        include=include,
        keep_first_last=keep_first_last,
        description=f"{type(model).__name__} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters);"
        f" calibration: {len(sentences)} {origin}",
        evaluate=evaluate,
    )


def _builtin_source(path: Path, calibration: str, *, size: int | None, seed: int) -> ModelSource:
    from nmsparse.io import FORMAT, load_pruned_, load_pruned_state_dict_, load_state_dict
    from nmsparse.recipes.classify import TrainConfig, build_data, build_model
    from nmsparse.recipes.classify.checkpoint import read_model_metadata

    file = path / "model.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise InputError(
            f"--model {str(path)!r}: no such checkpoint; pass 'minilm', 'hf:FOLDER' or a "
            f"model.safetensors written by nmsparse train (or its run folder)"
        )
    meta = read_model_metadata(file)
    if "config" not in meta:
        raise InputError(
            f"{file}: has no training config in its metadata, so the built-in model it belongs to is unknown; "
            f"pass a model.safetensors written by nmsparse train, 'minilm' or 'hf:FOLDER'"
        )
    cfg = TrainConfig.from_dict(json.loads(meta["config"]), where=f"{file} metadata")
    if calibration != "builtin":
        raise ConfigError(
            f"--calibration: image models calibrate on their built-in data set; pass 'builtin', got {calibration!r}"
        )
    data = build_data(cfg)
    model = build_model(
        cfg.model,
        in_channels=data.in_channels,
        num_classes=data.num_classes,
        image_size=data.image_size,
        width=cfg.width,
    )
    if meta.get("format") == FORMAT:  # written by nmsparse.io (e.g. an earlier adaprune run)
        load_pruned_(model, file)
    else:  # the trainer's checkpoint: a model's state dict (masks as parametrizations, if any)
        load_pruned_state_dict_(model, load_state_dict(file))
    model.eval()
    images = getattr(data.train, "images", None)
    if images is None:
        raise InputError(f"data set {data.name!r} is not held in memory; built-in calibration needs 'digits' or 'fake'")
    generator = torch.Generator().manual_seed(seed)
    count = min(size or DEFAULT_IMAGES, images.shape[0])
    chosen = images[torch.randperm(images.shape[0], generator=generator)[:count]]
    test_set: Any = data.test  # an in-memory split (checked above for the training split)
    test_x, test_y = test_set.images, test_set.labels

    def accuracy(candidate: nn.Module) -> dict[str, float]:
        candidate.eval()
        correct = 0
        with torch.no_grad():
            for start in range(0, test_x.shape[0], 256):
                logits = candidate(test_x[start : start + 256])
                correct += int((logits.argmax(dim=1) == test_y[start : start + 256]).sum())
        return {"test_accuracy": 100.0 * correct / max(int(test_y.shape[0]), 1), "test_images": int(test_y.shape[0])}

    return ModelSource(
        name=str(path),
        kind="builtin",
        model=model,
        calibration=list(chosen.split(64)),
        description=f"{cfg.model} trained on {data.name}; calibration: {count} training images",
        include=list(cfg.include) if cfg.include else None,
        keep_first_last=True,
        evaluate=accuracy,
        metadata={"config": meta["config"], "model": cfg.model},
    )


def resolve_source(
    spec: str,
    calibration: str = "builtin",
    *,
    calibration_size: int | None = None,
    eval_size: int = _EVAL_SENTENCES,
    seed: int = 0,
    data: Sequence[str] | None = None,
) -> ModelSource:
    """Load the model named by ``spec`` with its calibration batches and evaluation (see the module docstring).

    Args:
        spec: ``"minilm"``, ``"hf:PATH"`` or a checkpoint of a built-in model.
        calibration: ``"builtin"`` or, for text models, a text file with one sentence per line.
        calibration_size: number of calibration sentences / images (default 256).
        eval_size: held-out sentences for text models (``0``: no evaluation).
        seed: seed of the image sample.
        data: *optional* text files, ``.jsonl`` files or folders (:mod:`nmsparse.recipes.lm.text`) whose training
            documents calibrate a text model and whose held-out documents evaluate it (instead of ``calibration``).

    Raises:
        BackendUnavailableError: ``transformers`` or the MiniLM package is missing.
        InputError / ConfigError: a bad spec, file or calibration choice.
    """
    if calibration_size is not None and (isinstance(calibration_size, bool) or calibration_size < 1):
        raise ConfigError(f"calibration size must be >= 1, got {calibration_size!r}")
    if spec == "minilm":
        model, tokenizer = load_minilm()
        return _text_source(
            "minilm",
            "minilm",
            model,
            tokenizer,
            calibration,
            size=calibration_size,
            eval_size=eval_size,
            include=["encoder.*"],
            keep_first_last=False,
            data=data,
        )
    if spec.startswith("hf:"):
        model, tokenizer = load_hf_model(spec[3:])
        return _text_source(
            spec,
            "hf",
            model,
            tokenizer,
            calibration,
            size=calibration_size,
            eval_size=eval_size,
            include=None,
            keep_first_last=False,
            data=data,
        )
    if data:
        raise ConfigError(
            "--data: image models calibrate on their built-in data set; --data is text for 'minilm' "
            "and 'hf:FOLDER' models"
        )
    return _builtin_source(Path(spec).expanduser(), calibration, size=calibration_size, seed=seed)
