"""Reading and checking run tables for the fits, and writing fit results as JSON.

A run table is any CSV or DataFrame with at least the columns r, n_once, n_rec, tokens
(D, training tokens) and loss (final validation loss in nats). Optional columns serve the
steps that need them. The bootstrap cells, the stability split and the iso-FLOPs profiles
need budget (C in FLOPs). The least-squares N_once/N_rec split needs d_model (or size) and
recur_layers. run_id names runs in messages. Other columns are ignored.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import atomic_write_text

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("r", "n_once", "n_rec", "tokens", "loss")
NUMERIC_OPTIONAL = ("budget", "d_model", "size", "recur_layers", "flops_per_token", "effective_depth")
MIN_RUNS = 6  # the joint law has six parameters


class RunTableError(ValueError):
    """A run table that cannot be fitted; the message names the rows and the fix."""


def read_runs(path: str | Path, **checks) -> pd.DataFrame:
    """Read a run table from CSV and check it with validate_runs (keyword arguments pass through)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"run table {path} not found; build it with `isodepth collect` or give another CSV")
    frame = pd.read_csv(path)
    return validate_runs(frame, source=str(path), line_offset=2, **checks)


def _labels(frame: pd.DataFrame, line_offset: int | None) -> pd.Series:
    if line_offset is not None:
        where = [f"line {i + line_offset}" for i in range(len(frame))]
    else:
        where = [f"row {i}" for i in range(len(frame))]
    if "run_id" in frame.columns:
        ids = frame["run_id"].astype(str)
        return pd.Series([f"{run} ({place})" for run, place in zip(ids, where)], index=frame.index)
    return pd.Series(where, index=frame.index)


def _list_rows(labels: pd.Series, mask, limit: int = 8) -> str:
    chosen = list(labels[np.asarray(mask)])
    listed = ", ".join(chosen[:limit])
    if len(chosen) > limit:
        listed += f" and {len(chosen) - limit} more"
    return listed


def validate_runs(frame: pd.DataFrame, source: str = "run table", *, min_runs: int = MIN_RUNS,
                  min_distinct_r: int = 2, line_offset: int | None = None) -> pd.DataFrame:
    """Return a checked copy of a run table, or raise RunTableError naming the bad rows and the fix.

    Rejected: missing columns and non-numeric, NaN or infinite values. Also rejected are
    losses, token counts or budgets that are not positive, negative N_once or N_rec, and
    r that is not a positive integer. Runs that are not completed, duplicated runs, fewer
    than min_runs runs and fewer than min_distinct_r distinct values of r are rejected too.
    line_offset turns row positions into file line numbers (2 for a CSV with a header
    line). The copy gains a column "label" that names each run in later messages.
    """
    frame = frame.reset_index(drop=True).copy()
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise RunTableError(f"{source} is missing the columns {missing} (it has {list(frame.columns)}); "
                            f"a run table needs {list(REQUIRED_COLUMNS)}, as in data/derived/runs.csv")
    labels = _labels(frame, line_offset)
    frame["label"] = labels

    for column in REQUIRED_COLUMNS + tuple(c for c in NUMERIC_OPTIONAL if c in frame.columns):
        values = pd.to_numeric(frame[column], errors="coerce").astype(float)
        bad = ~np.isfinite(values.to_numpy())
        if bad.any() and column in REQUIRED_COLUMNS + ("budget",):
            raise RunTableError(f"{source}: column {column!r} is missing, non-numeric, NaN or infinite in "
                                f"{bad.sum()} runs: {_list_rows(labels, bad)}; drop those runs (a diverged run "
                                "has no loss) or fill in the value")
        frame[column] = values

    for column, meaning in (("loss", "validation loss in nats"), ("tokens", "training tokens")):
        bad = frame[column].to_numpy() <= 0
        if bad.any():
            raise RunTableError(f"{source}: {meaning} ({column!r}) must be positive but is <= 0 in "
                                f"{_list_rows(labels, bad)}; drop those runs or correct the value")
    if "budget" in frame.columns:
        bad = frame["budget"].to_numpy() <= 0
        if bad.any():
            raise RunTableError(f"{source}: budget (FLOPs) must be positive in {_list_rows(labels, bad)}")
    for column in ("n_once", "n_rec"):
        bad = frame[column].to_numpy() < 0
        if bad.any():
            raise RunTableError(f"{source}: {column} (parameters) is negative in {_list_rows(labels, bad)}; "
                                "correct the parameter counts")
    bad = (frame["n_once"] + frame["n_rec"]).to_numpy() <= 0
    if bad.any():
        raise RunTableError(f"{source}: n_once + n_rec is zero in {_list_rows(labels, bad)}; "
                            "a model needs a positive non-embedding parameter count")
    r = frame["r"].to_numpy()
    bad = (r < 1) | (r != np.round(r))
    if bad.any():
        raise RunTableError(f"{source}: r (recurrences) must be a positive integer but is not in "
                            f"{_list_rows(labels, bad)}")
    frame["r"] = r.astype(int)

    if "status" in frame.columns:
        bad = frame["status"].astype(str).str.strip().to_numpy() != "completed"
        if bad.any():
            raise RunTableError(f"{source}: {bad.sum()} runs are not completed ({_list_rows(labels, bad)}); "
                                "drop them or let `isodepth collect` exclude them")

    _check_duplicates(frame, labels, source)

    if len(frame) < min_runs:
        raise RunTableError(f"{source} has {len(frame)} runs but a fit needs at least {min_runs} "
                            "(one per law parameter); add runs")
    distinct_r = sorted(set(frame["r"]))
    if len(distinct_r) < min_distinct_r:
        raise RunTableError(f"{source} has only r = {distinct_r}; the joint law needs runs at "
                            f"{min_distinct_r} or more recurrence counts to identify phi. Add runs at another r, "
                            "or fit one Chinchilla law per r instead")
    return frame


def _check_duplicates(frame: pd.DataFrame, labels: pd.Series, source: str) -> None:
    if "run_id" in frame.columns:
        dup = frame["run_id"].duplicated(keep=False).to_numpy()
        if dup.any():
            raise RunTableError(f"{source}: run ids occur more than once: {_list_rows(labels, dup)}; "
                                "keep one row per run")
    key = [c for c in ("grid", "variant", "budget") if c in frame.columns] + ["r", "n_once", "n_rec", "tokens"]
    dup = frame.duplicated(subset=key, keep=False).to_numpy()
    if dup.any():
        raise RunTableError(f"{source}: several rows describe the same run (equal {key}): "
                            f"{_list_rows(labels, dup)}; keep one row per run (or average repeated seeds first)")


def jsonable(value):
    """Convert numpy scalars and arrays, tuples and NaN into plain JSON values (NaN becomes null)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def dumps(obj) -> str:
    """JSON text with every float at full precision (shortest repr that round-trips)."""
    return json.dumps(jsonable(obj), indent=1, allow_nan=False) + "\n"


def write_json(path: str | Path, obj) -> Path:
    """Write obj as JSON atomically (temporary file, then rename)."""
    path = Path(path)
    atomic_write_text(path, dumps(obj))
    log.info("wrote %s", path)
    return path
