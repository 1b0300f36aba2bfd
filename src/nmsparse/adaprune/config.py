"""Config: every AdaPrune setting in one frozen, validated, serialisable :class:`AdaPruneConfig`.

The defaults live here only: :func:`~nmsparse.adaprune_`, the ``nmsparse adaprune`` flags (generated from the
fields by :mod:`nmsparse.cli._flags`) and the run files all read them from this class.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from .._validation import ConfigBase, Interval, Options, PatternString, Predicate, SequenceOf, config_field
from ..errors import ConfigError
from ..pattern import NMPattern
from ..solvers import list_methods

__all__ = ["AdaPruneConfig", "parse_memory", "DEFAULT_MEMORY_BUDGET"]

#: Default bound on the recorded activations and statistics held at once: 1 GiB.
DEFAULT_MEMORY_BUDGET = "1GiB"

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40, "tb": 1000**4, "t": 1000**4}


def parse_memory(value: int | str) -> int:
    """Bytes from an int or a string such as ``"512MiB"``, ``"2GiB"``, ``"1.5GB"``.

    Raises:
        ConfigError: not a positive size.

    Example:
        >>> parse_memory("2GiB"), parse_memory(4096)
        (2147483648, 4096)
    """
    if isinstance(value, bool):
        raise ConfigError(f"memory_budget: expected bytes or a size such as '1GiB', got {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ConfigError(
                f"memory_budget: cannot read {value!r}; write a number of bytes or a size such as '512MiB', "
                f"'2GiB', '1.5GB'"
            )
        number = int(float(match.group(1)) * _UNITS[unit])
    else:
        raise ConfigError(f"memory_budget: expected bytes or a size such as '1GiB', got {type(value).__name__}")
    if number <= 0:
        raise ConfigError(f"memory_budget: must be positive, got {value!r}")
    return number


def _readable_memory(value: object) -> bool:
    try:
        parse_memory(value)  # type: ignore[arg-type]
    except ConfigError:
        return False
    return True


@dataclass(frozen=True, kw_only=True)
class AdaPruneConfig(ConfigBase):
    """Settings of :func:`~nmsparse.adaprune_`.

    Example:
        >>> from nmsparse.adaprune import AdaPruneConfig
        >>> config = AdaPruneConfig(pattern="4:8-T", scores="activation")
        >>> config.optimizer, config.iterations, config.keep_first_last
        ('cg', 50, False)
        >>> AdaPruneConfig.from_dict(config.to_dict()) == config
        True
    """

    pattern: str = config_field(help='the n:m or n:m-T pattern, e.g. "2:4", "4:8-T"', metavar="N:M",
                                group="pattern")
    method: str = config_field("auto", help="mask method of find_mask (auto: top-n for plain, exact for -T)",
                               group="pattern")
    scores: Literal["magnitude", "activation"] = config_field(
        "magnitude", help="mask importance: |w|, or |w| * ||x|| of the input column on the calibration data",
        group="pattern")
    include: tuple[str, ...] | None = config_field(
        None, help="only prune modules whose qualified name matches one of these globs", metavar="GLOB",
        group="layers")
    exclude: tuple[str, ...] | None = config_field(
        None, help="keep modules matching these globs dense", metavar="GLOB", group="layers")
    keep_first_last: bool = config_field(
        False, help="keep the model's first and last Linear/Conv2d dense (the paper's choice)", group="layers")
    optimizer: Literal["cg", "adam"] = config_field(
        "cg", help="per-layer fit with the mask fixed: cg (conjugate gradients on the exact quadratic) or adam "
                   "(the paper)", group="fit")
    iterations: int = config_field(
        50, help="steps per layer: CG iterations (stops early once converged) or Adam steps (the paper: 1000); "
                 "0: masks with absorb-mean only", metavar="N", group="fit")
    damping: float = config_field(
        0.1, help="cg: ridge pull towards the masked start, relative to each input's power (regularises the fit "
                  "to a small calibration set)", metavar="X", group="fit")
    batch_size: int | None = config_field(
        None, help="adam: calibration samples per step (the paper: 50); none: exact full-batch steps",
        metavar="N", group="fit")
    lr: float = config_field(1e-3, help="adam: learning rate of the weights", metavar="X", group="fit")
    bias_lr: float = config_field(1e-2, help="adam: learning rate of the bias", metavar="X", group="fit")
    absorb_mean: bool = config_field(
        True, help="share each group's pruned sum among its kept weights before fitting", group="fit")
    validation: float = config_field(
        0.0, help="share of calibration rows held out to pick the best iterate (0: all rows)", metavar="X",
        group="fit")
    sequential: bool = config_field(
        True, help="record each layer's input with its earlier layers already pruned (no: the paper's parallel "
                   "version, all inputs dense)", group="recording")
    target: Literal["model", "layer"] = config_field(
        "model", help="sequential target: the dense model's output of the layer (keeps a dense copy) or the "
                      "layer's own dense output on its pruned-path input", group="recording")
    memory_budget: str = config_field(
        DEFAULT_MEMORY_BUDGET, help="recorded activations and statistics held at once, e.g. 512MiB, 2GiB",
        metavar="SIZE", group="recording")
    ignore_padding: bool = config_field(
        True, help="leave padding tokens (attention_mask == 0) out of the statistics", group="recording")
    recalibrate_bn: bool = config_field(
        True, help="re-estimate batch-norm statistics on the calibration data afterwards", group="recording")
    seed: int = config_field(0, help="seed of row subsets and mini-batch order", metavar="N",
                             group="recording")

    _constraints = {
        "pattern": [PatternString()],
        "method": [Options(list_methods())],
        "scores": [Options({"magnitude", "activation"})],
        "include": [None, SequenceOf(str)],
        "exclude": [None, SequenceOf(str)],
        "keep_first_last": [bool],
        "optimizer": [Options({"cg", "adam"})],
        "iterations": [Interval(int, 0, None, closed="left")],
        "damping": [Interval(float, 0, None, closed="left")],
        "batch_size": [None, Interval(int, 1, None, closed="left")],
        "lr": [Interval(float, 0, None, closed="left")],
        "bias_lr": [Interval(float, 0, None, closed="left")],
        "absorb_mean": [bool],
        "validation": [Interval(float, 0, 1, closed="left")],
        "sequential": [bool],
        "target": [Options({"model", "layer"})],
        "memory_budget": [Predicate(_readable_memory, "a size such as '512MiB', '2GiB' or a number of bytes")],
        "ignore_padding": [bool],
        "recalibrate_bn": [bool],
        "seed": [Interval(int, 0, None, closed="left")],
    }

    def __post_init__(self) -> None:
        if isinstance(self.memory_budget, int) and not isinstance(self.memory_budget, bool):
            object.__setattr__(self, "memory_budget", str(self.memory_budget))
        for name in ("include", "exclude"):
            if isinstance(getattr(self, name), str):  # a lone string is one glob
                object.__setattr__(self, name, (getattr(self, name),))
        super().__post_init__()
        object.__setattr__(self, "pattern", str(NMPattern.parse(self.pattern)))

    def _check(self) -> None:
        pattern = NMPattern.parse(self.pattern)
        if self.method == "topn" and pattern.transposable:
            raise ConfigError(
                f"AdaPruneConfig: method='topn' does not make transposable masks (pattern {pattern}); use "
                f"'exact', 'greedy' or 'greedy-repair', or the plain pattern '{pattern.n}:{pattern.m}'"
            )

    @property
    def nm_pattern(self) -> NMPattern:
        """The parsed pattern."""
        return NMPattern.parse(self.pattern)

    @property
    def memory_bytes(self) -> int:
        """``memory_budget`` in bytes."""
        return parse_memory(self.memory_budget)
