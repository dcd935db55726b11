"""Compute-optimal allocation per r: N*(C) and D*(C) from a per-architecture law.

Per-token training FLOPs F grow sub-quadratically in N across widths (the lm_head and the
attention over the context grow linearly in width), so the tokens bought by a budget C
are D = C / F(N) rather than C / (6 N). With F(N) = k N^gamma fitted across widths, the
law L = E + A N^-alpha + B D^-beta has the closed-form optimum
    N* ~ C^a with a = beta / (alpha + gamma beta),   D* ~ C^(1 - gamma a).
The numerical optimum minimises L(N, C / F(N)) with the exact F (interpolated in log-log
over the sampled widths, or any callable).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import scipy.optimize

from .laws import LawParams


def fit_flops_power_law(n_params, flops_per_token) -> tuple[float, float]:
    """Least-squares fit of log F = log k + gamma log N; returns (k, gamma)."""
    n_params = np.asarray(n_params, dtype=float)
    flops_per_token = np.asarray(flops_per_token, dtype=float)
    if np.unique(n_params).size < 2:
        raise ValueError("fitting F(N) = k N^gamma needs at least two distinct widths")
    gamma, log_k = np.polyfit(np.log(n_params), np.log(flops_per_token), 1)
    return float(np.exp(log_k)), float(gamma)


def interpolated_flops(n_params, flops_per_token) -> Callable[[np.ndarray], np.ndarray]:
    """F(N) by linear interpolation of log F in log N over the sampled widths.

    Beyond the sampled range the end segments are extended, so F keeps its local power law.
    """
    order = np.argsort(n_params)
    x = np.log(np.asarray(n_params, dtype=float)[order])
    y = np.log(np.asarray(flops_per_token, dtype=float)[order])
    x, index = np.unique(x, return_index=True)
    y = y[index]
    if x.size < 2:
        raise ValueError("interpolating F(N) needs at least two distinct widths")

    def flops(n):
        u = np.log(np.asarray(n, dtype=float))
        inside = np.interp(u, x, y)
        left = y[0] + (u - x[0]) * (y[1] - y[0]) / (x[1] - x[0])
        right = y[-1] + (u - x[-1]) * (y[-1] - y[-2]) / (x[-1] - x[-2])
        return np.exp(np.where(u < x[0], left, np.where(u > x[-1], right, inside)))

    return flops


def closed_form_exponents(alpha: float, beta: float, gamma: float) -> tuple[float, float]:
    """Exponents (a, b) of N* ~ C^a and D* ~ C^b: a = beta / (alpha + gamma beta), b = 1 - gamma a."""
    a = beta / (alpha + gamma * beta)
    return a, 1.0 - gamma * a


def closed_form_optimum(params: LawParams, k: float, gamma: float, budgets) -> tuple[np.ndarray, np.ndarray]:
    """N*(C) and D*(C) for F(N) = k N^gamma, from dL/dN = 0."""
    budgets = np.asarray(budgets, dtype=float)
    a, _ = closed_form_exponents(params.alpha, params.beta, gamma)
    scale = (params.alpha * params.A / (gamma * params.beta * params.B * k ** params.beta)) ** (1.0 / (params.alpha + gamma * params.beta))
    n_opt = scale * budgets ** a
    return n_opt, budgets / (k * n_opt ** gamma)


def numeric_optimum(params: LawParams, flops: Callable, budgets, guess: np.ndarray,
                    search_factor: float = 1e3) -> tuple[np.ndarray, np.ndarray]:
    """N*(C) and D*(C) minimising L(N, C / F(N)) over N within guess / search_factor to guess * search_factor."""
    n_opt = []
    for budget, start in zip(np.asarray(budgets, dtype=float), np.asarray(guess, dtype=float)):
        def loss(log_n: float) -> float:
            n = np.exp(log_n)
            return float(params.loss(n, budget / flops(n)))

        span = np.log(search_factor)
        out = scipy.optimize.minimize_scalar(loss, bounds=(np.log(start) - span, np.log(start) + span),
                                             method="bounded", options={"xatol": 1e-10})
        n_opt.append(float(np.exp(out.x)))
    n_opt = np.array(n_opt)
    return n_opt, np.asarray(budgets, dtype=float) / flops(n_opt)


def _slope(budgets: np.ndarray, values: np.ndarray) -> float:
    return float(np.polyfit(np.log(budgets), np.log(values), 1)[0])


@dataclass
class Allocation:
    """Compute-optimal N*(C) (parameters) and D*(C) (tokens) for one architecture."""

    label: str
    k: float
    gamma: float
    exponent_n: float  # closed form a
    exponent_d: float  # closed form 1 - gamma a
    budgets: np.ndarray
    n_opt_closed: np.ndarray
    d_opt_closed: np.ndarray
    n_opt: np.ndarray  # numerical, exact F
    d_opt: np.ndarray
    exponent_n_numeric: float
    exponent_d_numeric: float

    def to_dict(self) -> dict:
        return {key: (value.tolist() if isinstance(value, np.ndarray) else value) for key, value in vars(self).items()}


def compute_optimal_allocation(params: LawParams, n_params, flops_per_token, budgets,
                               flops: Callable | None = None, label: str = "") -> Allocation:
    """N*(C) and D*(C) in closed form (F = k N^gamma fitted) and numerically (exact F).

    n_params and flops_per_token are the sampled widths of one architecture; flops, when
    given, replaces their log-log interpolation as the exact F(N).
    """
    budgets = np.asarray(budgets, dtype=float)
    if budgets.size < 2:
        raise ValueError("give at least two budgets to measure the allocation exponents")
    k, gamma = fit_flops_power_law(n_params, flops_per_token)
    exponent_n, exponent_d = closed_form_exponents(params.alpha, params.beta, gamma)
    n_closed, d_closed = closed_form_optimum(params, k, gamma, budgets)
    exact = flops or interpolated_flops(n_params, flops_per_token)
    n_opt, d_opt = numeric_optimum(params, exact, budgets, n_closed)
    return Allocation(label=label, k=k, gamma=gamma, exponent_n=exponent_n, exponent_d=exponent_d, budgets=budgets,
                      n_opt_closed=n_closed, d_opt_closed=d_closed, n_opt=n_opt, d_opt=d_opt,
                      exponent_n_numeric=_slope(budgets, n_opt), exponent_d_numeric=_slope(budgets, d_opt))


def flops_table_from_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Distinct (r, N, FLOPs per token) rows of a run table; N = n_once + n_rec."""
    if "flops_per_token" not in runs.columns:
        raise ValueError("the allocation needs a flops_per_token column (FLOPs per training token)")
    table = pd.DataFrame({"r": runs["r"], "n_params": runs["n_once"] + runs["n_rec"],
                          "flops_per_token": runs["flops_per_token"]})
    return table.drop_duplicates().sort_values(["r", "n_params"]).reset_index(drop=True)


def flops_table_from_grid(grid: str = "paper") -> pd.DataFrame:
    """Distinct (r, N, FLOPs per token) of a planned grid, counted by isodepth.accounting (imports torch)."""
    from ..accounting import param_counts, train_flops_per_token
    from ..grids import load_grid

    rows = {(run.r, run.size): (param_counts(run.model).n_total, train_flops_per_token(run.model))
            for run in load_grid(grid).runs()}
    return pd.DataFrame([{"r": r, "size": size, "n_params": n, "flops_per_token": f}
                         for (r, size), (n, f) in sorted(rows.items())])


def allocation_per_r(per_r: dict, flops_table: pd.DataFrame, budgets) -> dict:
    """compute_optimal_allocation for every r of per_r (r -> LawParams or a per-architecture FitResult)."""
    out = {}
    for r, fitted in sorted(per_r.items()):
        params = fitted if isinstance(fitted, LawParams) else fitted.params
        rows = flops_table[flops_table["r"] == r]
        if rows.empty:
            raise ValueError(f"no FLOPs per token for r = {r} in the FLOPs table")
        out[int(r)] = compute_optimal_allocation(params, rows["n_params"], rows["flops_per_token"], budgets,
                                                 label=f"r = {r}")
    return out
