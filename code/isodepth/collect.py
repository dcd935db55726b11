"""Collect run records into one schema-checked table (data/derived/runs.csv).

collect() reads every record in the folders of the named grids. collect_grid() follows a
grid spec instead. It reads the grid's own planned runs and the runs it reuses from other
grids, and each row keeps the grid and run id of its record. It also returns a Coverage that
names every planned run without a usable record, so a grid still in training can be
collected without failing.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from . import paths
from .io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

COLUMNS = ["grid", "run_id", "variant", "budget", "r", "size", "d_model", "effective_depth",
           "recur_layers", "n_once", "n_rec",
           "n_total", "flops_per_token", "steps", "tokens", "loss", "validation_tokens", "muon_lr", "train_time_s", "status",
           "injection", "grad_recurrences"]

COVERAGE_SCHEMA = "isodepth.coverage/1"
MISSING, EXCLUDED, COLLECTED = "missing", "excluded", "collected"


def _recur_layers(record: dict) -> int:
    """Layers executed inside the recurrence per token in the run's looped family (16 at the
    study's scale): the same for every r, also for r = 1 runs that hold all layers in one block."""
    family = record.get("family")
    if family:
        return family["effective_depth"] - family["n_prelude"] - family["n_coda"]
    return record["model"]["n_recur_layers"] * int(record["r"])


def _malformed(source: Path, detail: str) -> ValueError:
    return ValueError(f"run record {source} is malformed ({detail}); retrain the run or delete the record")


def _read_row(source: Path) -> dict:
    """Read one record.json into a table row. Raises ValueError naming the file when the record is
    not valid JSON or lacks a field of the table."""
    try:
        record = json.loads(source.read_text())
    except UnicodeDecodeError as err:
        raise _malformed(source, f"not UTF-8 text: {err.reason} at byte {err.start}") from err
    except json.JSONDecodeError as err:
        raise _malformed(source, f"invalid JSON: {err}") from err
    if not isinstance(record, dict):
        raise _malformed(source, f"a JSON {type(record).__name__} instead of an object")
    return _row(record, source)


def _loss(value):
    """Return the final validation loss: a number, or None for a run that ended without one."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise TypeError(f"final_val_loss {value!r} is not a number or null")
    return value


def _row(record: dict, source: Path) -> dict:
    try:
        row = {
            "grid": record["grid"], "run_id": record["run_id"], "variant": record["variant"],
            "budget": float(record["budget"]), "r": int(record["r"]), "size": int(record["size"]),
            "d_model": int(record["model"]["d_model"]),
            "effective_depth": (record["model"]["n_prelude"] + record["model"]["n_coda"]
                                + record["model"]["n_recur_layers"] * int(record["r"])),
            "recur_layers": _recur_layers(record),
            "n_once": int(record["accounting"]["n_once"]), "n_rec": int(record["accounting"]["n_rec"]),
            "n_total": int(record["accounting"]["n_total"]),
            # Truncated BPTT counts its detached recurrences as forward-only here, so at one
            # budget such a run takes more tokens than its full-backprop twin.
            "flops_per_token": float(record["accounting"]["flops_per_token"]),
            "steps": int(record["training"]["steps"]), "tokens": int(record["training"]["tokens"]),
            "loss": _loss(record["final_val_loss"]), "validation_tokens": int(record["validation_tokens"]),
            # MuonH rate at the recipe's reference configuration, before the transfer rules.
            "muon_lr": float(record["training"]["recipe"]["muon_lr"]),
            "train_time_s": float(record["train_time_s"]),
            "status": record["status"],
            # Records written before these fields existed had linear injection and full backprop.
            "injection": record["model"].get("injection", "linear"),
            "grad_recurrences": int(record["model"].get("grad_recurrences") or record["r"]),
        }
    except KeyError as err:
        raise _malformed(source, f"missing key {err.args[0]!r}") from err
    except (AttributeError, TypeError, ValueError) as err:
        raise _malformed(source, str(err)) from err
    return row


def _exclusion(row: dict) -> str | None:
    """Why a run cannot enter a fit, or None when it can."""
    loss = row["loss"]
    if row["status"] != "completed":
        return f"status {row['status']}"
    if loss is None or not math.isfinite(loss) or loss <= 0:
        return f"validation loss {loss!r} is not a positive number"
    return None


def collect(grids: list[str], runs_dir: Path | None = None) -> tuple[list[dict], list[str]]:
    """Read every record of the grids; return usable rows and a message per excluded run."""
    runs_dir = Path(runs_dir or paths.RUNS)
    rows, excluded = [], []
    for grid in grids:
        folder = runs_dir / grid
        if not folder.is_dir():
            raise FileNotFoundError(f"no run records for grid {grid!r} in {folder}; train it with `make runs GRID={grid}`")
        for path in sorted(folder.glob("*/record.json")):
            row = _read_row(path)
            reason = _exclusion(row)
            if reason:
                excluded.append(f"{row['run_id']}: {reason}")
                continue
            rows.append(row)
    for message in excluded:
        log.warning("excluded run %s", message)
    return rows, excluded


@dataclass
class Coverage:
    """Record status of every planned run of a grid, its own and the reused ones.

    Each entry of runs has the planned grid, run_id, budget (FLOPs), r, size, variant,
    injection, tokens (planned training tokens), source ("own" or "reused"), state
    ("collected", "missing": no record yet, or "excluded": diverged or unfinished) and
    reason. unplanned lists records in the grid's folder that the spec does not plan
    (left over from an older spec); they are collected too.
    """

    grid: str
    runs: list[dict] = field(default_factory=list)
    unplanned: list[str] = field(default_factory=list)

    def count(self, state: str | None = None) -> int:
        return sum(1 for run in self.runs if state is None or run["state"] == state)

    def to_dict(self) -> dict:
        return {"grid": self.grid, "n_planned": self.count(), "n_collected": self.count(COLLECTED),
                "n_missing": self.count(MISSING), "n_excluded": self.count(EXCLUDED),
                "runs": self.runs, "unplanned": self.unplanned}


def collect_grid(name: str, runs_dir: Path | None = None, reuse: bool = True) -> tuple[list[dict], Coverage]:
    """Read the records of a grid's planned runs, and of the runs it reuses unless reuse is False.

    A planned run without a record is reported as missing, and one that diverged or did not
    finish as excluded; neither raises. Rows come in run-id order for the grid's own runs,
    then the reused runs in the order of the reuse entries and of their grids' plans.
    """
    from .grids import load_grid, reused_plans

    runs_dir = Path(runs_dir or paths.RUNS)
    grid = load_grid(name)
    planned = [(run, "own") for run in sorted(grid.runs(), key=lambda run: run.run_id)]
    if reuse:
        planned += [(run, "reused") for run in reused_plans(grid)]

    coverage = Coverage(grid=grid.name)
    rows = []
    for run, source in planned:
        entry = {"grid": run.grid, "run_id": run.run_id, "budget": run.budget, "r": run.r, "size": run.size,
                 "variant": run.variant, "injection": run.model.injection, "tokens": run.tokens,
                 "source": source, "state": MISSING, "reason": "not trained yet"}
        path = runs_dir / run.grid / run.run_id / "record.json"
        if path.exists():
            row = _read_row(path)
            if (row["grid"], row["run_id"]) != (run.grid, run.run_id):
                raise ValueError(f"run record {path} names the run {row['grid']}/{row['run_id']}; move it "
                                 f"to {runs_dir / row['grid'] / row['run_id']}/ or delete it")
            reason = _exclusion(row)
            entry["state"], entry["reason"] = (EXCLUDED, reason) if reason else (COLLECTED, "")
            if not reason:
                rows.append(row)
        coverage.runs.append(entry)

    planned_ids = {run.run_id for run, source in planned if source == "own"}
    folder = runs_dir / grid.name
    for path in sorted(folder.glob("*/record.json")) if folder.is_dir() else []:
        if path.parent.name in planned_ids:
            continue
        row = _read_row(path)
        coverage.unplanned.append(row["run_id"])
        if _exclusion(row) is None:
            rows.append(row)
        log.warning("grid %s: record %s is not a planned run of the grid spec; collected anyway", grid.name, path)

    _log_coverage(coverage)
    return rows, coverage


def _log_coverage(coverage: Coverage) -> None:
    for run in coverage.runs:
        if run["state"] == EXCLUDED:
            log.warning("excluded run %s/%s: %s", run["grid"], run["run_id"], run["reason"])
    missing = [f"{run['grid']}/{run['run_id']}" for run in coverage.runs if run["state"] == MISSING]
    if missing:
        listed = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        log.warning("grid %s: %d of %d planned runs are not trained yet: %s", coverage.grid, len(missing),
                    coverage.count(), listed)


def write_csv(rows: list[dict], out: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    atomic_write_text(out, buffer.getvalue())


def write_coverage(coverages: list[Coverage], out: Path) -> None:
    """Write the coverage of each collected grid as JSON, the input for "not trained yet" notes."""
    atomic_write_json(out, {"schema": COVERAGE_SCHEMA, "grids": [c.to_dict() for c in coverages]})


def _command(args) -> int:
    from .grids import grid_path

    if args.runs_dir is not None and not args.runs_dir.is_dir():
        raise FileNotFoundError(f"runs folder {args.runs_dir} (--runs-dir) does not exist; give the folder "
                                "that holds <grid>/<run_id>/record.json")
    runs_dir = Path(args.runs_dir or paths.RUNS)
    rows, coverages, n_excluded, seen = [], [], 0, set()
    for name in args.grids:
        try:
            grid_path(name)
        except FileNotFoundError:
            if not (runs_dir / name).is_dir():
                raise  # neither a grid spec nor records exist, so report the unknown grid
            # Records without a spec: read whatever the grid's folder holds, as before specs had reuse.
            grid_rows, excluded = collect([name], runs_dir)
            n_excluded += len(excluded)
        else:
            grid_rows, coverage = collect_grid(name, runs_dir, reuse=not args.no_reuse)
            coverages.append(coverage)
            n_excluded += coverage.count(EXCLUDED)
        for row in grid_rows:
            key = (row["grid"], row["run_id"])
            if key not in seen:
                seen.add(key)
                rows.append(row)
    write_csv(rows, args.out)
    if args.coverage:
        write_coverage(coverages, args.coverage)
    missing = sum(c.count(MISSING) for c in coverages)
    log.info("wrote %d runs to %s (%d excluded, %d planned runs not trained yet)", len(rows), args.out,
             n_excluded, missing)
    return 0


def add_command(sub) -> None:
    parser = sub.add_parser("collect", help="collect run records into a CSV table")
    parser.add_argument("grids", nargs="+",
                        help="grid names in data/grids, or paths to grid YAML files. A name without a "
                             "spec collects every record in its folder of the runs folder")
    parser.add_argument("--out", type=Path, default=paths.DERIVED / "runs.csv", metavar="CSV",
                        help="CSV table to write (default data/derived/runs.csv)")
    parser.add_argument("--runs-dir", type=Path, default=None, metavar="DIR",
                        help="folder of run records (default data/runs); the runs that a grid reuses "
                             "from other grids are read from the same folder")
    parser.add_argument("--coverage", type=Path, default=None, metavar="JSON",
                        help="also write a JSON file that lists every planned run as collected, missing "
                             "(not trained yet) or excluded")
    parser.add_argument("--no-reuse", action="store_true",
                        help="leave out the runs that a grid reuses from other grids")
    parser.set_defaults(func=_command)
