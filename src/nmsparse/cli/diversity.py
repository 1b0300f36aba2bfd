"""``nmsparse diversity``: exact mask diversity of several sparsity constraints for one tensor size."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Iterator

from ..diversity import MAX_EXACT_TRANSPOSABLE_M, DiversitySummary, diversity_summary
from ..errors import ConfigError
from ._table import format_table

#: The paper's comparison: every constraint at 50% density (1:2 up to 16:32-T), then the same at 25%.
DEFAULT_STRUCTURES = "unstructured,1:2,2:4,4:8,8:16,2:4-T,4:8-T,8:16-T,16:32-T,unstructured@25%,1:4,1:4-T"

#: Exact integers with at most this many digits are printed in full; longer ones in scientific notation.
FULL_DIGITS = 20

PAPER_HEADER = "paper closed form (over-counts)"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "diversity",
        help="exact mask diversity (number of allowed masks) of n:m, n:m-T and unstructured sparsity",
        description=(
            "Count the masks each constraint allows for a tensor of NUMEL weights (mask diversity, "
            "Hubara et al. 2021): unstructured C(numel, kept), n:m C(m,n)^(numel/m), n:m-T "
            "tau(m,n)^(numel/m^2) with tau the number of m x m 0/1 matrices with n ones per row and column. "
            f"Counts are exact; transposable blocks larger than {MAX_EXACT_TRANSPOSABLE_M} get a "
            "Canfield-McKay estimate marked '~'. The last column is the paper's closed form for n:m-T: exact "
            "only for n = 1, it over-counts every n = m/2 pattern (and under-counts 2:m-T for m >= 10, "
            "marked); shown for comparison only."
        ),
    )
    parser.add_argument(
        "--numel",
        type=int,
        default=64,
        help="number of weights in the tensor (default: 64, the paper's example)",
    )
    parser.add_argument(
        "--structures",
        default=DEFAULT_STRUCTURES,
        metavar="LIST",
        help="comma-separated constraints: 'unstructured' (50%% kept), 'unstructured@25%%' or "
        "'unstructured@0.25', 'N:M', 'N:M-T' (default: %(default)s)",
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help=f"print exact integers in full, however long (default: in full up to {FULL_DIGITS} "
        f"digits, else scientific notation)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print machine-readable rows (exact integers as decimal strings) instead of a table",
    )
    return parser


def _parse_structures(text: str) -> list[tuple[str, float | None]]:
    """``"unstructured@25%,2:4"`` -> ``[("unstructured", 0.25), ("2:4", None)]``."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ConfigError(f"diversity: --structures is empty ({text!r}); give e.g. 'unstructured,2:4,4:8-T'")
    parsed: list[tuple[str, float | None]] = []
    for item in items:
        spec, sep, density_text = item.partition("@")
        density: float | None = None
        if sep:
            text_value = density_text.strip()
            try:
                density = float(text_value[:-1]) / 100 if text_value.endswith("%") else float(text_value)
            except ValueError:
                raise ConfigError(
                    f"diversity: cannot read the density in {item!r}; write it as a fraction or a "
                    f"percentage, e.g. 'unstructured@0.25' or 'unstructured@25%'"
                ) from None
        parsed.append((spec.strip(), density))
    return parsed


def _scientific(value: int) -> str:
    """Exact 3-significant-digit rendering of a positive int, e.g. ``116963796250 -> '1.17e11'``."""
    if value < 1000:
        return str(value)
    exponent = int(math.log10(value))  # may be off by one for huge values: fixed below
    while 10**exponent > value:
        exponent -= 1
    while 10 ** (exponent + 1) <= value:
        exponent += 1
    scale = 10 ** (exponent - 2)
    lead, rest = divmod(value, scale)
    if 2 * rest >= scale:
        lead += 1
    if lead == 1000:
        lead, exponent = 100, exponent + 1
    return f"{lead // 100}.{lead % 100:02d}e{exponent}"


def _scientific_from_log10(log10_value: float) -> str:
    exponent = math.floor(log10_value)
    mantissa = round(10 ** (log10_value - exponent), 2)
    if mantissa >= 10:
        mantissa, exponent = mantissa / 10, exponent + 1
    return f"{mantissa:.2f}e{exponent}"


def _number(value: int | None, log10_value: float | None, *, full: bool) -> str:
    if value is not None:
        return str(value) if full or value < 10**FULL_DIGITS else _scientific(value)
    return "" if log10_value is None else _scientific_from_log10(log10_value)


def _table_cells(row: DiversitySummary, *, full: bool) -> list[str]:
    density = f"{100 * row.density:g}%"
    if row.status == "n/a":
        return [row.structure, density, f"n/a: {row.reason}", "", ""]
    paper = _number(row.paper_closed_form, row.log10_paper_closed_form, full=full)
    assert row.log10_mask_diversity is not None  # exact and estimate rows always carry it
    if row.status == "estimate":
        md = f"~{_scientific_from_log10(row.log10_mask_diversity)} (estimate)"
        return [row.structure, density, md, f"~{row.log10_mask_diversity:.2f}", paper]
    md = _number(row.mask_diversity, row.log10_mask_diversity, full=full)
    if paper and row.log10_paper_closed_form is not None:
        paper += _paper_verdict(row)
    return [row.structure, density, md, f"{row.log10_mask_diversity:.2f}", paper]


def _paper_verdict(row: DiversitySummary) -> str:
    """The column header says 'over-counts'; flag the rows where the paper's form is exact or too small."""
    if row.mask_diversity is not None and row.paper_closed_form is not None:
        order = (row.paper_closed_form > row.mask_diversity) - (row.paper_closed_form < row.mask_diversity)
    else:
        assert row.log10_paper_closed_form is not None and row.log10_mask_diversity is not None
        gap = row.log10_paper_closed_form - row.log10_mask_diversity
        order = 0 if abs(gap) < 1e-9 * max(1.0, row.log10_mask_diversity) else (1 if gap > 0 else -1)
    return {1: "", 0: " (= MD)", -1: " (under-counts here)"}[order]


def _json_row(row: DiversitySummary) -> dict[str, object]:
    short = None
    if row.mask_diversity is not None:
        short = _scientific(row.mask_diversity)
    elif row.log10_mask_diversity is not None:
        short = _scientific_from_log10(row.log10_mask_diversity)
    return {
        "structure": row.structure,
        "density": row.density,
        "status": row.status,
        "reason": row.reason,
        "mask_diversity": None if row.mask_diversity is None else str(row.mask_diversity),
        "mask_diversity_short": short,
        "log10_mask_diversity": row.log10_mask_diversity,
        "paper_closed_form": None if row.paper_closed_form is None else str(row.paper_closed_form),
        "log10_paper_closed_form": row.log10_paper_closed_form,
    }


@contextlib.contextmanager
def _unlimited_int_digits() -> Iterator[None]:
    """Python >= 3.11 refuses str() of ints over 4300 digits by default; exact counts can be longer."""
    getter = getattr(sys, "get_int_max_str_digits", None)
    if getter is None:
        yield
        return
    previous = getter()
    sys.set_int_max_str_digits(0)
    try:
        yield
    finally:
        sys.set_int_max_str_digits(previous)


def run(args: argparse.Namespace) -> int:
    if args.numel <= 0:
        raise ConfigError(f"diversity: --numel must be a positive number of weights, got {args.numel}; e.g. --numel 64")
    structures = _parse_structures(args.structures)
    max_digits = None if args.full else 10_000
    rows = [diversity_summary(spec, args.numel, density=density, max_digits=max_digits) for spec, density in structures]
    with _unlimited_int_digits():
        if args.json:
            print(json.dumps({"numel": args.numel, "rows": [_json_row(r) for r in rows]}, indent=2))
            return 0
        headers = ["structure", "density", "exact MD", "log10(MD)", PAPER_HEADER]
        print(f"mask diversity (MD): number of masks each constraint allows for {args.numel} weights")
        # Names and reasons read left to right; numbers line up on the right.
        print(
            format_table(
                headers,
                [_table_cells(r, full=args.full) for r in rows],
                align="llrrr",
                left_if=lambda cell: cell.startswith("n/a"),
            )
        )
    notes = ["exact counts of masks keeping exactly the stated density (n per group; per block row and column for -T)"]
    if any(r.status == "estimate" for r in rows):
        notes.append(
            f"'~' = Canfield-McKay asymptotic estimate (exact counts need m <= {MAX_EXACT_TRANSPOSABLE_M} "
            f"unless n or m - n <= 1; the estimate runs a few percent low per block)"
        )
    if any(r.paper_closed_form is not None or r.log10_paper_closed_form is not None for r in rows):
        notes.append(
            "paper closed form: prod_{k<n} (m-k)! per block; not a count (exact only for n = 1), shown for comparison"
        )
    print("\n".join(f"note: {n}" for n in notes))
    return 0
