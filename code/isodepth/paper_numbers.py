"""Macros that describe a grid and its runs in the paper (depth, widths, budgets, tokens)."""

from __future__ import annotations

import pandas as pd

from .grids import load_grid
from .report import fmt_int, fmt_sci


def grid_macros(grid_name: str, runs: pd.DataFrame) -> dict[str, str]:
    """Numbers of the grid design (from its spec) and of the trained runs (from the run table)."""
    grid = load_grid(grid_name)
    planned = grid.runs()
    arch = grid.spec["model"]
    widths = sorted({r.model.d_model for r in planned})
    budgets = sorted(grid.budgets)
    trained = set(runs["run_id"]) if "run_id" in runs.columns else set()
    complete = [b for b in budgets if all(r.run_id in trained for r in planned if r.budget == b)]
    if len(complete) == len(budgets):
        coverage = "every planned run"
    elif len(complete) == runs["budget"].nunique():
        coverage = f"every run of the lowest {len(complete)} budgets"
    else:
        coverage = f"every run of the lowest {len(complete)} budgets and part of the next"
    return {
        "microCompleteBudgets": str(len(complete)),
        "microCoverage": coverage,
        "microDepth": str(arch["effective_depth"]),
        "microPrelude": str(arch["n_prelude"]),
        "microCoda": str(arch["n_coda"]),
        "microRecurLayers": str(arch["effective_depth"] - arch["n_prelude"] - arch["n_coda"]),
        "microHeadDim": str(arch["head_dim"]),
        "microWidthPerSize": str(arch["width_per_size"]),
        "microVocab": fmt_int(arch["vocab_size"]),
        "microSeqLen": str(arch["seq_len"]),
        "microTokensPerStep": fmt_int(planned[0].tokens_per_step),
        "microWidthMin": str(widths[0]),
        "microWidthMax": str(widths[-1]),
        "microNumBudgets": str(len(budgets)),
        "microBudgetMin": f"${fmt_sci(budgets[0])}$",
        "microBudgetMax": f"${fmt_sci(budgets[-1])}$",
        "microPlannedRuns": str(len(planned)),
        "microMinSteps": fmt_int(min(r.steps for r in planned)),
        "microMaxTokens": fmt_int(max(r.tokens for r in planned)),
        "microNumRuns": str(len(runs)),
        "microTrainedBudgets": str(runs["budget"].nunique()),
        "microValTokens": fmt_int(int(runs["validation_tokens"].max())),
        "microCPUHours": f"{runs['train_time_s'].sum() / 3600:.1f}",
    }
