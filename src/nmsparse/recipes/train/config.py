"""``TrainConfig``: every setting of a training run, validated once, with dict and YAML round-trips.

The library reads no files on its own; :func:`load_config` is the one place that parses YAML (for the CLI and
for shipped recipes in ``nmsparse/recipes/configs/``), and it rejects unknown keys with a suggestion.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from nmsparse.errors import ConfigError, InputError, PatternError
from nmsparse.pattern import NMPattern
from nmsparse.solvers import list_methods

__all__ = [
    "TrainConfig",
    "CONFIG_VERSION",
    "UNSTRUCTURED",
    "load_config",
    "list_recipes",
    "recipe_path",
    "config_to_yaml",
]

#: Version written into every saved config; bumped when a key changes meaning.
CONFIG_VERSION = 1

#: Pattern name of unstructured 50% magnitude sparsity (per layer), for comparisons with n:m.
UNSTRUCTURED = "unstructured"

Mode = Literal["dynamic", "static", "dense"]
Schedule = Literal["cosine", "step", "constant"]

_MODES = ("dynamic", "static", "dense")
_SCHEDULES = ("cosine", "step", "constant")
_DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Settings of one training run (a sparse model and, by default, its dense baseline).

    Data:
        data: ``"digits"`` (scikit-learn's 1,797 8x8 handwritten digits, shipped with scikit-learn),
            ``"fake"`` (synthetic learnable images, for smoke tests) or a folder: a CIFAR-10 python-format
            folder (``data_batch_1``..``5``, ``test_batch``), an ImageNet-style folder (``train/`` and ``val/``,
            one sub-folder per class) or a single folder of class sub-folders (split by ``test_fraction``).
        test_fraction: held-out fraction for data without its own test split (stratified, fixed by
            ``split_seed``).
        split_seed: seed of that split; independent of ``seed`` so every run is scored on the same images.
        image_size: side of the images fed to the model (image folders and fake data; ``None``: 224 for
            image folders, 32 for fake data).
        num_classes: number of classes of fake data (other data sets define their own).
        fake_samples: training images of fake data (the test split has a quarter as many).
        augment: random shifts (digits), pad-and-crop plus flips (CIFAR, fake) or random resized crops plus
            flips (image folders) on training images.
        num_workers: DataLoader worker processes.

    Model:
        model: ``"cnn"``, ``"mlp"``, ``"resnet18"``, ``"resnet34"`` or ``"resnet50"`` (see
            :func:`nmsparse.recipes.train.models.list_models`).
        width: base channel count of ``cnn`` / hidden width of ``mlp`` (ignored by the ResNets).

    Sparsity:
        mode: ``"dynamic"`` (masks follow the weights, SR-STE, refreshed every ``refresh_every`` steps),
            ``"static"`` (masks computed once from the ``init`` checkpoint, then fixed) or ``"dense"``.
        pattern: ``"4:8-T"``, ``"2:4"``, ... or ``"unstructured"`` (50% per-layer magnitude masks).
        method: mask method of refreshes (``"greedy"``: the paper's 2-approximation).
        initial_method: mask method of the first (dynamic) or only (static) masks; ``"exact"`` by default.
        refresh_every: steps between mask refreshes (dynamic mode; the paper: 40).
        decay: SR-STE decay on pruned weights (dynamic mode; SR-STE: 2e-4).
        include / exclude: fnmatch globs on module names to prune / keep dense.
        keep_first_last: keep the model's first and last Linear/Conv2d dense (default: on, as in the
            paper's recipes: the input layer is tiny and the classifier's output size rarely fits).
        init: checkpoint (``.safetensors`` or a torch state dict) to start from; required in static mode.

    Optimisation (SGD with momentum):
        epochs, batch_size (global: split over processes under DDP), lr (peak), momentum, nesterov,
        weight_decay, label_smoothing.
        schedule: ``"cosine"`` (linear warm-up for ``warmup_epochs``, then cosine to 0, per step), ``"step"``
            (``lr * gamma ** k`` after the ``k``-th of ``milestones`` epochs, after the warm-up) or
            ``"constant"``.
        steps_per_epoch: *optional* cap on training batches per epoch (smoke tests, quick looks).
        eval_batch_size: batch size of evaluation.

    Run:
        seed: seed of weights, data order and augmentation.
        baseline: also train the same model dense, with the same seed, in the same run.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        threads: CPU threads for torch, applied by the ``nmsparse train`` / ``compare`` commands (the library
            never changes global settings). ``None``: 1 for the small ``cnn`` and ``mlp`` models, whose
            per-operation work is too small to split (a second thread only adds synchronisation, which made
            epochs ~10x slower on a busy 2-core machine), and torch's default for the others.
        sync_bn: under DDP on CUDA, use synchronised batch norm so N processes match one (CPU: ignored,
            torch's SyncBatchNorm needs a GPU).
    """

    data: str = "digits"
    test_fraction: float = 0.4
    split_seed: int = 0
    image_size: int | None = None
    num_classes: int = 10
    fake_samples: int = 512
    augment: bool = True
    num_workers: int = 0

    model: str = "cnn"
    width: int = 32

    mode: Mode = "dynamic"
    pattern: str = "4:8-T"
    method: str = "greedy"
    initial_method: str = "exact"
    refresh_every: int = 40
    decay: float = 2e-4
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] | None = None
    keep_first_last: bool = True
    init: str | None = None

    epochs: int = 40
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    schedule: Schedule = "cosine"
    warmup_epochs: float = 2.0
    milestones: tuple[int, ...] = field(default_factory=tuple)
    gamma: float = 0.1
    steps_per_epoch: int | None = None
    eval_batch_size: int = 256

    seed: int = 0
    baseline: bool = True
    device: str = "auto"
    threads: int | None = None
    sync_bn: bool = True

    def __post_init__(self) -> None:
        # Lists from YAML become tuples, so configs stay hashable and comparable.
        for name in ("include", "exclude", "milestones"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
            elif isinstance(value, str) and name != "milestones":
                object.__setattr__(self, name, (value,))
        _validate(self)

    # ------------------------------------------------------------------------------------------- conversions

    @property
    def sparse(self) -> bool:
        """Whether this run trains with masks (mode other than ``"dense"``)."""
        return self.mode != "dense"

    @property
    def structure(self) -> str:
        """``"dense"`` for dense runs, else the pattern (``"4:8-T"``, ``"unstructured"``, ...)."""
        return "dense" if self.mode == "dense" else self.pattern

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated; unknown keys raise :class:`ConfigError`)."""
        _check_keys(changes, where="TrainConfig.replace")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML/JSON-ready dict with a ``version`` key (tuples become lists)."""
        out: dict[str, Any] = {"version": CONFIG_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, where: str = "config") -> TrainConfig:
        """Build from a dict such as :meth:`to_dict`'s output or a parsed YAML file.

        Raises:
            ConfigError: a key that is not a setting (with the closest match), a bad value, or a newer version.
        """
        if not isinstance(values, Mapping):
            raise ConfigError(f"{where}: expected a mapping of setting -> value, got {type(values).__name__}")
        values = dict(values)
        version = values.pop("version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise ConfigError(
                f"{where}: config version {version!r} is not supported (this nmsparse reads version "
                f"{CONFIG_VERSION}); remove the 'version' key or upgrade nmsparse"
            )
        _check_keys(values, where=where)
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


# ------------------------------------------------------------------------------------------------- validation


def _field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _check_keys(values: Mapping[str, Any], *, where: str) -> None:
    names = _field_names()
    unknown = [key for key in values if key not in names]
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), names, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ConfigError(
        f"{where}: unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(hints)}; valid settings: "
        f"{', '.join(names)}"
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _validate(cfg: TrainConfig) -> None:
    """Check every setting; the first problem raises a :class:`ConfigError` naming it."""

    def bad(name: str, expected: str) -> ConfigError:
        return ConfigError(f"{name} must be {expected}, got {getattr(cfg, name)!r}")

    for name in ("data", "model", "pattern", "method", "initial_method", "device"):
        if not isinstance(getattr(cfg, name), str) or not getattr(cfg, name):
            raise bad(name, "a non-empty string")
    for name in ("augment", "keep_first_last", "nesterov", "baseline", "sync_bn"):
        if not isinstance(getattr(cfg, name), bool):
            raise bad(name, "true or false")
    positive_ints = ("fake_samples", "width", "refresh_every", "epochs", "batch_size", "eval_batch_size",
                     "num_classes")
    for name in positive_ints:
        if not _is_int(getattr(cfg, name)) or getattr(cfg, name) < 1:
            raise bad(name, "an integer >= 1")
    if cfg.num_classes < 2:
        raise bad("num_classes", "an integer >= 2")
    for name in ("num_workers", "seed", "split_seed"):
        if not _is_int(getattr(cfg, name)) or getattr(cfg, name) < 0:
            raise bad(name, "an integer >= 0")
    for name in ("image_size", "steps_per_epoch", "threads"):
        value = getattr(cfg, name)
        if value is not None and (not _is_int(value) or value < 1):
            raise bad(name, "an integer >= 1 or null")
    if cfg.image_size is not None and cfg.image_size < 8:
        raise bad("image_size", "at least 8 pixels")
    if not _is_number(cfg.test_fraction) or not 0.0 < cfg.test_fraction < 1.0:
        raise bad("test_fraction", "a number strictly between 0 and 1 (e.g. 0.4)")
    for name in ("lr", "momentum", "weight_decay", "decay", "label_smoothing", "warmup_epochs", "gamma"):
        if not _is_number(getattr(cfg, name)) or getattr(cfg, name) < 0:
            raise bad(name, "a finite number >= 0")
    if cfg.lr <= 0:
        raise bad("lr", "a number > 0")
    if cfg.momentum >= 1 or cfg.label_smoothing >= 1:
        raise ConfigError(f"momentum and label_smoothing must be < 1, got {cfg.momentum!r} and "
                          f"{cfg.label_smoothing!r}")
    if cfg.nesterov and cfg.momentum == 0:
        raise ConfigError("nesterov: true needs momentum > 0; set nesterov: false or a momentum such as 0.9")
    if cfg.mode not in _MODES:
        raise bad("mode", f"one of {list(_MODES)}")
    if cfg.schedule not in _SCHEDULES:
        raise bad("schedule", f"one of {list(_SCHEDULES)}")
    if cfg.device not in _DEVICES and not cfg.device.startswith("cuda:"):
        raise bad("device", f"one of {list(_DEVICES)} or 'cuda:<index>'")
    if not isinstance(cfg.milestones, tuple) or not all(_is_int(v) and v > 0 for v in cfg.milestones):
        raise bad("milestones", "a list of epochs >= 1 (e.g. [30, 60, 80])")
    if list(cfg.milestones) != sorted(set(cfg.milestones)):
        raise bad("milestones", "strictly increasing")
    if cfg.schedule == "step" and not cfg.milestones:
        raise ConfigError("schedule 'step' needs milestones (e.g. [30, 60, 80]); set them or use 'cosine'")
    for name in ("include", "exclude"):
        value = getattr(cfg, name)
        if value is not None and not (isinstance(value, tuple) and all(isinstance(v, str) for v in value)):
            raise bad(name, "a list of glob strings or null")
    if cfg.init is not None and (not isinstance(cfg.init, str) or not cfg.init):
        raise bad("init", "a checkpoint path or null")
    for name in ("method", "initial_method"):
        if getattr(cfg, name) not in list_methods():
            raise bad(name, f"one of {list_methods()}")
    _validate_pattern(cfg)
    if cfg.mode == "static" and cfg.init is None:
        raise ConfigError(
            "mode 'static' fine-tunes a trained model with fixed masks and needs init: a checkpoint to prune "
            "(e.g. train one dense with --mode dense --out runs/dense, then pass --init runs/dense/model.safetensors)"
        )


def _validate_pattern(cfg: TrainConfig) -> None:
    if cfg.pattern.strip().lower() == UNSTRUCTURED:
        if cfg.pattern != UNSTRUCTURED:
            object.__setattr__(cfg, "pattern", UNSTRUCTURED)
        return
    try:
        pattern = NMPattern.parse(cfg.pattern)
    except PatternError as exc:
        raise ConfigError(f"pattern: {exc}; or use '{UNSTRUCTURED}' (50% per-layer magnitude masks)") from None
    object.__setattr__(cfg, "pattern", str(pattern))
    if not cfg.sparse:
        return
    for name in ("method", "initial_method"):
        if getattr(cfg, name) == "topn" and pattern.transposable:
            raise ConfigError(
                f"{name} 'topn' cannot make transposable masks (pattern {pattern}); use 'exact', 'greedy' or "
                f"'greedy-repair'"
            )


# ----------------------------------------------------------------------------------------------- YAML files


def list_recipes() -> list[str]:
    """Names of the recipes shipped in ``nmsparse/recipes/configs/`` (pass one to ``--config``)."""
    root = resources.files("nmsparse.recipes") / "configs"
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def recipe_path(name: str) -> Path:
    """Path of a shipped recipe by name (``"resnet50_imagenet_4x8t_dynamic"``), or of a YAML file as given.

    Raises:
        InputError: neither an existing file nor a shipped recipe name.
    """
    path = Path(name)
    if path.is_file():
        return path
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    candidate = resources.files("nmsparse.recipes") / "configs" / f"{stem}.yaml"
    if candidate.is_file():
        return Path(str(candidate))
    raise InputError(
        f"config {name!r} is neither a file nor a shipped recipe; shipped recipes: {', '.join(list_recipes())}"
    )


def load_config(source: str | Path | Mapping[str, Any] | None = None, **overrides: Any) -> TrainConfig:
    """Build a :class:`TrainConfig` from a YAML file (or shipped recipe name, or mapping), then ``overrides``.

    Precedence: defaults < file < ``overrides`` (what the CLI's flags become). ``None`` values in
    ``overrides`` mean "not given" and are skipped.

    Raises:
        InputError: missing or unparseable YAML file.
        ConfigError: unknown keys (named, with the closest valid key) or bad values.
    """
    values: dict[str, Any] = {}
    where = "config"
    if isinstance(source, Mapping):
        values = dict(source)
    elif source is not None:
        path = recipe_path(str(source))
        where = str(path)
        import yaml

        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise InputError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"{path}: expected a mapping of setting: value at the top, got {type(loaded).__name__}")
        values = dict(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(values, where=where)


def config_to_yaml(cfg: TrainConfig) -> str:
    """The resolved config as YAML text (what each run saves as ``config.yaml``)."""
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
