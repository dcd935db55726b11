"""Fit results with their diagnostics, and their JSON form.

A FitResult stores the best parameter vector at full precision, the Huber objective and
R^2 on raw nats. It also records the runs and the N_once/N_rec convention of the fit, and
how the multi-start L-BFGS-B ended: status, gradient norm, starts that reached the best
objective and the start seed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .laws import LawParams
from .objective import PARAM_NAMES
from .optimize import MultiStartResult

SCHEMA = "isodepth.fit/1"
STATUSES = ("converged", "at_bound", "iteration_limit", "abnormal")


def r_squared(observed: np.ndarray, predicted: np.ndarray, weight: np.ndarray | None = None) -> float:
    """1 - SS_res / SS_tot on raw losses in nats (not log loss), optionally weighted."""
    observed = np.asarray(observed, dtype=float)
    weight = np.ones_like(observed) if weight is None else np.asarray(weight, dtype=float)
    mean = np.sum(weight * observed) / np.sum(weight)
    ss_res = np.sum(weight * (observed - predicted) ** 2)
    ss_tot = np.sum(weight * (observed - mean) ** 2)
    return float(1.0 - ss_res / ss_tot) if ss_tot > 0 else float("nan")


def diagnose(multistart: MultiStartResult) -> dict:
    """Summarise how the multi-start optimisation ended, judged at the best start.

    status is "iteration_limit" when the best start ran out of iterations or evaluations.
    It is "at_bound" when a free parameter ended on the start box, which is also the
    L-BFGS-B bound. It is "abnormal" when scipy stopped without convergence (usually a
    failed line search) and no other start at the best objective converged. Otherwise
    it is "converged".
    """
    best = multistart.best_index
    settings = multistart.settings
    tolerance = settings.best_atol + settings.best_rtol * abs(multistart.objective[best])
    near = multistart.objective <= multistart.objective[best] + tolerance
    termination = multistart.termination[best]
    at_bound = multistart.free_params_at_bound(best)
    if termination == "iteration_limit":
        status = "iteration_limit"
    elif at_bound:
        status = "at_bound"
    elif termination == "abnormal" and any(multistart.termination[i] == "converged" for i in np.flatnonzero(near)):
        # A failed line search at the optimum: another start reached the same objective and
        # converged normally, which confirms the minimum.
        status = "converged"
    else:
        status = termination

    free = multistart.lower < multistart.upper
    spread = {name: float(np.ptp(multistart.x[near, i])) for i, name in enumerate(PARAM_NAMES) if free[i]}
    return {
        "status": status,
        "params_at_bound": at_bound,
        "optimizer_message": multistart.message[best],
        "best_start_termination": termination,
        "grad_norm": float(np.linalg.norm(multistart.gradient[best][free])),
        "projected_grad_max": float(np.max(np.abs(multistart.projected_gradient(best)))),
        "n_starts": int(multistart.starts.shape[0]),
        "n_starts_at_best": multistart.n_at_best(),
        "best_tolerance": {"rtol": settings.best_rtol, "atol": settings.best_atol},
        "param_spread_at_best": spread,
        "best_start_index": best,
        "best_start": {name: float(v) for name, v in zip(PARAM_NAMES, multistart.starts[best])},
        "n_iterations": int(multistart.n_iterations[best]),
        "n_evaluations": int(multistart.n_evaluations[best]),
        "terminations": dict(Counter(multistart.termination)),
        "engine": multistart.engine,
        "settings": settings.to_dict(),
        "wall_time_s": multistart.wall_time_s,
    }


@dataclass
class FitResult:
    """One fitted law with its fit statistics, diagnostics and the runs it saw.

    theta is the full vector (a, b, e, alpha, beta, phi); for a per-architecture law phi is
    fixed at 0 and unused. residual statistics are L_actual - L_pred in nats.
    """

    law: str  # "joint" or "chinchilla"
    label: str
    theta: np.ndarray
    fixed: dict
    objective: float
    r2: float
    rmse_nats: float
    max_abs_residual_nats: float
    n_runs: int
    n_cells: int | None
    convention: dict | None
    diagnostics: dict
    start_seed: int
    start_box: dict
    huber_delta: float
    run_labels: list[str] = field(default_factory=list)

    @property
    def params(self) -> LawParams:
        return LawParams.from_theta(self.theta, joint=self.law == "joint")

    @property
    def status(self) -> str:
        return self.diagnostics["status"]

    def to_dict(self) -> dict:
        """JSON-ready form; floats keep full precision when written with fit.io.dumps."""
        return {
            "schema": SCHEMA,
            "law": self.law,
            "label": self.label,
            "params": self.params.to_dict(),
            "theta": {name: float(v) for name, v in zip(PARAM_NAMES, self.theta)},
            "fixed": dict(self.fixed),
            "objective": self.objective,
            "huber_delta": self.huber_delta,
            "r2": self.r2,
            "rmse_nats": self.rmse_nats,
            "max_abs_residual_nats": self.max_abs_residual_nats,
            "n_runs": self.n_runs,
            "n_cells": self.n_cells,
            "convention": self.convention,
            "start_seed": self.start_seed,
            "start_box": self.start_box,
            "diagnostics": self.diagnostics,
            "runs": list(self.run_labels),
        }

    @classmethod
    def from_dict(cls, values: dict) -> "FitResult":
        if values.get("schema") != SCHEMA:
            raise ValueError(f"not a fit result of schema {SCHEMA!r} (got {values.get('schema')!r})")
        return cls(
            law=values["law"], label=values["label"],
            theta=np.array([values["theta"][name] for name in PARAM_NAMES], dtype=float),
            fixed=dict(values["fixed"]), objective=values["objective"], r2=values["r2"],
            rmse_nats=values["rmse_nats"], max_abs_residual_nats=values["max_abs_residual_nats"],
            n_runs=values["n_runs"], n_cells=values["n_cells"], convention=values["convention"],
            diagnostics=values["diagnostics"], start_seed=values["start_seed"], start_box=values["start_box"],
            huber_delta=values["huber_delta"], run_labels=list(values.get("runs", [])),
        )
