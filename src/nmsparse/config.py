"""Configs and their constraints: the one validation mechanism of every nmsparse config, public.

Every config of nmsparse (:class:`~nmsparse.OneShotConfig`, :class:`~nmsparse.AdaPruneConfig`, the recipes'
``TrainConfig`` / ``LMConfig``) is a frozen dataclass built on :class:`ConfigBase`; write your own the same way
(a config for a method you register, or for your own script) and it gets the same checks, the same error
messages, ``to_dict`` / ``from_dict`` with a ``version`` key, and command-line flags through ``nmsparse.cli``.

Modelled on scikit-learn's ``sklearn.utils._param_validation``: each parameter maps to a *list* of constraints
and a value is valid when it satisfies at least one of them. ``None`` in the list admits ``None``; a plain
type (``int``, ``str``, ``bool``) admits instances of it (``bool`` is never taken for an ``int`` or a float).

Constraints:
    :class:`Interval` (``Interval(int, 1, None, closed="left")``: an int >= 1), :class:`Options`
    (``Options({"cosine", "step"})``), :class:`InstanceOf`, :class:`SequenceOf` (tuples/lists whose items
    satisfy a constraint), :class:`PatternString` (an ``n:m`` / ``n:m-T`` string, with a hint for YAML's
    base-60 integers such as ``2:4`` -> 124) and :class:`Predicate` (any check with a description); subclass
    :class:`Constraint` for more.

Configs:
    :class:`ConfigBase` is a mixin for ``@dataclass(frozen=True, kw_only=True)`` config classes: it checks the
    class's ``_constraints`` table in ``__post_init__`` (then the ``_check`` hook for rules between fields),
    turns lists into tuples (configs stay hashable), and gives ``to_dict``/``from_dict`` with a ``version`` key
    and unknown keys rejected with the closest valid name. :func:`config_field` declares a field with the help
    text that ``nmsparse.cli`` turns into a command-line flag. :func:`validate_params` checks plain arguments
    against a table the same way.

Example:
    A small config: two checked settings and one rule between them.

    >>> from dataclasses import dataclass
    >>> from nmsparse.config import ConfigBase, Interval, Options, PatternString, config_field
    >>> from nmsparse.errors import ConfigError
    >>> @dataclass(frozen=True, kw_only=True)
    ... class Schedule(ConfigBase):
    ...     pattern: str = config_field("2:4", help="n:m pattern")
    ...     steps: int = config_field(100, help="optimizer steps")
    ...     warmup: int = config_field(0, help="dense steps before pruning")
    ...     mode: str = config_field("fixed", help="how masks move")
    ...     _constraints = {"pattern": [PatternString()], "steps": [Interval(int, 1, None, closed="left")],
    ...                     "warmup": [Interval(int, 0, None)], "mode": [Options({"fixed", "dynamic"})]}
    ...
    ...     def _check(self) -> None:
    ...         if self.warmup >= self.steps:
    ...             raise ConfigError(f"Schedule: warmup ({self.warmup}) must be below steps ({self.steps})")
    >>> Schedule(pattern="4:8-T", steps=50).to_dict()
    {'version': 1, 'pattern': '4:8-T', 'steps': 50, 'warmup': 0, 'mode': 'fixed'}
    >>> Schedule(steps=0)
    Traceback (most recent call last):
    ...
    nmsparse.errors.ConfigError: Schedule: steps must be an int in [1, inf); got 0
    >>> Schedule(mode="dynamc")
    Traceback (most recent call last):
    ...
    nmsparse.errors.ConfigError: Schedule: mode must be one of 'dynamic', 'fixed'; got 'dynamc'
    (did you mean 'dynamic'?)
    >>> Schedule.from_dict({"steps": 10, "warmup": 10})
    Traceback (most recent call last):
    ...
    nmsparse.errors.ConfigError: Schedule: warmup (10) must be below steps (10)
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Literal, TypeVar

from nmsparse.errors import ConfigError

__all__ = [
    "Constraint",
    "Interval",
    "Options",
    "InstanceOf",
    "SequenceOf",
    "PatternString",
    "Predicate",
    "validate_params",
    "describe_constraints",
    "ConfigBase",
    "config_field",
]

_C = TypeVar("_C", bound="ConfigBase")


class Constraint:
    """A condition on one parameter value; ``str(constraint)`` says what it admits, in words."""

    def is_satisfied_by(self, value: Any) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def hint(self, value: Any) -> str | None:
        """An extra fix-it sentence for a value that fails every constraint (``None``: nothing to add)."""
        return None


def _is_instance(value: Any, kind: type) -> bool:
    """``isinstance`` where ``bool`` is not an int/number and an integral float is not an int."""
    if isinstance(value, bool) and kind is not bool:
        return False
    if kind is float or kind is numbers.Real:
        return isinstance(value, numbers.Real)
    if kind is int or kind is numbers.Integral:
        return isinstance(value, numbers.Integral)
    return isinstance(value, kind)


def _type_name(kind: type) -> str:
    names: dict[type, str] = {numbers.Real: "float", numbers.Integral: "int"}
    return names.get(kind, kind.__name__)


class InstanceOf(Constraint):
    """Instances of ``kind`` (``bool`` never passes as ``int`` or ``float``).

    Example:
        >>> InstanceOf(str).is_satisfied_by("x"), InstanceOf(int).is_satisfied_by(True)
        (True, False)
    """

    def __init__(self, kind: type) -> None:
        self.kind = kind

    def is_satisfied_by(self, value: Any) -> bool:
        return _is_instance(value, self.kind)

    def __str__(self) -> str:
        if self.kind is bool:
            return "true or false"
        name = _type_name(self.kind)
        return f"an {name}" if name[0] in "aeiou" else f"a {name}"


class Interval(Constraint):
    """Numbers of ``kind`` (``int`` or ``float``; floats admit ints) between ``low`` and ``high``.

    Args:
        kind: ``int`` or ``float`` (``numbers.Integral`` / ``numbers.Real`` work too).
        low, high: bounds; ``None`` is unbounded.
        closed: which bounds belong to the interval: ``"both"``, ``"left"``, ``"right"`` or ``"neither"``.

    Non-finite floats (NaN, inf) are never inside.

    Example:
        >>> Interval(float, 0, 1, closed="neither").is_satisfied_by(0.5), str(Interval(int, 1, None, closed="left"))
        (True, 'an int in [1, inf)')
    """

    def __init__(
        self,
        kind: type,
        low: float | None,
        high: float | None,
        *,
        closed: Literal["both", "left", "right", "neither"] = "both",
    ) -> None:
        if closed not in ("both", "left", "right", "neither"):
            raise ValueError(f"closed must be 'both', 'left', 'right' or 'neither', got {closed!r}")
        if low is not None and high is not None and low > high:
            raise ValueError(f"Interval: low {low} is above high {high}")
        self.kind, self.low, self.high, self.closed = kind, low, high, closed

    def is_satisfied_by(self, value: Any) -> bool:
        if not _is_instance(value, self.kind):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None:
            if value < self.low or (value == self.low and self.closed in ("right", "neither")):
                return False
        if self.high is not None:
            if value > self.high or (value == self.high and self.closed in ("left", "neither")):
                return False
        return True

    def __str__(self) -> str:
        left = "[" if self.closed in ("both", "left") and self.low is not None else "("
        right = "]" if self.closed in ("both", "right") and self.high is not None else ")"
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        name = _type_name(self.kind)
        article = "an" if name[0] in "aeiou" else "a"
        return f"{article} {name} in {left}{low}, {high}{right}"


class Options(Constraint):
    """One of a fixed set of values (``choices`` of the generated CLI flag).

    Example:
        >>> str(Options({"step", "cosine"}))
        "one of 'cosine', 'step'"
    """

    def __init__(self, options: Iterable[Any]) -> None:
        self.options = tuple(sorted(set(options), key=repr))

    def is_satisfied_by(self, value: Any) -> bool:
        try:
            return any(o == value and isinstance(o, bool) == isinstance(value, bool) for o in self.options)
        except TypeError:  # a value that cannot be compared
            return False

    def hint(self, value: Any) -> str | None:
        if isinstance(value, str):
            close = difflib.get_close_matches(value, [str(o) for o in self.options], n=1)
            if close:
                return f"did you mean {close[0]!r}?"
        return None

    def __str__(self) -> str:
        return "one of " + ", ".join(repr(o) for o in self.options)


class SequenceOf(Constraint):
    """A tuple or list whose items all satisfy ``item`` (a constraint or a type).

    Args:
        item: the items' constraint.
        increasing: items must be strictly increasing.
        min_len: fewest items.

    Example:
        >>> SequenceOf(Interval(int, 1, None)).is_satisfied_by((30, 60)), str(SequenceOf(str))
        (True, 'a list of a str')
    """

    def __init__(self, item: Constraint | type, *, increasing: bool = False, min_len: int = 0) -> None:
        self.item = item if isinstance(item, Constraint) else InstanceOf(item)
        self.increasing, self.min_len = increasing, min_len

    def is_satisfied_by(self, value: Any) -> bool:
        if not isinstance(value, (tuple, list)) or len(value) < self.min_len:
            return False
        if not all(self.item.is_satisfied_by(v) for v in value):
            return False
        return not self.increasing or all(a < b for a, b in zip(value, value[1:]))

    def __str__(self) -> str:
        extra = ", strictly increasing" if self.increasing else ""
        extra += f", at least {self.min_len} item(s)" if self.min_len else ""
        return f"a list of {self.item}{extra}"


class PatternString(Constraint):
    """An ``n:m`` / ``n:m-T`` pattern string (as :meth:`nmsparse.NMPattern.parse` reads it) or one of ``extra``.

    An integer gets a hint: YAML 1.1 reads an unquoted ``2:4`` as the base-60 number 124.

    Example:
        >>> PatternString().is_satisfied_by("4:8-T"), PatternString().hint(124)
        (True, "YAML reads an unquoted 2:4 as the base-60 integer 124: quote it, pattern: '2:4'")
    """

    def __init__(self, extra: Iterable[str] = (), *, name: str = "pattern") -> None:
        self.extra = tuple(extra)
        self.name = name

    def is_satisfied_by(self, value: Any) -> bool:
        if not isinstance(value, str):
            return False
        if value in self.extra:
            return True
        from nmsparse.errors import PatternError
        from nmsparse.pattern import NMPattern

        try:
            NMPattern.parse(value)
        except PatternError:
            return False
        return True

    def hint(self, value: Any) -> str | None:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 60:
            text = f"{value // 60}:{value % 60}"
            return f"YAML reads an unquoted {text} as the base-60 integer {value}: quote it, {self.name}: '{text}'"
        if isinstance(value, str):
            from nmsparse.errors import PatternError
            from nmsparse.pattern import NMPattern

            try:
                NMPattern.parse(value)
            except PatternError as exc:
                return str(exc)
        return None

    def __str__(self) -> str:
        extra = "".join(f" or {e!r}" for e in self.extra)
        return f"an n:m pattern string such as '2:4' or '4:8-T'{extra}"


class Predicate(Constraint):
    """Values for which ``check(value)`` is true; ``description`` says which in words.

    Example:
        >>> even = Predicate(lambda v: isinstance(v, int) and v % 2 == 0, "an even int")
        >>> even.is_satisfied_by(4), str(even)
        (True, 'an even int')
    """

    def __init__(self, check: Callable[[Any], bool], description: str) -> None:
        self.check, self.description = check, description

    def is_satisfied_by(self, value: Any) -> bool:
        try:
            return bool(self.check(value))
        except (TypeError, ValueError):
            return False

    def __str__(self) -> str:
        return self.description


def _as_constraint(spec: Any) -> Constraint | None:
    if spec is None:
        return None
    if isinstance(spec, Constraint):
        return spec
    if isinstance(spec, type):
        return InstanceOf(spec)
    raise TypeError(f"unsupported constraint {spec!r}: use a Constraint, a type or None")


def describe_constraints(constraints: Sequence[Any]) -> str:
    """The allowed values of a constraint list in words (``"an int in [1, inf) or None"``)."""
    parts = [str(c) for c in (_as_constraint(s) for s in constraints) if c is not None]
    if any(s is None for s in constraints):
        parts.append("None (null)")
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " or " + parts[-1]


def validate_params(owner: str, values: Mapping[str, Any], constraints: Mapping[str, Sequence[Any]]) -> None:
    """Check each ``values[name]`` against ``constraints[name]`` (a list: any one satisfied is enough).

    Parameters without an entry in ``constraints`` are not checked; ``"no_validation"`` as the entry skips one.

    Raises:
        ConfigError: naming ``owner``, the parameter, what is allowed and what was received, plus a hint
            where one helps (closest option, quoting a YAML pattern).

    Example:
        >>> validate_params("f", {"n": 3}, {"n": [Interval(int, 1, 8)]})
        >>> validate_params("f", {"n": 9}, {"n": [Interval(int, 1, 8)]})
        Traceback (most recent call last):
        ...
        nmsparse.errors.ConfigError: f: n must be an int in [1, 8]; got 9
    """
    for name, value in values.items():
        specs = constraints.get(name)
        if specs is None or specs == "no_validation":
            continue
        if isinstance(specs, (Constraint, type)):
            specs = [specs]
        if value is None and any(s is None for s in specs):
            continue
        checks = [c for c in (_as_constraint(s) for s in specs) if c is not None]
        if any(c.is_satisfied_by(value) for c in checks):
            continue
        hints = [h for h in (c.hint(value) for c in checks) if h]
        message = f"{owner}: {name} must be {describe_constraints(specs)}; got {value!r}"
        if hints:
            message += f" ({hints[0]})"
        raise ConfigError(message)


def config_field(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    default_factory: Any = dataclasses.MISSING,
    flag: bool = True,
    metavar: str | None = None,
    group: str | None = None,
) -> Any:
    """A dataclass field with the metadata the generated CLI flags use.

    Args:
        default / default_factory: as for :func:`dataclasses.field`.
        help: one-line help text of the flag (and documentation of the setting).
        flag: ``False`` keeps the setting out of the command line (config files only).
        metavar: name of the value in ``--help``.
        group: heading the flag is listed under in ``--help``.
    """
    metadata = {"help": help, "flag": flag, "metavar": metavar, "group": group}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


class ConfigBase:
    """Mixin of frozen, validated, serialisable config dataclasses.

    A subclass is decorated with ``@dataclass(frozen=True, kw_only=True)`` and sets the class attributes
    ``_constraints`` (parameter -> list of constraints, see :func:`validate_params`), optionally ``_version``
    (written by :meth:`to_dict`, checked by :meth:`from_dict`) and ``_check(self)`` for rules between fields.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass(frozen=True, kw_only=True)
        ... class Steps(ConfigBase):
        ...     steps: int = config_field(10, help="steps")
        ...     _constraints = {"steps": [Interval(int, 1, None)]}
        >>> Steps.from_dict({"version": 1, "steps": 3}).steps
        3
        >>> Steps.from_dict({"stpes": 3})
        Traceback (most recent call last):
        ...
        nmsparse.errors.ConfigError: Steps: unknown setting 'stpes' (did you mean 'steps'?); valid settings: steps
    """

    _constraints: ClassVar[Mapping[str, Sequence[Any]]] = {}
    _version: ClassVar[int] = 1

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        validate_params(type(self).__name__, self._values(), self._constraints)
        self._check()

    def _check(self) -> None:
        """Rules between fields (override; raise :class:`ConfigError`)."""

    def _values(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def field_names(cls) -> list[str]:
        """Names of the settings, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    @classmethod
    def check_keys(cls, keys: Iterable[str], *, where: str | None = None) -> None:
        """Raise :class:`ConfigError` for keys that are not settings, with the closest valid name."""
        names = cls.field_names()
        unknown = [k for k in keys if k not in names]
        if not unknown:
            return
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), names, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        plural = "s" if len(unknown) > 1 else ""
        raise ConfigError(
            f"{where or cls.__name__}: unknown setting{plural} {', '.join(hints)}; valid settings: {', '.join(names)}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-ready dict with a ``version`` key first (tuples become lists)."""
        out: dict[str, Any] = {"version": self._version}
        for name, value in self._values().items():
            out[name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls: type[_C], values: Mapping[str, Any], *, where: str | None = None) -> _C:
        """Build from :meth:`to_dict`'s output or a parsed YAML mapping (a missing ``version`` means current).

        Raises:
            ConfigError: not a mapping, another version, unknown keys (with the closest match) or bad values.
        """
        where = where or cls.__name__
        if not isinstance(values, Mapping):
            raise ConfigError(f"{where}: expected a mapping of setting -> value, got {type(values).__name__}")
        values = dict(values)
        version = values.pop("version", cls._version)
        if version != cls._version:
            raise ConfigError(
                f"{where}: config version {version!r} is not supported (this nmsparse reads "
                f"version {cls._version}); remove the 'version' key or upgrade nmsparse"
            )
        cls.check_keys(values, where=where)
        try:
            return cls(**values)
        except ConfigError as exc:
            if where == cls.__name__:
                raise
            raise ConfigError(f"{where}: {exc}") from None

    def replace(self: _C, **changes: Any) -> _C:
        """A validated copy with ``changes`` applied (unknown keys raise :class:`ConfigError`)."""
        self.check_keys(changes, where=f"{type(self).__name__}.replace")
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]
