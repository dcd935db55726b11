"""One figure style for every plot: Agg backend, bundled DejaVu fonts embedded as TrueType."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

R_COLORS = {1: "#222222", 2: "#1f77b4", 4: "#2ca02c", 8: "#d62728"}
R_MARKERS = {1: "o", 2: "s", 4: "^", 8: "D"}
R_LINESTYLES = {1: "-", 2: "--", 4: "-.", 8: ":"}

RC = {
    "font.family": "DejaVu Sans",
    "font.size": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "pdf.fonttype": 42,  # TrueType, so the PDF embeds real fonts
    "ps.fonttype": 42,
    "savefig.bbox": "tight",
    "figure.dpi": 150,
}


def apply() -> None:
    plt.rcParams.update(RC)


def log_axis(axis, minor_labels: bool = True) -> None:
    """Label a log axis even when it spans less than a decade (matplotlib leaves it bare then)."""
    axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.LogFormatterSciNotation(base=10, labelOnlyBase=False))
    if minor_labels:
        axis.set_minor_locator(ticker.LogLocator(base=10, subs="auto"))
        axis.set_minor_formatter(ticker.NullFormatter())


def plain_log_axis(axis, fmt: str = "{x:.2f}") -> None:
    """Log axis with plain decimal labels, for quantities like loss that span a narrow range."""
    axis.set_major_locator(ticker.LogLocator(base=10, subs=tuple(range(1, 10)), numticks=12))
    axis.set_major_formatter(ticker.StrMethodFormatter(fmt))
    axis.set_minor_formatter(ticker.NullFormatter())


def budget_palette(budgets) -> dict:
    """Distinct colours per compute budget, in budget order."""
    import seaborn as sns

    ordered = sorted(budgets)
    colors = sns.color_palette("viridis", n_colors=len(ordered))
    return {b: colors[i] for i, b in enumerate(ordered)}
