"""Mask diversity (MD): how many masks a sparsity constraint allows for a tensor, counted exactly.

Hubara et al. (NeurIPS 2021) use MD to predict which constraint loses less accuracy. For a tensor of ``numel``
weights at density ``n / m`` (every count here is of masks keeping *exactly* that many weights per group, row
and column, as in the paper; :func:`nmsparse.is_nm_sparse` also accepts masks that keep fewer):

* unstructured: ``C(numel, kept)``;
* plain ``n:m``: ``C(m, n) ** (numel / m)``;
* transposable ``n:m-T``: ``tau(m, n) ** (numel / m**2)``, where ``tau(m, n)`` is the number of ``m x m`` 0/1
  matrices with ``n`` ones in every row and every column (:func:`transposable_block_count`).

The closed form the paper gives for ``n:m-T``, ``prod_{k<n} (m-k)!`` per block, is exact only for ``n <= 1``:
it over-counts every pattern with ``n = m/2`` (144 instead of 90 for one 2:4-T block) and under-counts
``2:m-T`` for ``m >= 10``. It is available as :func:`paper_closed_form_transposable`, for comparison only.
"""

from __future__ import annotations

import functools
import math
import numbers
import operator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .errors import ConfigError, PatternError, ShapeError
from .pattern import NMPattern

__all__ = [
    "MAX_EXACT_TRANSPOSABLE_M",
    "DiversitySummary",
    "diversity_summary",
    "estimate_log10_mask_diversity",
    "estimate_log10_transposable_block_count",
    "log10_mask_diversity",
    "mask_diversity",
    "paper_closed_form_transposable",
    "transposable_block_count",
]

#: Largest block side ``m`` for which :func:`transposable_block_count` counts exactly (well under a second for
#: every ``n`` at ``m = 16``). Beyond it the count is a hard combinatorial problem: use the estimates.
MAX_EXACT_TRANSPOSABLE_M = 16

#: Default density of the unstructured constraint (the paper compares every constraint at 50% sparsity).
DEFAULT_UNSTRUCTURED_DENSITY = 0.5

# Above this many weights the unstructured log10 uses lgamma instead of the exact binomial (math.comb(2**16,
# 2**15) already takes 0.1 s and its cost grows quadratically); lgamma is accurate to ~1e-8 in log10 there.
_EXACT_UNSTRUCTURED_LOG10_MAX_NUMEL = 4096

_UNSTRUCTURED = "unstructured"
_ACCEPTED = "'unstructured', 'N:M' or 'N:M-T' (e.g. '2:4', '4:8-T')"
_LN10 = math.log(10.0)


# ----------------------------------------------------------------------------------------------------------
# Input checking
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Constraint:
    """A checked constraint; ``pattern is None`` means unstructured (``kept`` of ``numel`` weights)."""

    pattern: NMPattern | None
    numel: int
    density: float
    kept: int


def _parse_pattern(pattern: str | NMPattern, where: str) -> NMPattern | None:
    if isinstance(pattern, str) and pattern.strip().lower() == _UNSTRUCTURED:
        return None
    if not isinstance(pattern, (str, NMPattern)):
        raise PatternError(
            f"{where}: pattern must be a string or NMPattern, got {type(pattern).__name__} {pattern!r}; "
            f"accepted forms: {_ACCEPTED}"
        )
    try:
        return NMPattern.parse(pattern)
    except PatternError as exc:
        raise PatternError(f"{where}: {exc}; 'unstructured' is accepted too") from exc


def _check_int(value: object, name: str, where: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {name} must be an int, got the bool {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigError(f"{where}: {name} must be an int, got {type(value).__name__} {value!r}") from None


def _check_numel(numel: object, where: str) -> int:
    count = _check_int(numel, "numel", where)
    if count <= 0:
        raise ShapeError(f"{where}: numel must be a positive number of weights, got {count}; pass the tensor's numel()")
    return count


def _check_density(density: object, where: str) -> float | None:
    if density is None:
        return None
    if isinstance(density, bool) or not isinstance(density, numbers.Real):
        raise ConfigError(
            f"{where}: density must be a float in (0, 1] or None, got {type(density).__name__} {density!r}"
        )
    value = float(density)
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ConfigError(
            f"{where}: density is the fraction of weights kept and must lie in (0, 1], got {density!r}; "
            f"e.g. 0.5 for 50% sparsity"
        )
    return value


def _fit_problem(pattern: NMPattern | None, numel: int, density: float) -> tuple[str, str] | None:
    """``(short reason, fix)`` when ``numel`` weights cannot take the constraint, else ``None``."""
    if pattern is None:
        exact = numel * density
        kept = round(exact)
        if abs(exact - kept) > 1e-9 * max(1.0, exact):
            return (
                f"numel * density = {exact:g} is not a whole number of weights",
                f"pick a density k/{numel} for an integer k, or a numel that makes numel*density an integer",
            )
        if kept == 0:
            return (f"numel * density = {exact:g} keeps no weight", "raise the density or numel")
        return None
    if pattern.transposable:
        block = pattern.m * pattern.m
        if numel % block:
            return (
                f"numel not a multiple of m^2 = {block}",
                f"{pattern} tiles the tensor into {pattern.m}x{pattern.m} blocks; use a numel divisible by {block}",
            )
    elif numel % pattern.m:
        return (
            f"numel not a multiple of m = {pattern.m}",
            f"{pattern} splits the tensor into groups of {pattern.m}; use a numel divisible by {pattern.m}",
        )
    return None


def _resolve(pattern: str | NMPattern, numel: object, density: object, where: str) -> _Constraint:
    parsed = _parse_pattern(pattern, where)
    count = _check_numel(numel, where)
    value = _check_density(density, where)
    if parsed is None:
        value = DEFAULT_UNSTRUCTURED_DENSITY if value is None else value
    elif value is None:
        value = parsed.density
    elif not math.isclose(value, parsed.density, rel_tol=1e-9, abs_tol=0.0):
        raise ConfigError(
            f"{where}: pattern {parsed} fixes the density at n/m = {parsed.density:g}, "
            f"got density={density!r}; leave density=None for n:m patterns "
            f"(it only applies to 'unstructured')"
        )
    problem = _fit_problem(parsed, count, value)
    if problem is not None:
        reason, fix = problem
        name = _UNSTRUCTURED if parsed is None else str(parsed)
        raise ShapeError(f"{where}: {name} cannot apply to numel={count}: {reason}; {fix}")
    kept = round(count * value) if parsed is None else count // parsed.m * parsed.n
    return _Constraint(parsed, count, value, kept)


def _exact_supported(m: int, n: int) -> bool:
    """Exact counts for ``m <= 16``, and for any ``m`` when the count is trivial (1 or ``m!``)."""
    return m <= MAX_EXACT_TRANSPOSABLE_M or min(n, m - n) <= 1


def _check_block_args(m: object, n: object, where: str, *, exact: bool) -> tuple[int, int]:
    side = _check_int(m, "m", where)
    ones = _check_int(n, "n", where)
    if side < 1:
        raise ConfigError(f"{where}: the block side m must be >= 1, got m={side}")
    if not 0 <= ones <= side:
        raise ConfigError(f"{where}: need 0 <= n <= m ones per row and column, got n={ones}, m={side}")
    if exact and not _exact_supported(side, ones):
        raise ConfigError(
            f"{where}: exact counts of {side}x{side} blocks are not supported "
            f"(m <= {MAX_EXACT_TRANSPOSABLE_M}; beyond that counting them is a hard combinatorial problem), "
            f"got m={side}, n={ones}; use estimate_log10_transposable_block_count / "
            f"estimate_log10_mask_diversity for an asymptotic estimate"
        )
    return side, ones


# ----------------------------------------------------------------------------------------------------------
# tau(m, n): m x m 0/1 matrices with n ones in every row and column
# ----------------------------------------------------------------------------------------------------------


def _level_counts(m: int, n: int, depths: tuple[int, ...]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Ways to fill the first rows (``n`` ones each), aggregated by the class of the column needs.

    A state is ``c = (c_0, ..., c_n)``, ``c_k`` = columns that still need ``k`` ones; columns are otherwise
    interchangeable, so the count of a state sums over every specific column-need vector of that class. It is
    packed into one int64 code in base ``m + 1``: digit ``k`` holds ``c_k`` and digit ``n + 1`` the ones still
    to place in the current row. A row is added class by class, in increasing ``k``: take ``j`` of the ``c_k``
    columns (``C(c_k, j)`` ways), which move to class ``k - 1``, already done for this row, so no column is
    taken twice. Every class step is vectorised over all states; counts are exact Python ints (object arrays).

    Returns:
        For each depth in ``depths``: ``(codes, counts)``, the sorted state codes (row digit 0) and their
        counts after that many rows.
    """
    base = m + 1
    power = [base**k for k in range(n + 2)]
    row_digit = power[n + 1]
    comb_table = np.array([[math.comb(a, j) for j in range(n + 1)] for a in range(m + 1)], dtype=object)
    codes = np.array([m * power[n]], dtype=np.int64)  # every column needs n
    counts = np.array([1], dtype=object)
    levels = {0: (codes, counts)}
    for row in range(max(depths)):
        codes = codes + n * row_digit  # n ones to place in this row
        for k in range(1, n + 1):
            remaining = codes // row_digit
            needs = codes % row_digit
            in_class = (needs // power[k]) % base
            # Columns needing more than k are untouched in this row so far: the ones left must fit there.
            above = needs // power[k + 1]
            available = np.zeros_like(codes)
            while bool((above > 0).any()):
                available += above % base
                above //= base
            low = np.maximum(remaining - available, 0)
            high = np.minimum(in_class, remaining)
            move = power[k - 1] - power[k] - row_digit  # one column k -> k-1, one fewer one to place
            parts_codes, parts_counts = [], []
            for j in range(int(high.max()) + 1):
                idx = np.flatnonzero((low <= j) & (j <= high))
                if idx.size:
                    parts_codes.append(codes[idx] + j * move)
                    parts_counts.append(counts[idx] * comb_table[in_class[idx], j] if j else counts[idx])
            merged_codes = np.concatenate(parts_codes)
            merged_counts = np.concatenate(parts_counts)
            order = np.argsort(merged_codes, kind="stable")
            merged_codes, merged_counts = merged_codes[order], merged_counts[order]
            starts = np.flatnonzero(np.r_[True, merged_codes[1:] != merged_codes[:-1]])
            codes, counts = merged_codes[starts], np.add.reduceat(merged_counts, starts)
        # The row must be complete, and no column may need more ones than rows remain.
        keep = codes < row_digit
        rows_left = m - row - 1
        if rows_left < n:
            keep &= codes < power[rows_left + 1]
        codes, counts = codes[keep], counts[keep]
        levels[row + 1] = (codes, counts)
    return {depth: levels[depth] for depth in depths}


@functools.cache
def _tau(m: int, n: int) -> int:
    n = min(n, m - n)  # complementing every entry maps n-regular matrices onto (m-n)-regular ones
    if n == 0:
        return 1
    if n == 1:
        return math.factorial(m)  # permutation matrices
    return _count_regular(m, n)


def _count_regular(m: int, n: int) -> int:
    """``tau(m, n)`` by the class dynamic program, for any ``1 <= n <= m`` (no symmetry shortcut)."""
    # Meet in the middle: the first h rows leave column needs a, the last m-h rows must supply exactly a.
    # Counts per *specific* need vector are class counts / multinomial(m; c). A need class c after h rows
    # pairs with the class of "received n-k" after m-h rows, i.e. the reversed class vector.
    first = m // 2 + m % 2
    levels = _level_counts(m, n, (first, m - first))
    codes_a, counts_a = levels[first]
    codes_b, counts_b = levels[m - first]
    base = m + 1
    digits = np.stack([(codes_a // base**k) % base for k in range(n + 1)], axis=1)  # (states, n+1)
    reversed_codes = (digits[:, ::-1] * np.array([base**k for k in range(n + 1)], dtype=np.int64)).sum(axis=1)
    pos = np.minimum(np.searchsorted(codes_b, reversed_codes), len(codes_b) - 1)
    found = codes_b[pos] == reversed_codes
    factorials = np.array([math.factorial(i) for i in range(m + 1)], dtype=object)
    inv_multinomial_times_m_fact = np.prod(factorials[digits[found]], axis=1)  # prod c_k! = m! / multinomial
    total = int(np.sum(counts_a[found] * counts_b[pos[found]] * inv_multinomial_times_m_fact))
    result, remainder = divmod(total, math.factorial(m))
    if remainder:  # pragma: no cover - an internal invariant, not user input
        raise AssertionError(f"transposable_block_count({m}, {n}): non-integral meet-in-the-middle sum")
    return result


def transposable_block_count(m: int, n: int) -> int:
    """Exact number ``tau(m, n)`` of ``m x m`` 0/1 matrices with exactly ``n`` ones in every row and column.

    This is the number of masks one ``m x m`` block may take under ``n:m-T``. Exact integer arithmetic,
    memoised; a dynamic program over column-need classes, row by row, met in the middle after ``ceil(m/2)``
    rows. Every ``n`` at ``m = 16`` takes well under a second (``n = 8``, the slowest, 0.3-0.5 s on one CPU
    core).

    Args:
        m: block side, ``1 <= m <= MAX_EXACT_TRANSPOSABLE_M`` (16); any ``m`` when ``n`` or ``m - n`` is 0
            or 1 (the count is then 1 or ``m!``).
        n: ones per row and per column, ``0 <= n <= m``.

    Returns:
        ``tau(m, n)`` as a Python int. ``tau(m, 1) = m!``, ``tau(m, n) = tau(m, m - n)``.

    Raises:
        ConfigError: for non-integers, ``n`` outside ``[0, m]``, or ``m > 16`` with ``2 <= n <= m - 2`` (the
            message points to :func:`estimate_log10_transposable_block_count`).

    Example:
        >>> transposable_block_count(4, 2)
        90
        >>> transposable_block_count(8, 4)
        116963796250
    """
    side, ones = _check_block_args(m, n, "transposable_block_count", exact=True)
    return _tau(side, ones)


def paper_closed_form_transposable(m: int, n: int) -> int:
    """The paper's closed form for one ``m x m`` block of ``n:m-T``: ``m! (m-1)! ... (m-n+1)!``. NOT a count.

    Hubara et al. give ``(m! (m-1)! ... (m-n+1)!) ** (T / m**2)`` as the mask diversity of ``n:m-T``; per
    block that is ``prod_{k=0}^{n-1} (m-k)!``. It is exact only for ``n <= 1`` (``m!`` permutation matrices).
    It over-counts for every ``n >= 3`` and for ``n = 2`` up to ``m = 9`` (checked for ``m <= 16``), so for
    every pattern with ``n = m/2``: 144 instead of ``tau(4, 2) = 90``, about ``1.8e13`` instead of ``1.2e11``
    for 4:8-T. For ``n = 2`` and ``m >= 10`` it under-counts (``10! 9! = 1.32e12 < tau(10, 2) = 1.37e12``).
    Use :func:`transposable_block_count` for the true count; show this value only labelled as the paper's.

    Args:
        m: block side, ``m >= 1``.
        n: ones per row and column, ``0 <= n <= m``.

    Raises:
        ConfigError: for non-integers or ``n`` outside ``[0, m]``.

    Example:
        >>> paper_closed_form_transposable(4, 2), transposable_block_count(4, 2)
        (144, 90)
    """
    side, ones = _check_block_args(m, n, "paper_closed_form_transposable", exact=False)
    return math.prod(math.factorial(side - k) for k in range(ones))


def _log10_comb(total: int, chosen: int) -> float:
    return (math.lgamma(total + 1) - math.lgamma(chosen + 1) - math.lgamma(total - chosen + 1)) / _LN10


def estimate_log10_transposable_block_count(m: int, n: int) -> float:
    """ESTIMATE of ``log10 tau(m, n)`` by Canfield and McKay's asymptotic formula (not an exact count).

    For ``m x m`` 0/1 matrices with every row and column summing to ``n`` (Canfield & McKay, "Asymptotic
    enumeration of dense 0-1 matrices with equal row sums and equal column sums", Electron. J. Combin. 12,
    2005):
    ``tau(m, n) ~ C(m, n) ** (2 m) / C(m**2, n m) * exp(-1/2)``, evaluated here with ``lgamma``. It is exact
    for ``n`` in ``{0, m}`` (returns 0.0).

    Accuracy, measured against the exact counts for every ``1 <= n < m`` (``tests/unit/test_diversity.py``):
    it under-estimates ``tau`` by at most 6.0% at ``m = 8``, 4.1% at ``m = 12`` and 3.1% at ``m = 16``
    (``log10`` low by at most 0.027, 0.018, 0.014), the error shrinking roughly like ``1 / (2 m)``; expect
    about 1.5% at ``m = 32``.

    Args:
        m: block side, ``m >= 1`` (any size).
        n: ones per row and column, ``0 <= n <= m``.

    Raises:
        ConfigError: for non-integers or ``n`` outside ``[0, m]``.

    Example:
        >>> import math
        >>> round(estimate_log10_transposable_block_count(8, 4), 2), round(math.log10(116963796250), 2)
        (11.04, 11.07)
    """
    side, ones = _check_block_args(m, n, "estimate_log10_transposable_block_count", exact=False)
    if ones in (0, side):
        return 0.0
    return 2 * side * _log10_comb(side, ones) - _log10_comb(side * side, ones * side) - 0.5 / _LN10


# ----------------------------------------------------------------------------------------------------------
# Mask diversity of a tensor
# ----------------------------------------------------------------------------------------------------------


def mask_diversity(pattern: str | NMPattern, numel: int, *, density: float | None = None) -> int:
    """Exact number of masks a constraint allows for a tensor of ``numel`` weights.

    * ``"unstructured"``: ``C(numel, kept)`` with ``kept = numel * density`` (default density 0.5). ``kept``
      must be a whole number (within ``1e-9`` relative, to absorb float rounding such as ``0.1 * 30``): a
      density that would have to be rounded changes the sparsity being compared, so it is refused.
    * plain ``n:m``: ``C(m, n) ** (numel / m)``; ``numel`` must be a multiple of ``m``.
    * ``n:m-T``: ``tau(m, n) ** (numel / m**2)``; ``numel`` must be a multiple of ``m**2`` (whole blocks).

    Every count is of masks keeping exactly the stated number per group, row and column (the paper's
    definition, at a fixed sparsity). The integer grows with the tensor (``6 ** (numel / 4)`` for 2:4, about
    0.65 bits per weight): for large tensors prefer :func:`log10_mask_diversity`. The count assumes the
    tensor's matrix view tiles into whole groups (and, for ``-T``, whole ``m x m`` blocks).

    Args:
        pattern: ``"unstructured"``, ``"n:m"``, ``"n:m-T"`` or an :class:`~nmsparse.NMPattern`.
        numel: number of weights in the tensor, ``> 0``.
        density: fraction of weights kept, in ``(0, 1]``. Only for ``"unstructured"``; for ``n:m`` patterns it
            must be ``None`` or equal ``n / m``.

    Returns:
        The exact mask diversity, a Python int.

    Raises:
        PatternError: for a pattern string that is not one of the accepted forms.
        ShapeError: when ``numel <= 0`` or a tensor of ``numel`` weights cannot take the constraint (not a
            multiple of ``m`` or ``m**2``, or ``numel * density`` not an integer).
        ConfigError: for a density outside ``(0, 1]``, a density that contradicts ``n / m``, non-integer
            ``numel``, or a transposable ``m > 16`` with ``2 <= n <= m - 2`` (use
            :func:`estimate_log10_mask_diversity`).

    Example:
        >>> mask_diversity("2:4", 64), mask_diversity("4:8-T", 64), mask_diversity("2:4-T", 64)
        (2821109907456, 116963796250, 65610000)
        >>> mask_diversity("unstructured", 8, density=0.25)
        28
    """
    spec = _resolve(pattern, numel, density, "mask_diversity")
    if spec.pattern is None:
        return math.comb(spec.numel, spec.kept)
    m, n = spec.pattern.m, spec.pattern.n
    if not spec.pattern.transposable:
        return int(math.comb(m, n) ** (spec.numel // m))  # int ** int is typed Any (negative powers)
    _check_block_args(m, n, f"mask_diversity({spec.pattern})", exact=True)
    return int(_tau(m, n) ** (spec.numel // (m * m)))


def log10_mask_diversity(pattern: str | NMPattern, numel: int, *, density: float | None = None) -> float:
    """``log10`` of :func:`mask_diversity`, computed from the exact per-group counts without building ``MD``.

    ``(numel / m) * log10(C(m, n))`` and ``(numel / m**2) * log10(tau(m, n))``, with ``math.log10`` of the
    exact (possibly huge) integer, which never overflows a float. For ``"unstructured"`` the exact binomial is
    used up to 4096 weights and ``lgamma`` above (absolute error around ``1e-8``). Same arguments and errors
    as :func:`mask_diversity`.

    Example:
        >>> round(log10_mask_diversity("2:4-T", 64), 3), round(log10_mask_diversity("2:4", 10**9), 1)
        (7.817, 194537812.6)
    """
    spec = _resolve(pattern, numel, density, "log10_mask_diversity")
    if spec.pattern is None:
        if spec.numel <= _EXACT_UNSTRUCTURED_LOG10_MAX_NUMEL:
            return math.log10(math.comb(spec.numel, spec.kept))
        return _log10_comb(spec.numel, spec.kept)
    m, n = spec.pattern.m, spec.pattern.n
    if not spec.pattern.transposable:
        return spec.numel // m * math.log10(math.comb(m, n))
    _check_block_args(m, n, f"log10_mask_diversity({spec.pattern})", exact=True)
    return spec.numel // (m * m) * math.log10(_tau(m, n))


def estimate_log10_mask_diversity(pattern: str | NMPattern, numel: int, *, density: float | None = None) -> float:
    """ESTIMATE of ``log10`` mask diversity, for transposable patterns of any block size (e.g. 16:32-T).

    Transposable patterns use :func:`estimate_log10_transposable_block_count` per block (Canfield-McKay; it
    under-estimates ``tau`` by a few percent per block, see there), for every ``m``, even where the exact
    count is available. Plain ``n:m`` and unstructured need no estimate: they return
    :func:`log10_mask_diversity`. Same arguments and errors as :func:`mask_diversity`, except that ``m > 16``
    is accepted.

    Example:
        >>> round(estimate_log10_mask_diversity("16:32-T", 1024), 1)
        255.0
    """
    spec = _resolve(pattern, numel, density, "estimate_log10_mask_diversity")
    if spec.pattern is None or not spec.pattern.transposable:
        return log10_mask_diversity(pattern, numel, density=density)
    m, n = spec.pattern.m, spec.pattern.n
    return spec.numel // (m * m) * estimate_log10_transposable_block_count(m, n)


@dataclass(frozen=True)
class DiversitySummary:
    """Mask diversity of one constraint for one tensor size, as :func:`diversity_summary` reports it.

    Attributes:
        structure: ``"unstructured"`` or the pattern, e.g. ``"4:8-T"``.
        density: fraction of weights kept.
        numel: number of weights.
        status: ``"exact"`` (exact count), ``"estimate"`` (transposable block too large to count exactly:
            Canfield-McKay estimate, ``mask_diversity`` is None) or ``"n/a"`` (the constraint cannot apply to
            ``numel`` weights; see ``reason``).
        reason: why the row is ``"estimate"`` or ``"n/a"``; ``None`` for exact rows.
        mask_diversity: the exact count, or ``None`` (estimate, n/a, or more digits than the caller allowed).
        log10_mask_diversity: ``log10`` of the count (of the estimate for ``"estimate"`` rows), or ``None``.
        paper_closed_form: transposable rows only: the paper's closed form for the whole tensor (wrong for
            ``n >= 2``, see :func:`paper_closed_form_transposable`),
            ``(prod_{k<n} (m-k)!) ** (numel / m**2)``, or ``None`` (as for ``mask_diversity``).
        log10_paper_closed_form: its ``log10``, or ``None`` for non-transposable and n/a rows.
    """

    structure: str
    density: float
    numel: int
    status: Literal["exact", "estimate", "n/a"]
    reason: str | None = None
    mask_diversity: int | None = None
    log10_mask_diversity: float | None = None
    paper_closed_form: int | None = None
    log10_paper_closed_form: float | None = None


def diversity_summary(
    pattern: str | NMPattern,
    numel: int,
    *,
    density: float | None = None,
    max_digits: int | None = 10_000,
) -> DiversitySummary:
    """Mask diversity of one constraint for a tensor of ``numel`` weights, never failing on a size mismatch.

    Unlike :func:`mask_diversity`, a constraint that cannot apply to ``numel`` weights gives an ``"n/a"``
    summary with the reason, and a transposable block larger than 16 gives a labelled ``"estimate"``. Bad
    arguments (pattern string, density, ``numel <= 0``) still raise, as in :func:`mask_diversity`.

    Args:
        pattern: ``"unstructured"``, ``"n:m"``, ``"n:m-T"`` or an :class:`~nmsparse.NMPattern`.
        numel: number of weights, ``> 0``.
        density: as in :func:`mask_diversity`.
        max_digits: build the exact integers (``mask_diversity``, ``paper_closed_form``) only when they have
            at most about this many decimal digits (their ``log10`` is always given); ``None`` for no limit.
            Exact integers cost time and memory in proportion to ``numel``.

    Example:
        >>> s = diversity_summary("2:4-T", 64)
        >>> s.status, s.mask_diversity, s.paper_closed_form
        ('exact', 65610000, 429981696)
        >>> diversity_summary("16:32-T", 64).reason
        'numel not a multiple of m^2 = 1024'
    """
    where = "diversity_summary"
    parsed = _parse_pattern(pattern, where)
    count = _check_numel(numel, where)
    if max_digits is not None:
        max_digits = _check_int(max_digits, "max_digits", where)
    name = _UNSTRUCTURED if parsed is None else str(parsed)
    value = _check_density(density, where)
    shown_density = value if value is not None else (DEFAULT_UNSTRUCTURED_DENSITY if parsed is None else parsed.density)
    try:
        spec = _resolve(pattern, count, density, where)
    except ShapeError:
        problem = _fit_problem(parsed, count, shown_density)
        if problem is None:  # pragma: no cover - _resolve raises ShapeError only for a fit problem here
            raise
        return DiversitySummary(name, shown_density, count, "n/a", reason=problem[0])

    def small_enough(log10_value: float) -> bool:
        return max_digits is None or log10_value < max_digits

    if spec.pattern is not None and spec.pattern.transposable:
        m, n = spec.pattern.m, spec.pattern.n
        blocks = count // (m * m)
        paper_block = paper_closed_form_transposable(m, n)
        log10_paper = blocks * math.log10(paper_block)
        paper = paper_block**blocks if small_enough(log10_paper) else None
        if not _exact_supported(m, n):
            return DiversitySummary(
                name,
                spec.density,
                count,
                "estimate",
                reason=(
                    f"exact counts need m <= {MAX_EXACT_TRANSPOSABLE_M} (or n, m - n <= 1); Canfield-McKay "
                    f"asymptotic estimate"
                ),
                log10_mask_diversity=estimate_log10_mask_diversity(spec.pattern, count),
                paper_closed_form=paper,
                log10_paper_closed_form=log10_paper,
            )
        log10_md = log10_mask_diversity(spec.pattern, count)
        exact = _tau(m, n) ** blocks if small_enough(log10_md) else None
        return DiversitySummary(
            name,
            spec.density,
            count,
            "exact",
            mask_diversity=exact,
            log10_mask_diversity=log10_md,
            paper_closed_form=paper,
            log10_paper_closed_form=log10_paper,
        )
    log10_md = log10_mask_diversity(pattern, count, density=density)
    exact = mask_diversity(pattern, count, density=density) if small_enough(log10_md) else None
    return DiversitySummary(name, spec.density, count, "exact", mask_diversity=exact, log10_mask_diversity=log10_md)
