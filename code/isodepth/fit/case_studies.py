"""Refits of the case studies (truncated BPTT, hyperconnections, injection ablation) on partial grids.

Each case-study table is a run table written by `isodepth collect <grid> --coverage ...`,
whose coverage JSON names the planned runs that have no usable record yet. A refit with too
few runs is returned as a "missing" entry that counts the trained and planned runs,
so the notebooks render what exists instead of failing while a grid is still in training.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .bootstrap import block_bootstrap
from .fits import fit_joint, joint_residuals
from .io import MIN_RUNS, RunTableError, validate_runs
from .isoflops import isoflops_profiles

log = logging.getLogger(__name__)

FITTED, MISSING = "fitted", "missing"


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a collected run table; a header-only CSV (nothing trained yet) gives an empty frame."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"run table {path} not found; build it with `isodepth collect <grid> --out {path}`")
    return pd.read_csv(path)


def read_coverage(path: str | Path, grid: str) -> dict:
    """Return the coverage entry of one grid from a JSON written by `isodepth collect --coverage`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"coverage file {path} not found; write it with "
                                f"`isodepth collect {grid} --coverage {path}`")
    for entry in json.loads(path.read_text())["grids"]:
        if entry["grid"] == grid:
            return entry
    raise ValueError(f"coverage file {path} has no entry for grid {grid!r}; collect that grid into it")


def planned_count(coverage: dict, *, recurrences=None, budgets=None) -> int:
    """Count the planned runs of a coverage entry, optionally only those at the given r and budgets (FLOPs)."""
    count = 0
    for run in coverage["runs"]:
        if recurrences is not None and run["r"] not in recurrences:
            continue
        if budgets is not None and not any(np.isclose(run["budget"], b, rtol=1e-3) for b in budgets):
            continue
        count += 1
    return count


def refit(runs: pd.DataFrame, label: str, n_planned: int, *, convention: str, n_starts: int,
          n_bootstrap: int, n_bootstrap_starts: int, seed: int = 0, min_runs: int = MIN_RUNS) -> dict:
    """Fit the joint law with phi free and block-bootstrap phi, or report why the runs do not suffice.

    Returns a JSON-ready dict with status "fitted" (params, R^2, the phi interval, per-run
    predictions) or "missing" (the runs there are, the runs planned, and the reason).
    """
    n_runs = len(runs)
    base = {"label": label, "n_runs": n_runs, "n_planned": int(n_planned)}
    looped = int((runs["r"] > 1).sum()) if n_runs else 0
    if n_runs < min_runs or looped == 0 or runs["r"].nunique() < 2:
        reason = f"{n_runs} of {n_planned} runs trained ({looped} looped); the refit needs at least {min_runs} " \
                 "runs at two or more r"
        log.warning("%s: no refit, %s", label, reason)
        return {**base, "status": MISSING, "reason": reason}
    try:
        runs = validate_runs(runs, source=label, min_runs=min_runs)
    except RunTableError as err:
        log.warning("%s: no refit, %s", label, err)
        return {**base, "status": MISSING, "reason": str(err)}

    fit = fit_joint(runs, convention=convention, n_starts=n_starts, seed=seed, label=label)
    interval = None
    if n_bootstrap > 0 and runs.groupby(["budget", "r"]).ngroups >= 2:
        boot = block_bootstrap(runs, convention=convention, n_resamples=n_bootstrap, seed=seed,
                               n_starts=n_bootstrap_starts, start_seed=seed)
        phi = boot.intervals()["phi"]
        interval = {"low": phi["low"], "high": phi["high"], "n_resamples": boot.n_resamples,
                    "n_starts": n_bootstrap_starts, "n_cells": boot.n_cells,
                    "statuses": boot.to_dict()["resample_statuses"]}
    residuals = joint_residuals(runs, fit)
    predictions = [
        {"grid": grid, "run_id": run_id, "r": int(r), "budget": float(budget), "loss": float(loss),
         "predicted": float(loss - item["residual"])}
        for grid, run_id, r, budget, loss, item in zip(runs["grid"], runs["run_id"], runs["r"], runs["budget"],
                                                       runs["loss"], residuals["runs"])
    ]
    return {**base, "status": FITTED, "params": fit.params.to_dict(), "r2": fit.r2, "fit_status": fit.status,
            "n_cells": fit.n_cells, "recurrences": sorted(int(r) for r in runs["r"].unique()),
            "phi_ci95": interval, "rmse_nats": fit.rmse_nats, "predictions": predictions,
            "details": fit.to_dict()}


def isoflops_table(runs: pd.DataFrame) -> list[dict]:
    """Fit the iso-FLOPs quadratic of every (budget, r) cell, in the form notebooks/fit.ipynb writes them
    (coefficients highest power first, for numpy.polyval in ln N)."""
    if runs.empty:
        return []
    out = []
    for cell in isoflops_profiles(runs):
        out.append({
            "budget": cell.budget, "r": cell.r, "n_min": cell.n_min, "n_max": cell.n_max, "n_runs": cell.n_runs,
            "coefficients": None if cell.coefficients is None else [cell.coefficients[2], cell.coefficients[1],
                                                                     cell.coefficients[0]],
            "optimum": {"n": cell.n_opt, "loss": cell.loss_opt} if cell.has_optimum else None,
            "reason": cell.reason,
        })
    return out


def ablation_rows(runs: pd.DataFrame, coverage: dict) -> list[dict]:
    """Build one row per injection mode of the ablation: planned tokens, final validation loss (nats), state.

    The loss is None unless the run was collected; state is collected, missing (not trained
    yet) or excluded (diverged or unfinished, with the reason).
    """
    losses = {(row.grid, row.run_id): (float(row.loss), int(row.tokens)) for row in runs.itertuples()}
    rows = []
    for run in coverage["runs"]:
        loss, tokens = losses.get((run["grid"], run["run_id"]), (None, run["tokens"]))
        rows.append({"mode": run["injection"], "grid": run["grid"], "run_id": run["run_id"], "budget": run["budget"],
                     "r": run["r"], "size": run["size"], "tokens": tokens,
                     "loss": loss, "state": run["state"], "reason": run["reason"]})
    return rows


def token_gain(grid_name: str, reference_grid: str) -> dict:
    """Compute the extra training tokens (percent) of a grid's looped runs over full-backprop linear-injection
    runs at the same (budget, r, width) planned in the reference grid's architecture.

    Computed from the plans, so it needs no trained run. For truncated BPTT the gain comes
    from counting the detached recurrences as forward-only FLOPs.
    """
    from ..grids import Variant, load_grid, plan_run

    reference = load_grid(reference_grid)
    gains = []
    for run in load_grid(grid_name).runs():
        if run.r == 1:
            continue
        twin = plan_run(reference, run.budget, run.r, run.size, Variant())
        gains.append(100.0 * (run.tokens / twin.tokens - 1.0))
    if not gains:
        raise ValueError(f"grid {grid_name!r} plans no looped run to compare with grid {reference_grid!r}")
    return {"mean_percent": float(np.mean(gains)), "min_percent": float(np.min(gains)),
            "max_percent": float(np.max(gains)), "n_runs": len(gains), "reference_grid": reference_grid}
