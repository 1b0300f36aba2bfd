"""``LMTrainConfig``: every setting of a language-model run, frozen and validated, with dict and YAML round-trips.

The command-line flags of ``nmsparse train lm`` / ``nmsparse compare lm`` are generated from these
fields (:mod:`nmsparse.cli._flags`); fields that ``TrainConfig`` shares (``pattern``, ``lr``, ``seed``, ...) have
the same names and types.

Example:
    >>> config = LMTrainConfig(steps=100, d_model=64)
    >>> LMTrainConfig.from_dict(config.to_dict()) == config
    True
    >>> try:
    ...     LMTrainConfig(pattern=124)  # what YAML makes of an unquoted 2:4
    ... except ConfigError as exc:
    ...     print(str(exc)[-25:])
    quote it, pattern: '2:4')
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from nmsparse.config import ConfigBase, Interval, Options, PatternString, Predicate, SequenceOf, config_field
from nmsparse.errors import ConfigError, InputError
from nmsparse.solvers import list_methods

from .._common import DENSE, UNSTRUCTURED, read_config_file
from .corpus import SOURCES
from .model import SPARSE_LAYERS, GPTConfig

__all__ = ["LMTrainConfig", "DENSE", "UNSTRUCTURED", "load_lm_config", "lm_config_to_yaml", "lm_recipe_path"]

_DATA, _MODEL, _SPARSITY, _OPTIM, _RUN = "data", "model", "sparsity", "optimisation", "run"


#: Values of ``mode``.
MODES = ("dynamic", "static", "dense")


def _is_hf_spec(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("hf:") and len(value) > 3


def _is_device(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    return value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit())


@dataclass(frozen=True, kw_only=True)
class LMTrainConfig(ConfigBase):
    """Settings of one language-model run: a sparse decoder and, by default, the same decoder dense.

    The defaults train a 4-layer, 128-wide byte-level decoder (0.86 M parameters, 0.79 M of them in the block
    linears) for 400 steps of 16 sequences x 64 bytes on the embedded Python documentation, with dynamic 4:8-T
    masks on every block linear. Small batches and many steps: at this budget the loss is limited by optimizer
    steps more than by tokens.
    """

    # data
    sources: tuple[str, ...] = config_field(
        SOURCES, group=_DATA, metavar="SOURCE", help="embedded text: 'topics' (pydoc topics), 'docstrings' (stdlib)"
    )
    heldout_permille: int = config_field(
        100, group=_DATA, help="per mille of documents held out (fixed by document name hash)"
    )
    data: tuple[str, ...] | None = config_field(
        None,
        group=_DATA,
        metavar="PATH",
        help='text files, .jsonl files with a "text" field, or folders of them, instead of the embedded sources',
    )
    # model
    model: str | None = config_field(
        None,
        group=_MODEL,
        metavar="hf:FOLDER",
        help="'hf:FOLDER': fine-tune that transformers causal LM (dense, or pruned by "
        "nmsparse oneshot) instead of training the recipe's decoder",
    )
    d_model: int = config_field(128, group=_MODEL, help="width of the residual stream")
    n_layer: int = config_field(4, group=_MODEL, help="decoder blocks")
    n_head: int = config_field(4, group=_MODEL, help="attention heads")
    context: int = config_field(64, group=_MODEL, help="tokens (bytes) per training sequence")
    mlp_ratio: int = config_field(4, group=_MODEL, help="MLP width / d_model")
    dropout: float = config_field(0.0, group=_MODEL, help="dropout")
    tie_embeddings: bool = config_field(False, group=_MODEL, help="share the head's weight with the embedding")
    # sparsity
    mode: Literal["dynamic", "static", "dense"] = config_field(
        "dynamic",
        group=_SPARSITY,
        help="dynamic: masks follow the weights (SR-STE); static: masks fixed (chosen once from the --model "
        "folder's weights, or the masks that folder carries); dense: no masks",
    )
    pattern: str = config_field(
        "4:8-T", group=_SPARSITY, help="'4:8-T', '2:4', '2:4-T', ..., 'unstructured' (50%%) or 'dense'"
    )
    method: str = config_field("exact", group=_SPARSITY, help="mask method of refreshes")
    initial_method: str = config_field("exact", group=_SPARSITY, help="mask method of the initial masks")
    refresh_every: int = config_field(100, group=_SPARSITY, help="steps between mask refreshes")
    decay: float = config_field(2e-3, group=_SPARSITY, help="SR-STE decay of pruned weights")
    include: tuple[str, ...] | None = config_field(
        None, group=_SPARSITY, metavar="GLOB", help=f"layers to sparsify (default: {SPARSE_LAYERS[0]})"
    )
    exclude: tuple[str, ...] | None = config_field(None, group=_SPARSITY, metavar="GLOB", help="layers to keep dense")
    keep_first_last: bool = config_field(
        False,
        group=_SPARSITY,
        help="keep the model's first and last Linear dense (block 0's c_attn; the last, the head, is dense anyway)",
    )
    # optimisation
    steps: int = config_field(400, group=_OPTIM, help="optimizer steps")
    batch_size: int = config_field(16, group=_OPTIM, help="sequences per step")
    lr: float = config_field(3e-3, group=_OPTIM, help="peak learning rate (AdamW)")
    min_lr_ratio: float = config_field(0.1, group=_OPTIM, help="final learning rate / peak (cosine decay)")
    warmup_steps: int = config_field(20, group=_OPTIM, help="linear warm-up steps")
    weight_decay: float = config_field(0.1, group=_OPTIM, help="AdamW weight decay of matrices")
    beta1: float = config_field(0.9, group=_OPTIM, help="AdamW beta1")
    beta2: float = config_field(0.95, group=_OPTIM, help="AdamW beta2")
    grad_clip: float | None = config_field(1.0, group=_OPTIM, help="gradient norm clip (none: off)")
    eval_every: int = config_field(100, group=_OPTIM, help="steps between evaluations and checkpoints")
    eval_tokens: int | None = config_field(
        16384, group=_OPTIM, help="held-out tokens of intermediate evaluations (none: all); the final one uses all"
    )
    eval_batch_size: int = config_field(32, group=_OPTIM, help="windows per evaluation batch")
    # run
    seed: int = config_field(0, group=_RUN, help="seed of weights and batches")
    baseline: bool = config_field(True, group=_RUN, help="also train the model dense with the same seed")
    device: str = config_field("auto", group=_RUN, help="auto, cpu, cuda or cuda:N")
    threads: int | None = config_field(None, group=_RUN, help="torch threads on the CPU (none: min(2, cores))")
    accelerate: bool = config_field(
        False,
        group=_RUN,
        help="swap pruned Linear layers for SparseLinear where 2:4-T sparse tensor "
        "cores are measurably faster (nmsparse.accelerate_; reported per layer)",
    )

    _constraints = {
        "sources": [SequenceOf(Options(SOURCES), min_len=1)],
        "data": [SequenceOf(str, min_len=1), None],
        "model": [Predicate(_is_hf_spec, "'hf:FOLDER' (a transformers causal-LM folder)"), None],
        "mode": [Options(MODES)],
        "heldout_permille": [Interval(int, 1, 999)],
        "d_model": [Interval(int, 1, None)],
        "n_layer": [Interval(int, 1, None)],
        "n_head": [Interval(int, 1, None)],
        "context": [Interval(int, 2, None)],
        "mlp_ratio": [Interval(int, 1, None)],
        "dropout": [Interval(float, 0, 1, closed="left")],
        "tie_embeddings": [bool],
        "pattern": [PatternString(extra=(DENSE, UNSTRUCTURED))],
        "method": [Options(list_methods())],
        "initial_method": [Options(list_methods())],
        "refresh_every": [Interval(int, 1, None)],
        "decay": [Interval(float, 0, None)],
        "include": [SequenceOf(str, min_len=1), None],
        "exclude": [SequenceOf(str), None],
        "keep_first_last": [bool],
        "steps": [Interval(int, 1, None)],
        "batch_size": [Interval(int, 1, None)],
        "lr": [Interval(float, 0, None, closed="neither")],
        "min_lr_ratio": [Interval(float, 0, 1)],
        "warmup_steps": [Interval(int, 0, None)],
        "weight_decay": [Interval(float, 0, None)],
        "beta1": [Interval(float, 0, 1, closed="left")],
        "beta2": [Interval(float, 0, 1, closed="left")],
        "grad_clip": [Interval(float, 0, None, closed="neither"), None],
        "eval_every": [Interval(int, 1, None)],
        "eval_tokens": [Interval(int, 1, None), None],
        "eval_batch_size": [Interval(int, 1, None)],
        "seed": [Interval(int, 0, None)],
        "baseline": [bool],
        "device": [Predicate(_is_device, "'auto', 'cpu', 'cuda' or 'cuda:N'")],
        "threads": [Interval(int, 1, None), None],
        "accelerate": [bool],
    }

    def __post_init__(self) -> None:
        if isinstance(self.data, (str, os.PathLike)):  # one path (the command line, a YAML scalar) is a list of one
            object.__setattr__(self, "data", (os.fspath(self.data),))
        super().__post_init__()

    def _check(self) -> None:
        if self.mode == "static" and self.model is None:
            raise ConfigError(
                "LMTrainConfig: mode 'static' fine-tunes a trained model with fixed masks and needs "
                "model: 'hf:FOLDER' (e.g. the hf/ folder of a dense run, or a folder pruned by "
                "nmsparse oneshot)"
            )
        if self.d_model % self.n_head:
            raise ConfigError(f"LMTrainConfig: d_model ({self.d_model}) must be a multiple of n_head ({self.n_head})")
        if self.warmup_steps >= self.steps:
            raise ConfigError(f"LMTrainConfig: warmup_steps ({self.warmup_steps}) must be below steps ({self.steps})")
        if len(set(self.sources)) != len(self.sources):
            raise ConfigError(f"LMTrainConfig: sources repeat: {list(self.sources)}")

    @property
    def structure(self) -> str:
        """The pattern in canonical form (``"4:8-T"``), or ``"dense"`` (also with ``mode: dense``) /
        ``"unstructured"``."""
        if self.mode == DENSE:
            return DENSE
        if self.pattern in (DENSE, UNSTRUCTURED):
            return self.pattern
        from nmsparse.pattern import NMPattern

        return str(NMPattern.parse(self.pattern))

    def gpt_config(self, vocab_size: int) -> GPTConfig:
        """The decoder's sizes."""
        return GPTConfig(
            vocab_size=vocab_size,
            context=self.context,
            d_model=self.d_model,
            n_layer=self.n_layer,
            n_head=self.n_head,
            mlp_ratio=self.mlp_ratio,
            dropout=self.dropout,
            tie_embeddings=self.tie_embeddings,
        )

    def torch_threads(self) -> int:
        """``threads`` or the default ``min(2, cores)``."""
        return self.threads if self.threads is not None else max(1, min(2, os.cpu_count() or 1))


def lm_config_to_yaml(config: LMTrainConfig) -> str:
    """YAML text of ``config`` (patterns quoted, so ``2:4`` is not read back as the base-60 integer 124)."""
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=None)


def lm_recipe_path(name: str) -> Path:
    """Path of a shipped recipe (``"lm_default"`` -> ``nmsparse/recipes/configs/lm_default.yaml``).

    Raises:
        InputError: no such recipe.
    """
    path = Path(__file__).resolve().parent.parent / "configs" / f"{name.removesuffix('.yaml')}.yaml"
    if not path.is_file():
        shipped = sorted(p.stem for p in path.parent.glob("lm_*.yaml"))
        raise InputError(f"no shipped LM recipe {name!r}; shipped: {shipped}")
    return path


def load_lm_config(source: str | os.PathLike[str], **overrides: Any) -> LMTrainConfig:
    """Read an :class:`LMTrainConfig` from a YAML file or shipped recipe name, then ``overrides``.

    Unknown keys are refused with the closest valid name.

    Raises:
        InputError: missing or unparseable YAML file.
        ConfigError: the top level is not a mapping; unknown keys or bad values.

    Example:
        >>> load_lm_config("lm_decoder_4x8t_dynamic", steps=1000).steps
        1000
    """
    values, where = read_config_file(os.fspath(source))
    values.update(overrides)
    return LMTrainConfig.from_dict(values, where=where)
