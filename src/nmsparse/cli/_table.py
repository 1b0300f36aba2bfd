"""Plain-text tables for command output (no dependency)."""

from __future__ import annotations

from collections.abc import Callable, Sequence


def format_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    align: str | None = None,
    left_if: Callable[[str], bool] | None = None,
) -> str:
    """Render ``rows`` under ``headers`` with aligned columns; ``align`` is one 'l'/'r' per column (default:
    first column left, the rest right); cells for which ``left_if(cell)`` is true are left-aligned whatever
    their column (e.g. a note in a column of numbers).

    Example:
        >>> print(format_table(["name", "n"], [["a", 1], ["bb", 22]]))
        name   n
        ----  --
        a      1
        bb    22
    """
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    align = align or "l" + "r" * (len(headers) - 1)

    def line(values: Sequence[str]) -> str:
        parts = [
            v.ljust(w) if a == "l" or (left_if is not None and left_if(v)) else v.rjust(w)
            for v, w, a in zip(values, widths, align, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(list(headers)), line(["-" * w for w in widths]), *(line(r) for r in cells)])
