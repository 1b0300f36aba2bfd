"""Module-level building blocks: the :class:`NMMask` weight parametrization."""

from __future__ import annotations

from .parametrize import NMMask

__all__ = ["NMMask"]
