"""Small text helpers shared by the commands and the report: percentages and plain tables."""

from __future__ import annotations


def pct(x, digits: int = 2) -> str:
    """0.9961 -> '99.61%'; None -> 'n/a'."""
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A plain left-aligned text table with a dashed rule under the header."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*map(str, r)).rstrip() for r in rows]
    return "\n".join(line.rstrip() for line in lines)
