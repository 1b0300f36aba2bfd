"""Command-line flags generated from config dataclasses: one source of truth for names, types, defaults and help.

Every field of a config class (``TrainConfig``, ``AdaPruneConfig``, ...) becomes a flag:

- ``field_name`` -> ``--field-name``; the help text is the field's ``metadata["help"]`` (see
  :func:`nmsparse.config.config_field`) or its line in the class docstring, followed by the default;
- the type comes from the annotation: ``int``, ``float``, ``str``; ``bool`` becomes ``--x/--no-x``; a
  ``tuple[T, ...]`` takes several values (``nargs="*"``); ``X | None`` also takes ``none``; a ``Literal`` or an
  :class:`~nmsparse.config.Options` constraint gives ``choices``;
- ``default=argparse.SUPPRESS``: a flag left out is absent from the parsed namespace, so only flags given
  explicitly override a config file (defaults < file < flags), and :func:`explicit_overrides` sees exactly
  what the user typed.

Several classes can share one parser (``add_config_arguments(parser, TrainConfig, LMTrainConfig)``): a field
name they share is one flag. :func:`explicit_overrides` then returns the given flags that one class has and
refuses the others by name (``--width does not apply to --task lm``). With ``hidden=True`` a class adds only the
flags the parser lacks, left out of ``--help``: a task's command then shows its own flags and still names a flag
of another task in its error.

Example:
    >>> import argparse
    >>> from dataclasses import dataclass
    >>> from nmsparse.config import ConfigBase, config_field
    >>> @dataclass(frozen=True, kw_only=True)
    ... class Demo(ConfigBase):
    ...     epochs: int = config_field(10, help="epochs")
    ...     augment: bool = config_field(True, help="augment images")
    >>> parser = argparse.ArgumentParser()
    >>> add_config_arguments(parser, Demo)
    >>> args = parser.parse_args(["--no-augment"])
    >>> explicit_overrides(args, Demo)
    {'augment': False}
    >>> config_from_args(Demo, args, base={"epochs": 3})
    Demo(epochs=3, augment=False)
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from nmsparse.config import ConfigBase, Options
from nmsparse.errors import ConfigError

__all__ = ["add_config_arguments", "explicit_overrides", "config_from_args", "given_flags", "flag_name", "DEST_PREFIX"]

#: Namespace attributes of generated flags are ``DEST_PREFIX + field name`` (kept apart from other options).
DEST_PREFIX = "config:"

_C = TypeVar("_C", bound=ConfigBase)
_NONE_WORDS = ("none", "null")


def flag_name(field_name: str) -> str:
    """``"batch_size"`` -> ``"--batch-size"``."""
    return "--" + field_name.replace("_", "-")


def _docstring_help(cls: type) -> dict[str, str]:
    """``name: text`` lines of a Google-style class docstring (``a / b: text`` documents both)."""
    found: dict[str, str] = {}
    for line in (cls.__doc__ or "").splitlines():
        match = re.match(r"\s+([a-z_][a-z0-9_]*(?:\s*/\s*[a-z_][a-z0-9_]*)*):\s+(.+)", line)
        if match:
            for name in re.split(r"\s*/\s*", match.group(1)):
                found.setdefault(name, match.group(2).strip())
    return found


def _strip_optional(hint: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        if len(args) == 1:
            return args[0], optional
        return hint, optional
    return hint, False


def _scalar_parser(kind: Any, optional: bool, name: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if optional and text.strip().lower() in _NONE_WORDS:
            return None
        try:
            if kind is int:
                return int(text)
            if kind is float:
                return float(text)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(
                f"{flag_name(name)} takes {expected}{' or none' if optional else ''}, got {text!r}"
            ) from None
        return text

    parse.__name__ = getattr(kind, "__name__", "value")
    return parse


def _choices(cls: type, name: str, hint: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(hint) is typing.Literal:
        return tuple(typing.get_args(hint))
    specs = list(getattr(cls, "_constraints", {}).get(name, ()) or ())
    if specs and all(isinstance(s, Options) for s in specs):
        return tuple(v for s in specs for v in s.options)
    return None


def _default_text(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return ""
    if isinstance(value, bool):
        return " (default: on)" if value else " (default: off)"
    if value is None:
        return " (default: none)"
    if isinstance(value, tuple):
        return f" (default: {' '.join(map(str, value)) or 'empty'})"
    return f" (default: {value})"


def _registry(parser: argparse.ArgumentParser) -> dict[str, Any]:
    registry = getattr(parser, "_nmsparse_config_flags", None)
    if registry is None:
        registry = {"fields": {}, "groups": {}, "actions": {}}
        parser._nmsparse_config_flags = registry  # type: ignore[attr-defined]
    return registry


def _widen(action: argparse.Action, cls: type, name: str, hint: Any, optional: bool) -> None:
    """Let a shared flag take the values of one more class: union of choices, the wider value type."""
    if isinstance(action, argparse.BooleanOptionalAction) or action.nargs == "*":
        return
    choices = _choices(cls, name, hint)
    if action.choices is not None:
        action.choices = None if choices is None else tuple(dict.fromkeys((*action.choices, *choices)))
    kind = hint if hint in (int, float) else str
    current = getattr(action.type, "__name__", "str")
    if current != kind.__name__ and current != "str":
        wider = float if {current, kind.__name__} == {"int", "float"} else str
        action.type = _scalar_parser(wider, optional or "none" in (action.help or ""), name)


def add_config_arguments(
    parser: argparse.ArgumentParser, *classes: type[ConfigBase], exclude: Iterable[str] = (), hidden: bool = False
) -> None:
    """Add one flag per field of each config class in ``classes`` (shared field names become one flag).

    Args:
        parser: the (sub)command's parser.
        classes: config dataclasses (fields annotated with ``int``/``float``/``str``/``bool``/``Literal``/
            ``tuple[T, ...]``, optionally ``| None``).
        exclude: field names that get no flag (e.g. settings the command sets itself); a field whose metadata
            has ``flag=False`` gets none either.
        hidden: add only the fields the parser has no flag for yet, without help (flags of another class that
            :func:`explicit_overrides` refuses by name); shared flags keep their values.
    """
    excluded = set(exclude)
    registry = _registry(parser)
    for cls in classes:
        hints = typing.get_type_hints(cls)
        doc_help = _docstring_help(cls)
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name in excluded or f.name.startswith("_") or not f.metadata.get("flag", True):
                continue
            hint, optional = _strip_optional(hints[f.name])
            if f.name in registry["fields"]:  # a setting both classes have: one flag that admits either's values
                registry["fields"][f.name].add(cls)
                if not hidden:
                    _widen(registry["actions"][f.name], cls, f.name, hint, optional)
                continue
            registry["fields"][f.name] = {cls}
            help_text = (f.metadata.get("help") or doc_help.get(f.name, "")) + _default_text(f)
            kwargs: dict[str, Any] = {
                "dest": DEST_PREFIX + f.name,
                "default": argparse.SUPPRESS,
                "help": help_text.replace("%%", "%").replace("%", "%%"),
            }
            if f.metadata.get("metavar"):
                kwargs["metavar"] = f.metadata["metavar"]
            if hint is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            elif typing.get_origin(hint) is tuple:
                item = typing.get_args(hint)[0] if typing.get_args(hint) else str
                kwargs.update(nargs="*", type=_scalar_parser(item, False, f.name))
                kwargs.setdefault("metavar", "INT" if item is int else "FLOAT" if item is float else "VALUE")
            else:
                kind = hint if hint in (int, float) else str
                choices = _choices(cls, f.name, hint)
                kwargs["type"] = _scalar_parser(kind, optional, f.name)
                if choices is not None and not optional:
                    kwargs["choices"] = choices
                elif choices is not None:
                    kwargs["help"] += f"; one of {', '.join(map(str, choices))} or none"
                if optional:
                    kwargs["help"] += "; 'none' unsets it" if "none" not in kwargs["help"] else ""
            if "metavar" not in kwargs and "choices" not in kwargs and "action" not in kwargs:
                kwargs["metavar"] = f.name.upper()  # not argparse's default, the dest ("CONFIG:EPOCHS")
            if hidden:
                kwargs["help"] = argparse.SUPPRESS
            group_title = None if hidden else f.metadata.get("group")
            target: Any = parser
            if group_title:
                target = registry["groups"].get(group_title)
                if target is None:
                    target = registry["groups"][group_title] = parser.add_argument_group(group_title)
            registry["actions"][f.name] = target.add_argument(flag_name(f.name), **kwargs)


def given_flags(args: argparse.Namespace) -> dict[str, Any]:
    """Every generated config flag given on the command line, as ``{field: value}`` (for any class)."""
    return {key[len(DEST_PREFIX) :]: value for key, value in vars(args).items() if key.startswith(DEST_PREFIX)}


def explicit_overrides(
    args: argparse.Namespace, cls: type[ConfigBase], *, context: str | None = None, ignore: Iterable[str] = ()
) -> dict[str, Any]:
    """The config flags given on the command line that ``cls`` has, as ``{field: value}`` (lists as tuples).

    Args:
        args: parsed namespace of a parser built with :func:`add_config_arguments`.
        cls: the config class the values are for.
        context: how to name ``cls`` in the error (default: its class name), e.g. ``"--task lm"``.
        ignore: given flags to leave out silently (settings the command handles itself).

    Raises:
        ConfigError: a given flag that ``cls`` has no setting for.
    """
    names = set(cls.field_names())
    skip = set(ignore)
    out: dict[str, Any] = {}
    foreign: list[str] = []
    for name, value in given_flags(args).items():
        if name in skip:
            continue
        if name not in names:
            foreign.append(flag_name(name))
            continue
        out[name] = tuple(value) if isinstance(value, list) else value
    if foreign:
        plural = "s do" if len(foreign) > 1 else " does"
        raise ConfigError(
            f"{', '.join(sorted(foreign))} flag{plural} not apply to {context or cls.__name__}; "
            f"drop {'them' if len(foreign) > 1 else 'it'}"
        )
    return out


def config_from_args(
    cls: type[_C],
    args: argparse.Namespace,
    base: Mapping[str, Any] | None = None,
    *,
    where: str | None = None,
    context: str | None = None,
) -> _C:
    """``cls.from_dict(base | explicit flags)``: defaults < ``base`` (a config file's values) < flags.

    Raises:
        ConfigError: a flag that does not apply, unknown keys in ``base``, or invalid values.
    """
    values = dict(base or {})
    values.update(explicit_overrides(args, cls, context=context))
    return cls.from_dict(values, where=where)
