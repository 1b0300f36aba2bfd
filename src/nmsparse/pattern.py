"""N:M sparsity patterns: ``"2:4"`` keeps 2 of every 4 consecutive weights; ``"4:8-T"`` is transposable.

Conventions (fixed here, used everywhere):

* ``n`` is the number of weights **kept** in every group of ``m`` consecutive weights along the reduction
  (input) dimension. This is NVIDIA's and SR-STE's convention; the paper of Hubara et al. counts zeros
  instead, which agrees at 50% density.
* A *transposable* pattern (suffix ``-T``) tiles the weight's matrix view into aligned ``m x m`` blocks
  (``m`` output rows x ``m`` input columns) and keeps exactly ``n`` in every row **and** every column of each
  block, so both ``W`` and ``W.T`` are ``n:m``.

Accepted spellings (:meth:`NMPattern.parse`): ``"N:M"`` or ``"N:M-T"`` where ``N`` and ``M`` are ASCII decimal
integers with ``1 <= N < M``; the suffix may also be written ``-t``. Nothing else is accepted: no whitespace
(leading, trailing or inside), no other digits (``"２:４"``), no signs. An integer such as ``124`` is what YAML 1.1
makes of an unquoted ``2:4`` (base 60); it is refused with a hint to quote the pattern.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import PatternError

__all__ = ["NMPattern", "PatternLike", "SUPPORTED_TRANSPOSABLE_M"]

#: Group sizes accepted for transposable patterns (block sizes of the exact solver).
SUPPORTED_TRANSPOSABLE_M = (4, 8, 16, 32)

_PATTERN_RE = re.compile(r"([0-9]+):([0-9]+)(-[Tt])?")  # used with fullmatch: ASCII digits, no spaces
_ACCEPTED = (
    '"N:M" or "N:M-T" (also "-t") with ASCII integers 1 <= N < M and no spaces, e.g. "2:4", "1:4", "4:8-T", "8:16-T"'
)


@dataclass(frozen=True)
class NMPattern:
    """An ``n:m`` (optionally transposable) sparsity pattern.

    Args:
        n: weights kept per group, ``1 <= n < m``.
        m: group size (and block side for transposable patterns).
        transposable: every ``m x m`` block keeps ``n`` per row and per column.

    Example:
        >>> p = NMPattern.parse("4:8-T")
        >>> p.n, p.m, p.transposable, p.density
        (4, 8, True, 0.5)
        >>> str(p)
        '4:8-T'
    """

    n: int
    m: int
    transposable: bool = False

    def __post_init__(self) -> None:
        for name in ("n", "m"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise PatternError(f"NMPattern: {name} must be an int, got {value!r}; accepted forms: {_ACCEPTED}")
        if not 1 <= self.n < self.m:
            raise PatternError(
                f"NMPattern: need 1 <= n < m, got n={self.n}, m={self.m} ({self.n}:{self.m}); "
                f"accepted forms: {_ACCEPTED}"
            )
        if self.transposable and self.m not in SUPPORTED_TRANSPOSABLE_M:
            raise PatternError(
                f"NMPattern: transposable patterns need m in {SUPPORTED_TRANSPOSABLE_M}, got m={self.m}; "
                f"use one of those block sizes (e.g. '2:4-T', '4:8-T', '8:16-T')"
            )

    @classmethod
    def parse(cls, spec: str | NMPattern) -> NMPattern:
        """Parse ``"n:m"`` or ``"n:m-T"`` (or ``"n:m-t"``); an :class:`NMPattern` passes through unchanged.

        Raises:
            PatternError: (a ``ValueError``) for anything else (spaces, non-ASCII digits, an integer from an
                unquoted YAML ``2:4``), with the accepted forms or the fix in the message.

        Example:
            >>> NMPattern.parse("2:4-t")
            NMPattern(n=2, m=4, transposable=True)
            >>> NMPattern.parse(124)  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            nmsparse.errors.PatternError: pattern: got the integer 124, ...; quote it: '2:4'
        """
        if isinstance(spec, NMPattern):
            return spec
        if isinstance(spec, int) and not isinstance(spec, bool):
            n, m = divmod(spec, 60)
            if spec > 0 and 1 <= n < m:
                raise PatternError(
                    f"pattern: got the integer {spec}, which is what YAML makes of an unquoted {n}:{m} (YAML 1.1 "
                    f"reads it in base 60); quote it: '{n}:{m}'"
                )
        if not isinstance(spec, str):
            raise PatternError(f"pattern: expected a string like '2:4' or '4:8-T', got {type(spec).__name__} {spec!r}")
        match = _PATTERN_RE.fullmatch(spec)
        if match is None:
            hint = ""
            if spec != spec.strip() or any(c.isspace() for c in spec):
                hint = " (remove the spaces)"
            elif any(c.isdigit() and not c.isascii() for c in spec):
                hint = " (use ASCII digits 0-9)"
            raise PatternError(f"pattern: cannot parse {spec!r}{hint}; accepted forms: {_ACCEPTED}")
        return cls(int(match.group(1)), int(match.group(2)), match.group(3) is not None)

    @property
    def density(self) -> float:
        """Fraction of weights kept, ``n / m``."""
        return self.n / self.m

    @property
    def sparsity(self) -> float:
        """Fraction of weights pruned, ``1 - n / m``."""
        return 1.0 - self.density

    def __str__(self) -> str:
        return f"{self.n}:{self.m}{'-T' if self.transposable else ''}"


PatternLike = str | NMPattern
