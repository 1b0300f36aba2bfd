"""Registry of mask methods: name -> function solving a whole score matrix."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..pattern import NMPattern

__all__ = ["MatrixSolver", "SolverSpec", "register_solver", "get_solver", "list_methods"]

#: ``(scores [rows, K] float, pattern, progress) -> bool mask [rows, K]``.
MatrixSolver = Callable[[torch.Tensor, NMPattern, "bool | None"], torch.Tensor]


@dataclass(frozen=True)
class SolverSpec:
    name: str
    fn: MatrixSolver
    exact: bool
    description: str


_SOLVERS: dict[str, SolverSpec] = {}


def register_solver(name: str, fn: MatrixSolver, *, exact: bool, description: str) -> None:
    """Register ``fn`` as mask method ``name`` (``exact`` = optimal for every pattern it accepts)."""
    _SOLVERS[name] = SolverSpec(name, fn, exact, description)


def list_methods() -> list[str]:
    """Names accepted by ``find_mask(method=...)``, ``"auto"`` first."""
    return ["auto", *sorted(_SOLVERS)]


def get_solver(name: str) -> SolverSpec:
    try:
        return _SOLVERS[name]
    except KeyError:
        raise ConfigError(f"find_mask: unknown method {name!r}; choose one of {list_methods()}") from None
