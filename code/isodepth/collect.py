"""Collect run records into one schema-checked table (data/derived/runs.csv)."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path

from . import paths
from .io import atomic_write_text

log = logging.getLogger(__name__)

COLUMNS = ["grid", "run_id", "variant", "budget", "r", "size", "d_model", "effective_depth",
           "recur_layers", "n_once", "n_rec",
           "n_total", "flops_per_token", "steps", "tokens", "loss", "validation_tokens", "muon_lr", "train_time_s", "status"]


def _recur_layers(record: dict) -> int:
    """Layers executed inside the recurrence per token in the run's looped family (16 at the
    study's scale): the same for every r, also for r = 1 runs that hold all layers in one block."""
    family = record.get("family")
    if family:
        return family["effective_depth"] - family["n_prelude"] - family["n_coda"]
    return record["model"]["n_recur_layers"] * int(record["r"])


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
            "flops_per_token": float(record["accounting"]["flops_per_token"]),
            "steps": int(record["training"]["steps"]), "tokens": int(record["training"]["tokens"]),
            "loss": record["final_val_loss"], "validation_tokens": int(record["validation_tokens"]),
            # MuonH rate at the recipe's reference configuration, before the transfer rules.
            "muon_lr": float(record["training"]["recipe"]["muon_lr"]),
            "train_time_s": float(record["train_time_s"]),
            "status": record["status"],
        }
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"run record {source} is malformed ({err!r}); retrain the run or delete the record") from err
    return row


def collect(grids: list[str], runs_dir: Path | None = None) -> tuple[list[dict], list[str]]:
    """Read every record of the grids; return usable rows and a message per excluded run."""
    runs_dir = Path(runs_dir or paths.RUNS)
    rows, excluded = [], []
    for grid in grids:
        folder = runs_dir / grid
        if not folder.is_dir():
            raise FileNotFoundError(f"no run records for grid {grid!r} in {folder}; train it with `make runs GRID={grid}`")
        for path in sorted(folder.glob("*/record.json")):
            row = _row(json.loads(path.read_text()), path)
            loss = row["loss"]
            if row["status"] != "completed":
                excluded.append(f"{row['run_id']}: status {row['status']}")
                continue
            if loss is None or not math.isfinite(loss) or loss <= 0:
                excluded.append(f"{row['run_id']}: validation loss {loss!r} is not a positive number")
                continue
            rows.append(row)
    for message in excluded:
        log.warning("excluded run %s", message)
    return rows, excluded


def write_csv(rows: list[dict], out: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    atomic_write_text(out, buffer.getvalue())


def _command(args) -> int:
    rows, excluded = collect(args.grids)
    write_csv(rows, args.out)
    log.info("wrote %d runs to %s (%d excluded)", len(rows), args.out, len(excluded))
    return 0


def add_command(sub) -> None:
    parser = sub.add_parser("collect", help="collect run records into a CSV table")
    parser.add_argument("grids", nargs="+", help="grid names under data/runs")
    parser.add_argument("--out", type=Path, default=paths.DERIVED / "runs.csv")
    parser.set_defaults(func=_command)
