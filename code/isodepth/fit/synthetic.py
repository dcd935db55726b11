"""Synthetic run tables shaped like a planned grid, with losses drawn from a known joint law.

Tests and benchmarks use them to check that the fits recover known parameters. The
parameter counts, FLOPs per token and tokens come from the grid planner, so a synthetic
table has the same columns as data/derived/runs.csv.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pandas as pd

from .. import paths
from .conventions import LITERAL, split_params
from .laws import LawParams

PUBLISHED = paths.REFERENCE / "published.json"


def published_joint_params() -> LawParams:
    """Read the study's published joint fit (phi free): A, alpha, B, beta, E, phi."""
    values = json.loads(PUBLISHED.read_text())["joint_fit"]["phi_free"]
    return LawParams(A=values["A"], alpha=values["alpha"], B=values["B"], beta=values["beta"],
                     E=values["E"], phi=values["phi"])


def planned_runs_table(grid: str = "paper") -> pd.DataFrame:
    """Plan a grid and return one row per run with the runs.csv columns except loss (imports torch)."""
    return _planned_runs_table(grid).copy()


@functools.lru_cache(maxsize=8)
def _planned_runs_table(grid: str) -> pd.DataFrame:
    from ..grids import load_grid

    planned = load_grid(grid)
    arch = planned.spec["model"]
    # Layers inside the recurrence per token in the looped family (16 at the study's scale),
    # the same for every r, as the collector reports them; r = 1 runs are plain stacks.
    recur_layers = arch["effective_depth"] - arch["n_prelude"] - arch["n_coda"]
    rows = []
    for run in planned.runs():
        model = run.model
        rows.append({
            "grid": run.grid, "run_id": run.run_id, "variant": run.variant, "budget": run.budget, "r": run.r,
            "size": run.size, "d_model": model.d_model, "effective_depth": model.effective_depth,
            "recur_layers": recur_layers, "n_once": run.n_once, "n_rec": run.n_rec,
            "n_total": run.n_total, "flops_per_token": run.flops_per_token, "steps": run.steps,
            "tokens": run.tokens, "train_time_s": 0.0, "status": "completed",
        })
    return pd.DataFrame(rows)


def synthetic_runs(grid: str = "paper", params: LawParams | None = None, noise_nats: float = 0.0,
                   seed: int = 0, convention: str = LITERAL, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Build a run table whose losses follow the joint law (default: the published fit) plus Gaussian noise in nats.

    table reuses an already planned table (planned_runs_table), so repeated draws skip the planner.
    """
    params = params or published_joint_params()
    frame = (planned_runs_table(grid) if table is None else table).copy()
    frame["label"] = frame["run_id"]
    split = split_params(frame, convention)
    loss = params.joint_loss(split.n_once, split.n_rec, frame["r"].to_numpy(), frame["tokens"].to_numpy())
    if noise_nats > 0:
        loss = loss + np.random.default_rng(seed).normal(0.0, noise_nats, size=loss.size)
    frame["loss"] = loss
    return frame.drop(columns="label")
