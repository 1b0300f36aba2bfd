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


def progress(
    iterable: Iterable[T],
    *,
    desc: str,
    total: int | None = None,
    enabled: bool | None = None,
    unit: str = "it",
    leave: bool = False,
) -> Iterator[T]:
    """Iterate with a tqdm bar on stderr when :func:`progress_enabled` says so."""
    if not progress_enabled(enabled):
        yield from iterable
        return
    from tqdm.auto import tqdm

    yield from tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, file=sys.stderr, dynamic_ncols=True)


def renamed_progress(progress: bool | None, progress_bar: bool | None, *, where: str) -> bool | None:
    """The ``progress`` argument of a verb that used to call it ``progress_bar`` (a DeprecationWarning when used)."""
    if progress_bar is None:
        return progress
    import warnings

    warnings.warn(f"{where}: progress_bar= is deprecated; use progress=", DeprecationWarning, stacklevel=3)
    return progress_bar if progress is None else progress
