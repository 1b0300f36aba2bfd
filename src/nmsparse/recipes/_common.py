"""Pieces shared by the training recipes (``recipes.train`` and ``recipes.lm``): what a structure comparison trains and
writes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from nmsparse.errors import ConfigError
from nmsparse.pattern import NMPattern

__all__ = ["DENSE", "UNSTRUCTURED", "DEFAULT_STRUCTURES", "DEFAULT_REFERENCE_NUMEL", "COMPARE_JSON", "COMPARE_PLOT",
           "RunCallback", "structure_slug", "check_structures", "warm_up_solvers"]

#: Structure name of the dense baseline in a comparison.
DENSE = "dense"
#: Structure name of per-layer magnitude (unstructured) masks at 50% density.
UNSTRUCTURED = "unstructured"
#: Structures a comparison trains by default.
DEFAULT_STRUCTURES = (DENSE, "2:4", "4:8", "2:4-T", "4:8-T", UNSTRUCTURED)
#: Tensor size of the diversity column: 4096 = 64 blocks of 8x8, a multiple of every m*m used here.
DEFAULT_REFERENCE_NUMEL = 4096
#: Files a comparison writes into its directory.
COMPARE_JSON = "compare.json"
COMPARE_PLOT = "compare.png"

#: ``callback(record)`` after each run of a comparison.
RunCallback = Callable[[dict[str, Any]], None]


def structure_slug(structure: str) -> str:
    """Directory-safe name of a structure (``"4:8-T"`` -> ``"4x8-T"``)."""
    return structure.replace(":", "x")


def check_structures(structures: Sequence[str]) -> list[str]:
    """Canonical names of a comparison's structures: ``"dense"``, ``"unstructured"`` or n:m patterns.

    Raises:
        ConfigError: a non-string or unparseable structure, none at all, or one given twice.
    """
    out = []
    for item in structures:
        if not isinstance(item, str):
            raise ConfigError(f"compare: structures must be strings, got {item!r}")
        name = item.strip()
        if name.lower() in (DENSE, UNSTRUCTURED):
            out.append(name.lower())
            continue
        try:
            out.append(str(NMPattern.parse(name)))
        except ValueError as exc:
            raise ConfigError(f"compare: structure {item!r}: {exc}; or use '{DENSE}' or '{UNSTRUCTURED}'") from None
    if not out:
        raise ConfigError("compare: give at least one structure, e.g. dense 2:4 4:8-T")
    if len(set(out)) != len(out):
        raise ConfigError(f"compare: structures repeat: {out}")
    return out


def warm_up_solvers(patterns: Iterable[str], methods: Iterable[str]) -> float:
    """Compile (or load from numba's cache) the mask solvers of ``patterns`` x ``methods``, outside timed work.

    Returns the seconds it took: what a first run on a fresh machine pays once (reported as ``compile_seconds``),
    so the refresh overhead measures refreshes only. ``dense`` and ``unstructured`` need no solver. Keeps torch's
    thread count (numba's OpenMP layer may reset it).
    """
    import torch

    from nmsparse.solvers import warmup

    wanted = [p for p in patterns if p not in (DENSE, UNSTRUCTURED)]
    if not wanted:
        return 0.0
    threads = torch.get_num_threads()
    start = time.perf_counter()
    warmup(wanted, sorted(set(methods)), dtypes=(torch.float32,))
    seconds = time.perf_counter() - start
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return seconds
