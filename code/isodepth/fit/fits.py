"""Fits of the joint law (phi free or fixed) and of one Chinchilla law per r, and joint-fit residuals.

Every fit takes a checked run table (fit.io.validate_runs), draws its starts from a seed
(or reuses a given StartSet), runs multi-start L-BFGS-B and returns a FitResult.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from .conventions import LITERAL, split_params
from .io import RunTableError
from .objective import HUBER_DELTA, BatchObjective, FitData
from .optimize import MultiStartResult, OptimizerSettings, StartSet, draw_starts, run_multistart
from .result import FitResult, diagnose, r_squared

log = logging.getLogger(__name__)

DEFAULT_STARTS = 500
CHINCHILLA_MIN_RUNS = 5  # the per-architecture law has five parameters


def count_cells(runs: pd.DataFrame) -> int | None:
    """Number of (budget, r) cells, or None when the table has no budget column."""
    if "budget" not in runs.columns:
        return None
    return int(runs.groupby(["budget", "r"]).ngroups)


def joint_data(runs: pd.DataFrame, convention: str = LITERAL, delta: float = HUBER_DELTA) -> tuple[FitData, dict]:
    """FitData of the joint law for a run table, and the description of the N_once/N_rec split used."""
    split = split_params(runs, convention)
    data = FitData.from_arrays(runs["r"], split.n_once, split.n_rec, runs["tokens"], runs["loss"], delta=delta)
    return data, split.describe()


def optimize_law(data: FitData, starts: StartSet, fixed: dict | None = None,
                 settings: OptimizerSettings | None = None) -> MultiStartResult:
    """Multi-start L-BFGS-B on prepared data; the low-level step behind every fit and resample."""
    return run_multistart(data, starts, fixed=fixed, settings=settings)


def _summarise(law: str, label: str, data: FitData, multistart: MultiStartResult, fixed: dict,
               starts: StartSet, convention: dict | None, runs: pd.DataFrame) -> FitResult:
    best = multistart.best_index
    theta = multistart.x[best].copy()
    log_residual = BatchObjective(data).residuals(theta)[0]
    keep = data.weight > 0
    observed = data.loss[keep]
    predicted = observed * np.exp(log_residual)
    residual = observed - predicted
    weight = data.weight[keep]
    result = FitResult(
        law=law, label=label, theta=theta, fixed=dict(fixed), objective=float(multistart.objective[best]),
        r2=r_squared(observed, predicted, weight),
        rmse_nats=float(np.sqrt(np.sum(weight * residual ** 2) / np.sum(weight))),
        max_abs_residual_nats=float(np.max(np.abs(residual))),
        n_runs=int(np.count_nonzero(keep)), n_cells=count_cells(runs), convention=convention,
        diagnostics=diagnose(multistart), start_seed=starts.seed, start_box=starts.box,
        huber_delta=data.delta, run_labels=list(runs["label"]) if "label" in runs.columns else [],
    )
    level = logging.INFO if result.status == "converged" else logging.WARNING
    log.log(level, "%s fit on %d runs: status %s, objective %.6g, R^2 %.5f, %d of %d starts at the best objective",
            label, result.n_runs, result.status, result.objective, result.r2,
            result.diagnostics["n_starts_at_best"], starts.n_starts)
    return result


def fit_joint(runs: pd.DataFrame, *, phi: float | None = None, convention: str = LITERAL,
              n_starts: int = DEFAULT_STARTS, seed: int = 0, starts: StartSet | None = None,
              settings: OptimizerSettings | None = None, label: str | None = None) -> FitResult:
    """Fit L = E + A (N_once + r^phi N_rec)^-alpha + B D^-beta; phi free, or held at the value given."""
    if runs["r"].nunique() < 2 and phi is None:
        raise RunTableError(f"the joint law needs runs at two or more values of r to fit phi; got r = {sorted(set(runs['r']))}")
    data, described = joint_data(runs, convention)
    starts = starts or draw_starts(n_starts, seed)
    fixed = {} if phi is None else {"phi": float(phi)}
    multistart = optimize_law(data, starts, fixed, settings)
    label = label or ("joint, phi free" if phi is None else f"joint, phi = {phi:g}")
    return _summarise("joint", label, data, multistart, fixed, starts, described, runs)


def fit_chinchilla(runs: pd.DataFrame, *, n_starts: int = DEFAULT_STARTS, seed: int = 0,
                   starts: StartSet | None = None, settings: OptimizerSettings | None = None,
                   label: str = "chinchilla") -> FitResult:
    """Fit L = E + A N^-alpha + B D^-beta with N = n_once + n_rec (unique non-embedding parameters)."""
    if len(runs) < CHINCHILLA_MIN_RUNS:
        raise RunTableError(f"{label}: {len(runs)} runs, but the per-architecture law needs at least "
                            f"{CHINCHILLA_MIN_RUNS}; add runs or leave this r out")
    n_total = (runs["n_once"] + runs["n_rec"]).to_numpy(float)
    data = FitData.from_arrays(np.ones(len(runs)), n_total, np.zeros(len(runs)), runs["tokens"], runs["loss"])
    starts = starts or draw_starts(n_starts, seed)
    fixed = {"phi": 0.0}
    multistart = optimize_law(data, starts, fixed, settings)
    described = {"convention": "unique parameters", "per_width": {},
                 "note": "N = n_once + n_rec as given; the N_once/N_rec split does not enter this law"}
    return _summarise("chinchilla", label, data, multistart, fixed, starts, described, runs)


def fit_per_r(runs: pd.DataFrame, **options) -> dict[int, FitResult]:
    """Fit one per-architecture Chinchilla law per recurrence count r (Table 1 of the study)."""
    results = {}
    for r in sorted(set(runs["r"])):
        results[int(r)] = fit_chinchilla(runs[runs["r"] == r], label=f"chinchilla, r = {r}", **options)
    return results


def fit_restricted(runs: pd.DataFrame, phis=(0.0, 1.0), **options) -> dict[float, FitResult]:
    """Joint fits with phi held fixed (0: looping adds no capacity; 1: r loops = r unique blocks)."""
    return {float(phi): fit_joint(runs, phi=phi, **options) for phi in phis}


def subset_runs(runs: pd.DataFrame, *, budgets=None, recurrences=None, run_ids=None) -> pd.DataFrame:
    """Runs restricted to the given budgets (FLOPs, matched to 0.1%), recurrence counts or run ids."""
    mask = np.ones(len(runs), dtype=bool)
    if budgets is not None:
        if "budget" not in runs.columns:
            raise RunTableError("selecting runs by budget needs a budget column")
        selected = np.asarray(list(budgets), dtype=float)
        values = runs["budget"].to_numpy(float)
        mask &= np.any(np.abs(values[:, None] / selected[None, :] - 1.0) < 1e-3, axis=1)
    if recurrences is not None:
        mask &= runs["r"].isin([int(r) for r in recurrences]).to_numpy()
    if run_ids is not None:
        if "run_id" not in runs.columns:
            raise RunTableError("selecting runs by id needs a run_id column")
        mask &= runs["run_id"].isin(list(run_ids)).to_numpy()
    return runs[mask].reset_index(drop=True)


def joint_residuals(runs: pd.DataFrame, fit: FitResult) -> dict:
    """Residuals L_actual - L_pred (nats) of a joint fit per r and pooled: n, mean, max |res|, RMSE."""
    if fit.law != "joint":
        raise ValueError(f"joint_residuals needs a joint-law fit, got {fit.law!r}")
    convention = (fit.convention or {}).get("convention", LITERAL)
    data, _ = joint_data(runs, convention)
    log_residual = BatchObjective(data).residuals(fit.theta)[0]
    observed = data.loss
    residual = observed - observed * np.exp(log_residual)
    r = runs["r"].to_numpy()

    def summary(values: np.ndarray) -> dict:
        return {"n": int(values.size), "mean": float(values.mean()), "max_abs": float(np.max(np.abs(values))),
                "rmse": float(np.sqrt(np.mean(values ** 2)))}

    table = {f"r{int(value)}": summary(residual[r == value]) for value in sorted(set(r))}
    table["pooled"] = summary(residual)
    return {"convention": convention, "per_r": table,
            "runs": [{"label": label, "r": int(rv), "residual": float(res)}
                     for label, rv, res in zip(runs["label"], r, residual)]}
