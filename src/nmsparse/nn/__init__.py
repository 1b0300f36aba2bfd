"""Module-level building blocks: the :class:`NMMask` weight parametrization."""

from __future__ import annotations

from .linear import SparseLinear
from .parametrize import KeepOrder, NMMask

__all__ = ["NMMask", "KeepOrder", "SparseLinear"]
