"""Constraint tables (nmsparse.config) and flags generated from config dataclasses (nmsparse.cli._flags)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

import pytest

from nmsparse.cli._flags import add_config_arguments, config_from_args, explicit_overrides
from nmsparse.config import (
    ConfigBase,
    InstanceOf,
    Interval,
    Options,
    PatternString,
    Predicate,
    SequenceOf,
    config_field,
    validate_params,
)
from nmsparse.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class _Cfg(ConfigBase):
    """A toy config.

    Attributes:
        documented: help taken from the docstring.
    """

    epochs: int = config_field(10, help="epochs to train")
    lr: float = config_field(0.1, help="learning rate")
    schedule: Literal["cosine", "step"] = config_field("cosine", help="schedule")
    pattern: str = config_field("4:8-T", help="pattern")
    augment: bool = config_field(True, help="augment")
    milestones: tuple[int, ...] = config_field(default_factory=tuple, help="milestones")
    cap: int | None = config_field(None, help="cap")
    hidden: int = config_field(1, help="not a flag", flag=False)
    documented: str = "x"

    _constraints = {
        "epochs": [Interval(int, 1, None, closed="left")],
        "lr": [Interval(float, 0, None, closed="neither")],
        "schedule": [Options({"cosine", "step"})],
        "pattern": [PatternString(("unstructured",))],
        "augment": [bool],
        "milestones": [SequenceOf(Interval(int, 1, None), increasing=True)],
        "cap": [Interval(int, 1, None), None],
    }

    def _check(self) -> None:
        if self.schedule == "step" and not self.milestones:
            raise ConfigError("_Cfg: schedule 'step' needs milestones")


@dataclass(frozen=True, kw_only=True)
class _Other(ConfigBase):
    epochs: int = config_field(3, help="epochs")
    d_model: int = config_field(64, help="width")
    _constraints = {"d_model": [Interval(int, 8, None)]}


def test_interval_bounds_and_types():
    closed = Interval(int, 1, 8)
    assert closed.is_satisfied_by(1) and closed.is_satisfied_by(8)
    assert not closed.is_satisfied_by(0) and not closed.is_satisfied_by(9)
    assert not closed.is_satisfied_by(True), "bool is not an int"
    assert not closed.is_satisfied_by(2.0), "an integral float is not an int"
    open_ = Interval(float, 0, 1, closed="neither")
    assert open_.is_satisfied_by(0.5) and not open_.is_satisfied_by(0) and not open_.is_satisfied_by(1.0)
    assert Interval(float, 0, 2).is_satisfied_by(1), "a float interval admits ints"
    assert not Interval(float, None, None).is_satisfied_by(float("nan"))
    assert not Interval(float, None, None).is_satisfied_by(float("inf"))
    assert str(Interval(int, 1, None, closed="left")) == "an int in [1, inf)"
    with pytest.raises(ValueError):
        Interval(int, 3, 1)


def test_options_instance_sequence_predicate():
    assert Options({"a", "b"}).is_satisfied_by("a") and not Options({"a"}).is_satisfied_by("c")
    assert not Options({1, 2}).is_satisfied_by(True)
    assert not Options({"a"}).is_satisfied_by(["a"])
    assert InstanceOf(bool).is_satisfied_by(False) and not InstanceOf(int).is_satisfied_by(False)
    seq = SequenceOf(Interval(int, 1, None), increasing=True)
    assert seq.is_satisfied_by((30, 60)) and seq.is_satisfied_by([]) and not seq.is_satisfied_by((60, 30))
    assert not seq.is_satisfied_by("12")
    even = Predicate(lambda v: v % 2 == 0, "an even number")
    assert even.is_satisfied_by(2) and not even.is_satisfied_by("x")  # TypeError inside -> not satisfied


def test_validate_params_message_names_owner_parameter_allowed_and_received():
    with pytest.raises(ConfigError) as info:
        validate_params("prune_", {"n": 0}, {"n": [Interval(int, 1, None), None]})
    assert str(info.value) == "prune_: n must be an int in [1, inf) or None (null); got 0"
    validate_params("prune_", {"n": None, "unchecked": object()}, {"n": [Interval(int, 1, None), None]})
    with pytest.raises(ConfigError, match=r"did you mean 'cosine'"):
        validate_params("f", {"schedule": "cosin"}, {"schedule": [Options({"cosine", "step"})]})


def test_yaml_base60_pattern_says_quote_it():
    """Fault 9: YAML 1.1 reads an unquoted 2:4 as 124; the error says so and how to fix it."""
    yaml = pytest.importorskip("yaml")
    loaded = yaml.safe_load("pattern: 2:4\n")
    assert loaded["pattern"] == 124  # the trap itself
    with pytest.raises(ConfigError) as info:
        _Cfg.from_dict(loaded, where="run.yaml")
    message = str(info.value)
    assert message.startswith("run.yaml: _Cfg: pattern must be")
    assert "got 124" in message and "quote it" in message and "'2:4'" in message
    assert _Cfg.from_dict(yaml.safe_load("pattern: '2:4'\n")).pattern == "2:4"


def test_config_base_round_trip_version_and_unknown_keys():
    cfg = _Cfg(milestones=[3, 5], schedule="step")
    assert cfg.milestones == (3, 5), "lists become tuples"
    data = cfg.to_dict()
    assert list(data)[0] == "version" and data["version"] == 1 and data["milestones"] == [3, 5]
    assert _Cfg.from_dict(data) == cfg
    with pytest.raises(ConfigError, match=r"unknown setting 'epoch' \(did you mean 'epochs'\?\)"):
        _Cfg.from_dict({"epoch": 3})
    with pytest.raises(ConfigError, match="version 2 is not supported"):
        _Cfg.from_dict({"version": 2})
    with pytest.raises(ConfigError, match="needs milestones"):
        _Cfg(schedule="step")
    with pytest.raises(ConfigError, match="unknown setting 'nope'"):
        cfg.replace(nope=1)
    assert cfg.replace(epochs=4).epochs == 4
    with pytest.raises(ConfigError, match="_Cfg: epochs must be an int in"):
        cfg.replace(epochs=0)


def _parser(*classes, **kw) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t", exit_on_error=False)
    parser.add_argument("--out")
    add_config_arguments(parser, *classes, **kw)
    return parser


def test_flags_generated_for_every_flag_field_with_types_choices_and_help():
    parser = _parser(_Cfg)
    text = parser.format_help()
    for flag in (
        "--epochs",
        "--lr",
        "--schedule",
        "--pattern",
        "--augment",
        "--no-augment",
        "--milestones",
        "--cap",
        "--documented",
    ):
        assert flag in text
    assert "--hidden" not in text, "flag=False keeps a setting off the command line"
    assert "epochs to train (default: 10)" in text
    assert "help taken from the docstring" in text
    args = parser.parse_args(
        ["--epochs", "3", "--lr", "1e-3", "--no-augment", "--milestones", "2", "4", "--cap", "none", "--out", "x"]
    )
    assert explicit_overrides(args, _Cfg) == {
        "epochs": 3,
        "lr": 1e-3,
        "augment": False,
        "milestones": (2, 4),
        "cap": None,
    }
    with pytest.raises(argparse.ArgumentError):
        parser.parse_args(["--schedule", "linear"])
    with pytest.raises(argparse.ArgumentError):
        parser.parse_args(["--epochs", "many"])


def test_only_explicit_flags_override_the_file():
    parser = _parser(_Cfg)
    args = parser.parse_args(["--lr", "0.5"])
    cfg = config_from_args(_Cfg, args, base={"epochs": 7, "lr": 0.2})
    assert (cfg.epochs, cfg.lr, cfg.augment) == (7, 0.5, True)
    assert explicit_overrides(parser.parse_args([]), _Cfg) == {}


def test_merged_parser_refuses_flags_of_the_other_class():
    parser = _parser(_Cfg, _Other, exclude=("documented",))
    assert "--documented" not in parser.format_help()
    args = parser.parse_args(["--epochs", "2", "--d-model", "32"])
    assert explicit_overrides(args, _Other) == {"epochs": 2, "d_model": 32}
    with pytest.raises(ConfigError, match=r"--d-model flag does not apply to --task classify"):
        explicit_overrides(args, _Cfg, context="--task classify")
    assert explicit_overrides(args, _Cfg, ignore=("d_model",)) == {"epochs": 2}


@dataclass(frozen=True, kw_only=True)
class _Wider(ConfigBase):
    schedule: Literal["cosine", "linear"] = config_field("linear", help="schedule")
    lr: int = config_field(1, help="an int here")


def test_shared_flag_admits_the_values_of_every_class():
    parser = _parser(_Cfg, _Wider)
    args = parser.parse_args(["--schedule", "linear"])
    assert explicit_overrides(args, _Wider) == {"schedule": "linear"}
    with pytest.raises(ConfigError, match="schedule must be one of 'cosine', 'step'; got 'linear'"):
        config_from_args(_Cfg, args)  # the class's own constraint table still decides
    assert explicit_overrides(parser.parse_args(["--lr", "0.5"]), _Cfg) == {"lr": 0.5}


def test_percent_signs_in_help_are_shown_once():
    @dataclass(frozen=True, kw_only=True)
    class Pct(ConfigBase):
        a: float = config_field(0.5, help="50% of weights")
        b: float = config_field(0.5, help="50%% escaped")

    text = _parser(Pct).format_help()
    assert "50% of weights" in text and "50% escaped" in text and "%%" not in text


def test_config_is_the_public_home_and_the_old_private_module_still_imports() -> None:
    import nmsparse._validation as old
    import nmsparse.config as public

    assert set(old.__all__) == set(public.__all__)
    for name in public.__all__:
        assert getattr(old, name) is getattr(public, name), name
