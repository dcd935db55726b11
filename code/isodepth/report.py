"""Render numbers for the paper: LaTeX macros (numbers.tex) and booktabs tables.

Rounding happens only here, at rendering; the JSON results keep full precision.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from .io import atomic_write_text

_MACRO_NAME = re.compile(r"^[A-Za-z]+$")


def fmt(value: float, digits: int = 3) -> str:
    """Fixed-point with `digits` decimals; NaN renders as an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "--"
    return f"{value:.{digits}f}"


def fmt_sci(value: float, digits: int = 2) -> str:
    """Scientific notation for LaTeX, e.g. 4.00e11 -> 4.00\\times10^{11} (math mode)."""
    mantissa, exponent = f"{value:.{digits}e}".split("e")
    return f"{mantissa}\\times 10^{{{int(exponent)}}}"


def fmt_int(value: int) -> str:
    """Integer with thin-space thousands separators for LaTeX."""
    return f"{int(value):,}".replace(",", "\\,")


def write_numbers(path: Path, numbers: dict[str, str], header: str = "") -> None:
    """Write one \\newcommand per number; names must be letters only (LaTeX macro rules)."""
    lines = ["% Generated file: do not edit. " + header.strip()]
    for name, value in sorted(numbers.items()):
        if not _MACRO_NAME.match(name):
            raise ValueError(f"macro name {name!r} must contain letters only")
        lines.append(f"\\newcommand{{\\{name}}}{{{value}}}")
    atomic_write_text(path, "\n".join(lines) + "\n")


def booktabs(columns: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """Render a booktabs tabular with a header row from cells that are already formatted strings."""
    align = align or "l" + "r" * (len(columns) - 1)
    out = [f"\\begin{{tabular}}{{{align}}}", "\\toprule", " & ".join(columns) + " \\\\", "\\midrule"]
    for row in rows:
        if row == ["\\midrule"]:
            out.append("\\midrule")
            continue
        out.append(" & ".join(row) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(out) + "\n"
