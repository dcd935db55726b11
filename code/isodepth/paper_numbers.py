"""Macros that describe a grid and its runs in the paper (depth, widths, budgets, tokens)."""

from __future__ import annotations

import math

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
    partial = runs["budget"].nunique() - len(complete)
    if len(complete) == len(budgets):
        coverage = "every planned run"
    elif partial == 0:
        coverage = f"every run of the lowest {len(complete)} budgets"
    else:
        coverage = (f"every run of the lowest {len(complete)} budgets and part of the next"
                    + ("" if partial == 1 else f" {partial}"))
    trained_widths = sorted(runs["d_model"].unique()) if len(runs) else widths[:1]
    trained_budgets = sorted(runs["budget"].unique()) if len(runs) else budgets[:1]
    study_grid = load_grid("paper")
    study = sorted(study_grid.budgets)
    n_micro = sorted({r.n_once + r.n_rec for r in planned})
    n_study = sorted({r.n_once + r.n_rec for r in study_grid.runs()})
    # How many times more unique parameters the study's models have, at the smallest and largest N.
    param_gaps = sorted((n_study[0] / n_micro[0], n_study[-1] / n_micro[-1]))
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
        "microTrainedWidthMin": str(int(trained_widths[0])),
        "microTrainedWidthMax": str(int(trained_widths[-1])),
        # Spans of compute (largest over smallest budget), trained here and on the study's grid.
        "microTrainedSpan": f"{trained_budgets[-1] / trained_budgets[0]:.0f}",
        "pubBudgetSpan": f"{study[-1] / study[0]:.0f}",
        # How much more compute the study's smallest budget has than ours, as a power of ten.
        "microComputeGap": f"$10^{{{round(math.log10(study[0] / budgets[0]))}}}$",
        "microParamGapMin": fmt_int(round(param_gaps[0])),
        "microParamGapMax": fmt_int(round(param_gaps[-1])),
        "microNumBudgets": str(len(budgets)),
        "microBudgetMin": f"${fmt_sci(budgets[0])}$",
        "microBudgetMax": f"${fmt_sci(budgets[-1])}$",
        "microPlannedRuns": str(len(planned)),
        "microMinSteps": fmt_int(min(r.steps for r in planned)),
        "microMaxTokens": fmt_int(max(r.tokens for r in planned)),
        "microNumRuns": str(len(runs)),
        "microMissingRuns": str(len(planned) - len(trained & {r.run_id for r in planned})),
        "microTrainedBudgets": str(runs["budget"].nunique()),
        "microValTokens": fmt_int(int(runs["validation_tokens"].max())),
        "microCPUHours": f"{runs['train_time_s'].sum() / 3600:.1f}",
    }
