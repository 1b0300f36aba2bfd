"""Plain-text tables for command output (no dependency)."""

from __future__ import annotations

from collections.abc import Sequence


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, align: str | None = None) -> str:
    """Render ``rows`` under ``headers`` with aligned columns; ``align`` is one 'l'/'r' per column (default:
    first column left, the rest right).

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
        parts = [v.ljust(w) if a == "l" else v.rjust(w) for v, w, a in zip(values, widths, align)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(list(headers)), line(["-" * w for w in widths]), *(line(r) for r in cells)])
