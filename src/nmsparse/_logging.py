"""Package logger and a progress-bar wrapper (tqdm, shown only on a terminal unless asked)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

logger = logging.getLogger("nmsparse")
logger.addHandler(logging.NullHandler())


def progress_enabled(enabled: bool | None) -> bool:
    """``None`` means: on only when stderr is a terminal."""
    if enabled is None:
        return sys.stderr.isatty()
    return bool(enabled)


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None, enabled: bool | None = None,
             unit: str = "it", leave: bool = False) -> Iterator[T]:
    """Iterate with a tqdm bar on stderr when :func:`progress_enabled` says so."""
    if not progress_enabled(enabled):
        yield from iterable
        return
    from tqdm.auto import tqdm

    yield from tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, file=sys.stderr, dynamic_ncols=True)
