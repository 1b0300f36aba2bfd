"""Former home of :mod:`nmsparse.config` (configs and their constraint types), kept so existing imports work.

New code imports from :mod:`nmsparse.config`; everything here is the same object.
"""

from __future__ import annotations

from nmsparse.config import (
    ConfigBase,
    Constraint,
    InstanceOf,
    Interval,
    Options,
    PatternString,
    Predicate,
    SequenceOf,
    config_field,
    describe_constraints,
    validate_params,
)

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
