"""Uncertainty of the joint fit: block bootstrap over (budget, r) cells and the budget stability split.

One bootstrap block is every run of one (compute budget, r) cell, because runs of a cell
share the token stream and the width grid and so are not independent. Each resample draws
as many cells as the table has, with replacement, from its own random stream
(numpy SeedSequence.spawn), and is refitted from the full start set of the main fit. A
cell drawn twice enters the objective with weight 2, which equals duplicating its runs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from .conventions import LITERAL
from .fits import DEFAULT_STARTS, fit_joint, joint_data, optimize_law
from .io import RunTableError
from .objective import PARAM_NAMES
from .optimize import OptimizerSettings, StartSet, draw_starts
from .result import diagnose

log = logging.getLogger(__name__)

REPORTED = ("A", "alpha", "B", "beta", "E", "phi")


@dataclass
class BootstrapResult:
    """Refitted parameters of every resample and their percentile intervals.

    n_runs and n_cells count the independent runs and cells of the original table. They
    belong beside every interval, because a resample never has more information than that.
    """

    label: str
    convention: str
    fixed: dict
    seed: int
    start_seed: int
    n_starts: int
    level: float
    n_runs: int
    n_cells: int
    samples: np.ndarray  # (resamples, 6) vectors (a, b, e, alpha, beta, phi)
    statuses: list[str]
    distinct_runs: np.ndarray  # distinct runs per resample
    wall_time_s: float
    settings: dict = field(default_factory=dict)

    @property
    def n_resamples(self) -> int:
        return int(self.samples.shape[0])

    def values(self, name: str) -> np.ndarray:
        """Samples of one law parameter (A, alpha, B, beta, E, phi) or log parameter (a, b, e)."""
        if name in PARAM_NAMES:
            return self.samples[:, PARAM_NAMES.index(name)]
        index = {"A": 0, "B": 1, "E": 2}
        if name in index:
            return np.exp(self.samples[:, index[name]])
        raise KeyError(f"unknown parameter {name!r}; use one of {REPORTED + PARAM_NAMES}")

    def intervals(self) -> dict:
        """Percentile interval at self.level for each parameter, with the runs and cells behind it."""
        tail = 100.0 * (1.0 - self.level) / 2.0
        out = {}
        for name in REPORTED:
            if name in self.fixed:
                continue
            values = self.values(name)
            low, median, high = np.percentile(values, [tail, 50.0, 100.0 - tail])
            out[name] = {"low": float(low), "median": float(median), "high": float(high),
                         "level": self.level, "n_runs": self.n_runs, "n_cells": self.n_cells,
                         "n_resamples": self.n_resamples}
        return out

    def to_dict(self) -> dict:
        counts = {status: self.statuses.count(status) for status in sorted(set(self.statuses))}
        return {
            "label": self.label, "convention": self.convention, "fixed": self.fixed,
            "block": "(budget, r) cell", "n_resamples": self.n_resamples, "seed": self.seed,
            "start_seed": self.start_seed, "n_starts": self.n_starts, "level": self.level,
            "n_runs": self.n_runs, "n_cells": self.n_cells, "intervals": self.intervals(),
            "resample_statuses": counts,
            "distinct_runs_per_resample": {"min": int(self.distinct_runs.min()),
                                           "median": float(np.median(self.distinct_runs)),
                                           "max": int(self.distinct_runs.max())},
            "samples": {name: self.samples[:, i].tolist() for i, name in enumerate(PARAM_NAMES)},
            "settings": self.settings, "wall_time_s": self.wall_time_s,
        }


def cell_index(runs: pd.DataFrame) -> tuple[np.ndarray, int]:
    """Cell number of every run (cells are distinct (budget, r) pairs) and the number of cells."""
    if "budget" not in runs.columns:
        raise RunTableError("the block bootstrap resamples (budget, r) cells and needs a budget column (FLOPs); "
                            "add it (data/derived/runs.csv has it) or skip the bootstrap")
    codes = runs.groupby(["budget", "r"], sort=True).ngroup().to_numpy()
    return codes, int(codes.max()) + 1


def resample_weights(cells: np.ndarray, n_cells: int, rng: np.random.Generator) -> np.ndarray:
    """Weight of every run in one resample: how often its cell was drawn in n_cells draws with replacement."""
    drawn = np.bincount(rng.integers(0, n_cells, size=n_cells), minlength=n_cells)
    return drawn[cells].astype(float)


def _fit_resamples(data, cells, n_cells, child_seeds, starts, fixed, settings):
    out = []
    for child in child_seeds:
        weight = resample_weights(cells, n_cells, np.random.default_rng(child))
        multistart = optimize_law(data.with_weight(weight), starts, fixed, settings)
        out.append((multistart.x[multistart.best_index], diagnose(multistart)["status"], int(np.count_nonzero(weight))))
    return out


def block_bootstrap(runs: pd.DataFrame, *, phi: float | None = None, convention: str = LITERAL,
                    n_resamples: int = 200, seed: int = 0, n_starts: int = DEFAULT_STARTS, start_seed: int = 0,
                    starts: StartSet | None = None, settings: OptimizerSettings | None = None,
                    n_jobs: int = -1, level: float = 0.95, progress: bool = False) -> BootstrapResult:
    """Block-bootstrap the joint fit over (budget, r) cells; each resample is refitted from every start.

    seed drives the cell draws (one SeedSequence child per resample); start_seed (or starts)
    fixes the start set, shared with the main fit. n_jobs spreads resamples over joblib
    workers (-1: all cores).
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples={n_resamples} must be at least 1")
    if not 0 < level < 1:
        raise ValueError(f"level={level} must lie strictly between 0 and 1")
    cells, n_cells = cell_index(runs)
    if n_cells < 2:
        raise RunTableError(f"the block bootstrap needs two or more (budget, r) cells; the table has {n_cells}")
    data, described = joint_data(runs, convention)
    starts = starts or draw_starts(n_starts, start_seed)
    settings = replace(settings or OptimizerSettings(), n_jobs=1)
    fixed = {} if phi is None else {"phi": float(phi)}
    children = np.random.SeedSequence(seed).spawn(n_resamples)

    began = time.perf_counter()
    batch = 4
    batches = [children[i:i + batch] for i in range(0, n_resamples, batch)]
    jobs = _effective_jobs(n_jobs)
    if jobs == 1:
        results = (_fit_resamples(data, cells, n_cells, group, starts, fixed, settings) for group in batches)
    else:
        from joblib import Parallel, delayed

        results = Parallel(n_jobs=jobs, return_as="generator")(
            delayed(_fit_resamples)(data, cells, n_cells, group, starts, fixed, settings) for group in batches)
    if progress:
        from tqdm import tqdm

        results = tqdm(results, total=len(batches), desc="bootstrap", unit=f"x{batch} resamples")
    collected = [item for group in results for item in group]
    wall = time.perf_counter() - began

    samples = np.array([item[0] for item in collected])
    statuses = [item[1] for item in collected]
    result = BootstrapResult(
        label="joint, phi free" if phi is None else f"joint, phi = {phi:g}", convention=described["convention"],
        fixed=fixed, seed=int(seed), start_seed=starts.seed, n_starts=starts.n_starts, level=level,
        n_runs=len(runs), n_cells=n_cells, samples=samples, statuses=statuses,
        distinct_runs=np.array([item[2] for item in collected]), wall_time_s=wall, settings=settings.to_dict())
    unconverged = len(statuses) - statuses.count("converged")
    if unconverged:
        log.warning("%d of %d bootstrap refits did not end as converged: %s", unconverged, n_resamples,
                    result.to_dict()["resample_statuses"])
    log.info("block bootstrap: %d resamples of %d cells (%d runs) in %.1f s", n_resamples, n_cells, len(runs), wall)
    return result


def _effective_jobs(n_jobs: int | None) -> int:
    if n_jobs is None or n_jobs == 1:
        return 1
    from joblib import cpu_count

    return max(1, cpu_count() + 1 + n_jobs if n_jobs < 0 else n_jobs)


def stability_split(runs: pd.DataFrame, k: int | None = None, **fit_options) -> dict:
    """Refit the joint law on the lowest k budgets and on the rest (default k: half the budgets, rounded down).

    With the study's six budgets this is C <= 2.15e18 (56 runs) against C >= 4.64e18 (60 runs).
    """
    if "budget" not in runs.columns:
        raise RunTableError("the stability split orders runs by budget and needs a budget column (FLOPs)")
    budgets = sorted(set(runs["budget"].astype(float)))
    k = len(budgets) // 2 if k is None else int(k)
    if not 1 <= k < len(budgets):
        raise ValueError(f"k={k} must leave budgets on both sides; the table has {len(budgets)} budgets")
    out = {"k": k}
    for name, chosen in (("low", budgets[:k]), ("high", budgets[k:])):
        subset = runs[runs["budget"].isin(chosen)].reset_index(drop=True)
        fit = fit_joint(subset, label=f"joint, phi free, {name} budgets", **fit_options)
        out[name] = {"budgets": chosen, "n_runs": len(subset), "params": fit.params.to_dict(), "fit": fit}
    return out

