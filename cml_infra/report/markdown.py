"""The bits of GitHub-flavoured markdown the report writes: table cells and tables, numbers.

Everything that reaches a cell passes `cell`: a value from a metrics file or a workflow name
may hold a `|` or a line break, which would otherwise end the cell or the table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# Floats keep this many significant digits, and never fewer than their integer digits: enough
# to tell two runs apart, without the tail of binary arithmetic (0.30000000000000004).
SIGNIFICANT = 6


def cell(value: object) -> str:
    """`value` as the text of one table cell."""
    text = " ".join(str(value).split())
    return text.replace("\\", "\\\\").replace("|", "\\|") or " "


def table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """A table; the columns numbered in `right` (numbers) are aligned right. Cells are taken
    as they are: pass text through `cell` first."""
    rule = ["---:" if index in right else "---" for index in range(len(header))]
    lines = [header, rule, *rows]
    return "".join("| " + " | ".join(line) + " |\n" for line in lines)


def number(value: float) -> str:
    """An int as it is; a float with SIGNIFICANT digits, trailing zeros dropped (2.50 → 2.5,
    2.0 → 2), in exponent form only when it is tiny or huge."""
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)  # nan, inf, -inf
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    if magnitude < -4 or magnitude >= 15:
        return f"{value:.{SIGNIFICANT}g}"
    decimals = max(0, SIGNIFICANT - 1 - magnitude)
    text = f"{value:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def signed(value: float) -> str:
    """A change: `number` with its sign, + included."""
    text = number(value)
    return text if text.startswith(("-", "nan")) or text == "0" else f"+{text}"


def money(usd: float) -> str:
    """Dollars as `status` shows them (four decimals: a few minutes of a GPU cost cents)."""
    return f"${usd:.4f}"
