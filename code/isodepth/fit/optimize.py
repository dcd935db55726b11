"""Multi-start L-BFGS-B for the Huber-LSE objective, with per-start diagnostics.

Every start runs scipy's L-BFGS-B to convergence from a point drawn uniformly in a box.
The default engine ("lockstep") drives scipy's reverse-communication L-BFGS-B routine for
all starts side by side. Each round evaluates the objective for every start that needs it
in one vectorised numpy call, which removes most of the per-start Python overhead. The
"minimize" engine calls scipy.optimize.minimize once per start and is the reference that
the lockstep engine is tested against. Either engine can split the starts over joblib
workers. The best start is the one with the lowest final objective, whatever the start order.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import scipy
import scipy.optimize

from .objective import N_PARAMS, PARAM_NAMES, BatchObjective, FitData

log = logging.getLogger(__name__)

# Start box of the study: a, b in [-5, 35]; e in [-3, 2]; alpha, beta in [0, 2.5]; phi in [-3, 3].
DEFAULT_BOX = {"a": (-5.0, 35.0), "b": (-5.0, 35.0), "e": (-3.0, 2.0),
               "alpha": (0.0, 2.5), "beta": (0.0, 2.5), "phi": (-3.0, 3.0)}


@dataclass(frozen=True)
class OptimizerSettings:
    """L-BFGS-B settings shared by every start.

    ftol and gtol are scipy's stopping tolerances. The Huber objective of real data is
    about 1e-4, and scipy's ftol test divides by max(|f|, 1), so ftol acts as an absolute
    tolerance here and must be far below scipy's default of 2.2e-9 to resolve the
    exponents to 1e-4. bounded=True keeps each free parameter inside the start box.
    best_rtol and best_atol decide which starts count as having reached the best objective.
    """

    max_iter: int = 10_000
    max_fev: int = 20_000
    ftol: float = 1e-14
    gtol: float = 1e-10
    max_corrections: int = 10
    max_line_search: int = 20
    bounded: bool = True
    engine: str = "auto"  # "lockstep", "minimize" or "auto" (lockstep where scipy supports it)
    n_jobs: int = 1
    best_rtol: float = 1e-6
    best_atol: float = 1e-12

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class StartSet:
    """Random starts drawn uniformly in a box; rows are full (a, b, e, alpha, beta, phi) vectors."""

    points: np.ndarray
    seed: int
    box: dict

    @property
    def n_starts(self) -> int:
        return int(self.points.shape[0])


def draw_starts(n_starts: int, seed: int = 0, box: dict | None = None) -> StartSet:
    """Draw n_starts points uniformly in the box with numpy's default generator seeded by seed."""
    if n_starts < 1:
        raise ValueError(f"n_starts={n_starts} must be at least 1")
    box = dict(DEFAULT_BOX if box is None else box)
    missing = [name for name in PARAM_NAMES if name not in box]
    if missing:
        raise ValueError(f"start box is missing the parameters {missing}; give (low, high) for each of {PARAM_NAMES}")
    low = np.array([box[name][0] for name in PARAM_NAMES], dtype=float)
    high = np.array([box[name][1] for name in PARAM_NAMES], dtype=float)
    if np.any(high < low):
        raise ValueError(f"start box has a lower limit above the upper one: {box}")
    rng = np.random.default_rng(seed)
    points = low + (high - low) * rng.random((n_starts, N_PARAMS))
    return StartSet(points=points, seed=int(seed), box={k: [float(v[0]), float(v[1])] for k, v in box.items()})


@dataclass
class MultiStartResult:
    """Final point, objective and termination of every start, in start order."""

    starts: np.ndarray
    x: np.ndarray
    objective: np.ndarray
    gradient: np.ndarray
    n_iterations: np.ndarray
    n_evaluations: np.ndarray
    termination: list[str]  # "converged", "iteration_limit" or "abnormal", per start
    message: list[str]
    lower: np.ndarray
    upper: np.ndarray
    engine: str
    wall_time_s: float
    settings: OptimizerSettings = field(default_factory=OptimizerSettings)

    @property
    def best_index(self) -> int:
        """Start with the lowest final objective (the first such start if several tie exactly)."""
        finite = np.where(np.isfinite(self.objective), self.objective, np.inf)
        return int(np.argmin(finite))

    def n_at_best(self) -> int:
        best = self.objective[self.best_index]
        tolerance = self.settings.best_atol + self.settings.best_rtol * abs(best)
        return int(np.sum(self.objective <= best + tolerance))

    def projected_gradient(self, index: int) -> np.ndarray:
        """Gradient with the components that push against an active bound (or a fixed parameter) zeroed."""
        g = self.gradient[index].copy()
        x = self.x[index]
        at_lower = x <= self.lower + _bound_tolerance(self.lower, self.upper)
        at_upper = x >= self.upper - _bound_tolerance(self.lower, self.upper)
        g[(at_lower & (g > 0)) | (at_upper & (g < 0))] = 0.0
        g[self.lower == self.upper] = 0.0
        return g

    def free_params_at_bound(self, index: int) -> list[str]:
        x = self.x[index]
        free = self.lower < self.upper
        tol = _bound_tolerance(self.lower, self.upper)
        hit = free & ((np.isfinite(self.lower) & (x <= self.lower + tol)) | (np.isfinite(self.upper) & (x >= self.upper - tol)))
        return [PARAM_NAMES[i] for i in np.flatnonzero(hit)]


def _bound_tolerance(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    width = np.where(np.isfinite(upper - lower), upper - lower, 1.0)
    return 1e-9 * np.maximum(width, 1.0)


def lockstep_available() -> bool:
    """Return True if this scipy has the reverse-communication L-BFGS-B routine of the lockstep engine.

    The routine is private (scipy.optimize._lbfgsb.setulb). The lockstep engine needs its
    17-argument form with an integer task array, checked here on scipy 1.17.
    """
    try:
        from scipy.optimize import _lbfgsb
    except ImportError:
        return False
    doc = getattr(_lbfgsb.setulb, "__doc__", "") or ""
    return "ln_task" in doc and "csave" not in doc


def _bounds_for(fixed: dict[str, float], box: dict, bounded: bool) -> tuple[np.ndarray, np.ndarray]:
    lower = np.full(N_PARAMS, -np.inf)
    upper = np.full(N_PARAMS, np.inf)
    for i, name in enumerate(PARAM_NAMES):
        if name in fixed:
            lower[i] = upper[i] = float(fixed[name])
        elif bounded:
            lower[i], upper[i] = box[name]
    return lower, upper


def run_multistart(data: FitData, starts: StartSet, fixed: dict[str, float] | None = None,
                   settings: OptimizerSettings | None = None) -> MultiStartResult:
    """Run L-BFGS-B from every start; parameters named in fixed are held at their value."""
    settings = settings or OptimizerSettings()
    fixed = dict(fixed or {})
    unknown = sorted(set(fixed) - set(PARAM_NAMES))
    if unknown:
        raise ValueError(f"cannot fix unknown parameters {unknown}; known: {PARAM_NAMES}")
    lower, upper = _bounds_for(fixed, starts.box, settings.bounded)
    points = starts.points.copy()
    for i, name in enumerate(PARAM_NAMES):
        if name in fixed:
            points[:, i] = fixed[name]

    engine = settings.engine
    if engine == "auto":
        engine = "lockstep" if lockstep_available() else "minimize"
    if engine == "lockstep" and not lockstep_available():
        raise RuntimeError(f"scipy {scipy.__version__} lacks the L-BFGS-B routine the lockstep engine needs "
                           "(scipy >= 1.15); use engine='minimize'")
    if engine not in ("lockstep", "minimize"):
        raise ValueError(f"unknown engine {engine!r}; use 'lockstep', 'minimize' or 'auto'")

    began = time.perf_counter()
    n_workers = _effective_jobs(settings.n_jobs, points.shape[0])
    chunks = [c for c in np.array_split(np.arange(points.shape[0]), n_workers) if c.size]
    runner = _run_lockstep if engine == "lockstep" else _run_minimize
    if len(chunks) == 1:
        parts = [runner(data, points, lower, upper, settings)]
    else:
        from joblib import Parallel, delayed

        parts = Parallel(n_jobs=len(chunks))(
            delayed(runner)(data, points[c], lower, upper, settings) for c in chunks)
    x = np.concatenate([p["x"] for p in parts])
    nit = np.concatenate([p["nit"] for p in parts])
    nfev = np.concatenate([p["nfev"] for p in parts])
    termination = [t for p in parts for t in p["termination"]]
    message = [m for p in parts for m in p["message"]]

    # Recompute f and g at every final point: after a failed line search scipy restores the
    # previous iterate, so the last value it was handed may belong to a rejected trial point.
    objective, gradient = BatchObjective(data)(x)
    wall = time.perf_counter() - began
    result = MultiStartResult(starts=points, x=x, objective=objective, gradient=gradient, n_iterations=nit,
                              n_evaluations=nfev, termination=termination, message=message, lower=lower,
                              upper=upper, engine=engine, wall_time_s=wall, settings=settings)
    log.debug("%d L-BFGS-B starts (%s engine, %d workers) took %.2f s; best objective %.6g",
              points.shape[0], engine, len(chunks), wall, objective[result.best_index])
    return result


def _effective_jobs(n_jobs: int, n_starts: int) -> int:
    if n_jobs is None or n_jobs == 1:
        return 1
    from joblib import cpu_count

    workers = cpu_count() + 1 + n_jobs if n_jobs < 0 else n_jobs
    return max(1, min(workers, n_starts))


_TASK_FG, _TASK_NEW_X, _TASK_CONVERGENCE, _TASK_STOP = 3, 1, 4, 5
_TASK_ITERATION_LIMIT, _TASK_EVALUATION_LIMIT = 504, 502
_TASK_NAMES = {0: "START", 1: "NEW_X", 2: "RESTART", 3: "FG", 4: "CONVERGENCE", 5: "STOP",
               6: "WARNING", 7: "ERROR", 8: "ABNORMAL"}
_TASK_DETAILS = {401: "norm of projected gradient <= gtol", 402: "relative reduction of f <= ftol",
                 502: "function evaluations exceed the limit", 503: "projected gradient is sufficiently small",
                 504: "iterations reached the limit", 601: "rounding errors prevent progress",
                 602: "line search step = stpmax", 603: "line search step = stpmin",
                 604: "line search xtol test satisfied"}


def _run_lockstep(data: FitData, points: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                  settings: OptimizerSettings) -> dict:
    """Drive scipy's L-BFGS-B state machine for all starts, batching their objective calls."""
    from scipy.optimize import _lbfgsb

    objective = BatchObjective(data)
    k, n = points.shape
    m = settings.max_corrections
    factr = settings.ftol / np.finfo(float).eps
    # Bound type per variable as scipy encodes it: 0 none, 1 lower, 2 both, 3 upper.
    nbd = np.where(np.isfinite(lower), np.where(np.isfinite(upper), 2, 1),
                   np.where(np.isfinite(upper), 3, 0)).astype(np.int32)
    low = np.where(np.isfinite(lower), lower, 0.0)
    high = np.where(np.isfinite(upper), upper, 0.0)

    x = np.clip(points, lower, upper).astype(float)
    f = np.zeros(k)
    g = np.zeros((k, n))
    wa = np.zeros((k, 2 * m * n + 5 * n + 11 * m * m + 8 * m))
    iwa = np.zeros((k, 3 * n), np.int32)
    task = np.zeros((k, 2), np.int32)
    ln_task = np.zeros((k, 2), np.int32)
    lsave = np.zeros((k, 4), np.int32)
    isave = np.zeros((k, 44), np.int32)
    dsave = np.zeros((k, 29))
    nit = np.zeros(k, dtype=np.int64)
    nfev = np.zeros(k, dtype=np.int64)

    # Argument lists per start, built once: the rows are views that setulb updates in place,
    # and f is passed as a 0-d view so the list stays valid after f is overwritten.
    setulb = _lbfgsb.setulb
    arguments = [(m, x[i], low, high, nbd, f[i:i + 1].reshape(()), g[i], factr, settings.gtol, wa[i], iwa[i],
                  task[i], lsave[i], isave[i], dsave[i], settings.max_line_search, ln_task[i]) for i in range(k)]
    pending = list(range(k))
    while pending:
        need = []
        for i in pending:
            state_row = task[i]
            while True:
                setulb(*arguments[i])
                state = state_row[0]
                if state == _TASK_FG:
                    need.append(i)
                    break
                if state != _TASK_NEW_X:
                    break
                nit[i] += 1
                if nit[i] >= settings.max_iter:
                    task[i] = (_TASK_STOP, _TASK_ITERATION_LIMIT)
                    break
                if nfev[i] > settings.max_fev:
                    task[i] = (_TASK_STOP, _TASK_EVALUATION_LIMIT)
                    break
        if need:
            index = np.asarray(need)
            f[index], g[index] = objective(x[index])
            nfev[index] += 1
        pending = need

    termination, message = [], []
    for i in range(k):
        state, detail = int(task[i, 0]), int(task[i, 1])
        message.append(f"{_TASK_NAMES.get(state, state)}: {_TASK_DETAILS.get(detail, detail)}")
        if state == _TASK_CONVERGENCE:
            termination.append("converged")
        elif detail in (_TASK_ITERATION_LIMIT, _TASK_EVALUATION_LIMIT):
            termination.append("iteration_limit")
        else:
            termination.append("abnormal")
    return {"x": x, "nit": nit, "nfev": nfev, "termination": termination, "message": message}


def _run_minimize(data: FitData, points: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                  settings: OptimizerSettings) -> dict:
    """Call scipy.optimize.minimize(method='L-BFGS-B') once per start."""
    objective = BatchObjective(data)

    def value_and_gradient(theta: np.ndarray) -> tuple[float, np.ndarray]:
        f, g = objective(theta[None, :])
        return float(f[0]), g[0]

    bounds = scipy.optimize.Bounds(lower, upper)
    options = {"maxiter": settings.max_iter, "maxfun": settings.max_fev, "ftol": settings.ftol,
               "gtol": settings.gtol, "maxcor": settings.max_corrections, "maxls": settings.max_line_search}
    xs, nit, nfev, termination, message = [], [], [], [], []
    for start in points:
        out = scipy.optimize.minimize(value_and_gradient, start, jac=True, method="L-BFGS-B",
                                      bounds=bounds, options=options)
        xs.append(out.x)
        nit.append(out.nit)
        nfev.append(out.nfev)
        termination.append({0: "converged", 1: "iteration_limit"}.get(out.status, "abnormal"))
        message.append(str(out.message))
    return {"x": np.array(xs).reshape(-1, N_PARAMS), "nit": np.array(nit), "nfev": np.array(nfev),
            "termination": termination, "message": message}
