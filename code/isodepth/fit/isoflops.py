"""Iso-FLOPs profiles: per (compute budget, r) cell, a quadratic of loss in log N and its vertex.

The vertex (N*, L*) counts as the cell's empirical compute-optimal point only when the
quadratic is convex (curvature > 0), the cell has at least three distinct N, and the vertex
lies inside the sampled range of N. Otherwise the cell is reported without an optimum and
with the reason. N is the unique non-embedding parameter count n_once + n_rec. Such vertices
drift as the sampled width range widens, so every cell reports its sampled range.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from .io import RunTableError

log = logging.getLogger(__name__)

MIN_DISTINCT_N = 3

# IsoFlopsCell.position: "interior" (an optimum), "below" or "above" the sampled N (a convex
# quadratic whose vertex lies outside them), "concave" (no minimum at all) or "too few" N.
POSITIONS = ("interior", "below", "above", "concave", "too few")


@dataclass(frozen=True)
class IsoFlopsCell:
    """Quadratic L = c0 + c1 x + c2 x^2 with x = ln N (N in parameters, L in nats) for one cell."""

    budget: float
    r: int
    n_runs: int
    n_distinct: int
    n_min: float
    n_max: float
    coefficients: tuple[float, float, float] | None  # (c0, c1, c2); None when fewer than 3 distinct N
    curvature: float | None  # c2
    n_opt: float | None  # vertex N*, None when the cell has no optimum
    loss_opt: float | None  # vertex L* in nats
    has_optimum: bool
    reason: str  # why there is no optimum; "" when there is one
    position: str  # one of POSITIONS: where the vertex lies, or why there is none

    def to_dict(self) -> dict:
        return asdict(self)


def fit_profile(n_params, loss, budget: float = float("nan"), r: int = 0) -> IsoFlopsCell:
    """Fit one cell's quadratic of loss in ln N and decide whether its vertex is an optimum."""
    n_params = np.asarray(n_params, dtype=float)
    loss = np.asarray(loss, dtype=float)
    distinct = np.unique(n_params).size
    base = dict(budget=float(budget), r=int(r), n_runs=int(n_params.size), n_distinct=int(distinct),
                n_min=float(n_params.min()), n_max=float(n_params.max()))
    if distinct < MIN_DISTINCT_N:
        return IsoFlopsCell(**base, coefficients=None, curvature=None, n_opt=None, loss_opt=None, has_optimum=False,
                            reason=f"fewer than {MIN_DISTINCT_N} distinct N ({distinct})", position="too few")
    x = np.log(n_params)
    c2, c1, c0 = np.polyfit(x, loss, 2)
    coefficients = (float(c0), float(c1), float(c2))
    if c2 <= 0:
        return IsoFlopsCell(**base, coefficients=coefficients, curvature=float(c2), n_opt=None, loss_opt=None,
                            has_optimum=False, reason=f"concave or flat quadratic (curvature {c2:.3g} <= 0)",
                            position="concave")
    x_opt = -c1 / (2.0 * c2)
    n_opt = float(np.exp(x_opt))
    if not x.min() <= x_opt <= x.max():
        return IsoFlopsCell(**base, coefficients=coefficients, curvature=float(c2), n_opt=None, loss_opt=None,
                            has_optimum=False,
                            reason=f"vertex N = {n_opt:.4g} outside the sampled range [{n_params.min():.4g}, {n_params.max():.4g}]",
                            position="below" if x_opt < x.min() else "above")
    loss_opt = float(c0 + c1 * x_opt + c2 * x_opt ** 2)
    return IsoFlopsCell(**base, coefficients=coefficients, curvature=float(c2), n_opt=n_opt, loss_opt=loss_opt,
                        has_optimum=True, reason="", position="interior")


def isoflops_profiles(runs: pd.DataFrame) -> list[IsoFlopsCell]:
    """Profile every (budget, r) cell of a run table, in budget then r order."""
    if "budget" not in runs.columns:
        raise RunTableError("iso-FLOPs profiles group runs by budget and need a budget column (FLOPs)")
    n_params = (runs["n_once"] + runs["n_rec"]).to_numpy(float)
    cells = []
    for (budget, r), rows in runs.groupby(["budget", "r"], sort=True).indices.items():
        cell = fit_profile(n_params[rows], runs["loss"].to_numpy(float)[rows], budget, r)
        if not cell.has_optimum:
            log.info("iso-FLOPs cell C = %.3g, r = %d has no optimum: %s", budget, r, cell.reason)
        cells.append(cell)
    return cells


def optimum_gaps(optima: dict) -> dict:
    """Loss gap L*_r - L*_1 (nats) at each budget, and its min and max per r.

    optima maps (budget, r) to L*; budgets where r = 1 or r has no optimum are skipped.
    """
    by_budget: dict[float, dict[int, float]] = {}
    for (budget, r), loss in optima.items():
        if loss is not None:
            by_budget.setdefault(float(budget), {})[int(r)] = float(loss)
    out: dict = {}
    for budget in sorted(by_budget):
        cell = by_budget[budget]
        if 1 not in cell:
            continue
        for r, loss in sorted(cell.items()):
            if r != 1:
                out.setdefault(f"r{r}", {"per_budget": {}})["per_budget"][f"{budget:.3g}"] = loss - cell[1]
    for entry in out.values():
        gaps = list(entry["per_budget"].values())
        entry["min"] = min(gaps)
        entry["max"] = max(gaps)
    return out


def profile_optima(cells: list[IsoFlopsCell]) -> dict:
    """(budget, r) -> L* for the cells that have an optimum, the input of optimum_gaps."""
    return {(cell.budget, cell.r): cell.loss_opt for cell in cells if cell.has_optimum}


def published_optima(path) -> dict:
    """(budget, r) -> L* from the study's empirical optima in a published.json file."""
    table = json.loads(open(path).read())["empirical_optima"]
    return {(float(budget), int(key[1:])): values[0]
            for budget, row in table.items() if budget != "note" for key, values in row.items()}
