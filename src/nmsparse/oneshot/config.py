"""Settings of :func:`nmsparse.prune_oneshot_`: one config for every layer method, memory in bytes.

The per-layer *algorithm* (``algorithm="sparsegpt"``, ``"wanda"``, ...) is named apart from the *mask solver*
(``method="auto"``, ``"exact"``, ... of :func:`nmsparse.find_mask`); each algorithm's own settings live in
``options``, checked against the option table it registered (:mod:`nmsparse.oneshot.methods`).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import ConfigBase, Interval, Options, Predicate, SequenceOf, config_field
from ..errors import ConfigError
from ..pattern import NMPattern
from ..solvers import list_methods
from .methods import PERMUTE_SCORES, get_method

__all__ = ["OneShotConfig", "parse_memory", "DEFAULT_MEMORY_BUDGET", "solver_for", "permute_scores_for"]

#: Default bound on what one-shot calibration holds at once (activations, statistics, one solve).
DEFAULT_MEMORY_BUDGET = "4GiB"

_UNITS = {"": 1, "b": 1} | {
    f"{prefix}{suffix}": (1 << 10 * power if suffix == "ib" else 1000**power)
    for power, prefix in enumerate("kmgt", 1)
    for suffix in ("", "b", "ib")
}

#: Old settings, accepted for one release with a DeprecationWarning: name -> (what replaces it, and the
#: algorithm and option it maps onto).
_DEPRECATED = {
    "max_memory_mb": ("memory_budget (bytes, or a size such as '4GiB')", "", ""),
    "damping": ("options={'damping': ...}", "sparsegpt", "damping"),
    "block_size": ("options={'block_size': ...}", "sparsegpt", "block_size"),
    "adaprune_iterations": ("options={'iterations': ...} with algorithm='adaprune'", "adaprune", "iterations"),
}


def parse_memory(value: int | float | str) -> int:
    """Bytes from an int or a string such as ``"512MiB"``, ``"2GiB"``, ``"1.5GB"``.

    Raises:
        ConfigError: not a positive size.

    Example:
        >>> parse_memory("2GiB"), parse_memory(4096)
        (2147483648, 4096)
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"memory_budget: expected bytes or a size such as '1GiB', got {value!r}")
    number = value
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ConfigError(
                f"memory_budget: cannot read {value!r}; write a number of bytes or a size such as "
                f"'512MiB', '2GiB', '1.5GB'"
            )
        number = float(match.group(1)) * _UNITS[unit]
    if int(number) <= 0:
        raise ConfigError(f"memory_budget: must be positive, got {value!r}")
    return int(number)


#: The constraint of ``memory_budget`` (also :class:`~nmsparse.adaprune.AdaPruneConfig`'s).
MEMORY_CONSTRAINT = Predicate(
    lambda value: parse_memory(value) > 0, "a size such as '512MiB', '4GiB' or a number of bytes"
)


def normalise_fields(config: Any) -> None:
    """In a frozen config's ``__post_init__``: a memory size in bytes becomes a string, a lone glob a tuple."""
    if isinstance(config.memory_budget, int) and not isinstance(config.memory_budget, bool):
        object.__setattr__(config, "memory_budget", str(config.memory_budget))
    for name in ("include", "exclude"):
        if isinstance(getattr(config, name), str):  # a lone string is one glob
            object.__setattr__(config, name, (getattr(config, name),))


def solver_for(pattern: NMPattern, method: str, where: str) -> str:
    """The mask solver ``method`` resolves to for ``pattern`` (``"auto"``: top-n, or exact for ``-T``)."""
    solver = method if method != "auto" else ("exact" if pattern.transposable else "topn")
    if solver == "topn" and pattern.transposable:
        raise ConfigError(
            f"{where}: method='topn' does not make transposable masks (pattern {pattern}); use "
            f"'exact', 'greedy' or 'greedy-repair', or the plain pattern '{pattern.n}:{pattern.m}'"
        )
    return solver


def permute_scores_for(config: Any, algorithm: str) -> str:
    """The ``scores`` of :func:`nmsparse.permute_` for a config's ``permute_scores`` and ``algorithm``: the given
    name, else the saliency the algorithm registered (magnitude -> ``"magnitude"``, wanda -> ``"wanda"``,
    sparsegpt -> ``"sparsegpt"``, adaprune -> ``"wanda"``; ``"magnitude"`` unless ``register_method`` said)."""
    return str(config.permute_scores or get_method(algorithm).permute_scores)


def check_permute(config: Any, where: str) -> None:
    """``permute_scores`` and ``permute_residual`` only with ``permute=True`` (they would do nothing)."""
    given = [
        f"{name}={getattr(config, name)!r}" for name in ("permute_scores", "permute_residual") if getattr(config, name)
    ]
    if given and not config.permute:
        raise ConfigError(f"{where}: {', '.join(given)} needs permute=True (--permute); nothing would be permuted")


@dataclass(frozen=True, kw_only=True)
class OneShotConfig(ConfigBase):
    """Settings of :func:`nmsparse.prune_oneshot_` (the pattern is an argument of the verb).

    Example:
        >>> from nmsparse.oneshot import OneShotConfig
        >>> config = OneShotConfig(algorithm="sparsegpt", options={"damping": 0.05}, memory_budget="2GiB")
        >>> config.memory_bytes, config.method_options().damping
        (2147483648, 0.05)
        >>> OneShotConfig(options={"block_size": 0})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        nmsparse.errors.ConfigError: OneShotConfig.options (...): SparseGPTOptions: block_size must be an int in [1, ...
    """

    algorithm: str = config_field(
        "sparsegpt",
        help="per-layer algorithm: magnitude, wanda, sparsegpt, adaprune, or any registered with register_method",
    )
    method: str = config_field("auto", help="mask solver of find_mask (auto: top-n for plain, exact for -T)")
    options: Mapping[str, Any] | None = config_field(None, help="the algorithm's own settings", flag=False)
    include: tuple[str, ...] | None = config_field(None, help="only prune modules matching these globs", metavar="GLOB")
    exclude: tuple[str, ...] | None = config_field(None, help="keep modules matching these globs dense", metavar="GLOB")
    keep_first_last: bool = config_field(False, help="keep the model's first and last prunable layers dense")
    sequential: bool = config_field(
        True,
        help="calibrate on the outputs of the already pruned layers (no: every "
        "layer sees the dense model's activations)",
    )
    memory_budget: str = config_field(
        DEFAULT_MEMORY_BUDGET,
        help="working memory held at once (activations, statistics, one solve), e.g. 512MiB, 4GiB",
        metavar="SIZE",
    )
    prune_outside_blocks: bool = config_field(
        False,
        help="also prune the layers outside the model's repeated "
        "blocks (last, on the whole model); no: embeddings and head stay dense",
    )
    dtype: str = config_field("float32", help="dtype of Gram statistics and solves")
    ignore_padding: bool = config_field(True, help="leave padding tokens (attention_mask == 0) out of the statistics")
    recalibrate_bn: bool = config_field(True, help="re-estimate batch-norm statistics on the calibration data")
    permute: bool = config_field(
        False,
        help="permute the model's free channels first (nmsparse.permute_: same function, masks keep more); "
        "the permutation is baked into the weights",
    )
    permute_scores: str | None = config_field(
        None,
        help="saliency the permutation search uses: magnitude, wanda or sparsegpt (none: the algorithm's own; "
        "adaprune: wanda)",
        metavar="NAME",
    )
    permute_residual: bool = config_field(
        False, help="with --permute: also permute the residual stream (GPT-2 and LLaMA causal LMs)"
    )
    max_memory_mb: float | None = config_field(None, help="deprecated: use --memory-budget", metavar="MIB")
    damping: float | None = config_field(None, help="deprecated: use options", flag=False)
    block_size: int | None = config_field(None, help="deprecated: use options", flag=False)
    adaprune_iterations: int | None = config_field(None, help="deprecated: use options", flag=False)

    _constraints = {
        "algorithm": [str],
        "method": [Options(list_methods())],  # ("auto" included)
        "options": [Mapping, None],
        "include": [SequenceOf(str), None],
        "exclude": [SequenceOf(str), None],
        "memory_budget": [MEMORY_CONSTRAINT],
        "dtype": [Options({"float32", "float64"})],
        "permute_scores": [Options(set(PERMUTE_SCORES)), None],
        **dict.fromkeys(("keep_first_last", "sequential", "prune_outside_blocks", "ignore_padding"), [bool]),
        **dict.fromkeys(("recalibrate_bn", "permute", "permute_residual"), [bool]),
        "max_memory_mb": [Interval(float, 0, None, closed="neither"), None],
        "damping": [Interval(float, 0, None, closed="left"), None],
        "block_size": [Interval(int, 1, None, closed="left"), None],
        "adaprune_iterations": [Interval(int, 0, None, closed="left"), None],
    }

    def __post_init__(self) -> None:
        normalise_fields(self)
        if self.options is not None:
            object.__setattr__(self, "options", dict(self.options))
        for name, (instead, _, _) in _DEPRECATED.items():
            if getattr(self, name) is not None:
                warnings.warn(
                    f"OneShotConfig({name}=...) is deprecated and will be removed in the next release; use {instead}",
                    DeprecationWarning,
                    stacklevel=3,
                )
        super().__post_init__()

    def _check(self) -> None:
        self.method_options()  # (checks the algorithm first)
        check_permute(self, "OneShotConfig")

    def _values(self) -> dict[str, Any]:
        return {k: v for k, v in super()._values().items() if not (k in _DEPRECATED and v is None)}

    @property
    def memory_bytes(self) -> int:
        """The budget in bytes (``max_memory_mb``, when given, wins for one release)."""
        if self.max_memory_mb is not None:
            return int(self.max_memory_mb * (1 << 20))
        return parse_memory(self.memory_budget)

    def method_options(self, algorithm: str | None = None) -> Any:
        """The algorithm's options object, validated by its option table (deprecated flat settings folded in)."""
        name = algorithm or self.algorithm
        spec = get_method(name, where="OneShotConfig")
        values = {option: getattr(self, old) for old, (_, owner, option) in _DEPRECATED.items() if owner == name}
        values = {option: value for option, value in values.items() if value is not None} | dict(self.options or {})
        return spec.options.from_dict(values, where=f"OneShotConfig.options (algorithm {name!r})")
