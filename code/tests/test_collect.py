"""Collector: schema checks and exclusion of diverged or incomplete runs by name."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from isodepth.collect import COLUMNS, collect, write_csv


def record(run_id: str, status: str = "completed", loss=3.5) -> dict:
    return {
        "grid": "g", "run_id": run_id, "variant": "main", "status": status, "budget": 1e12, "r": 2,
        "size": 6, "model": {"d_model": 24, "n_prelude": 1, "n_coda": 1, "n_recur_layers": 4},
        "accounting": {"n_once": 100, "n_rec": 200, "n_total": 300, "flops_per_token": 1e6},
        "training": {"steps": 10, "tokens": 6400, "recipe": {"muon_lr": 0.01}}, "final_val_loss": loss,
        "validation_tokens": 1000, "train_time_s": 1.5,
    }


def write(runs_dir, rec):
    folder = runs_dir / rec["grid"] / rec["run_id"]
    folder.mkdir(parents=True)
    (folder / "record.json").write_text(json.dumps(rec))


def test_collect_writes_schema(tmp_path):
    write(tmp_path, record("a"))
    rows, excluded = collect(["g"], tmp_path)
    out = tmp_path / "runs.csv"
    write_csv(rows, out)
    table = pd.read_csv(out)
    assert list(table.columns) == COLUMNS
    assert table.loc[0, "effective_depth"] == 10
    assert table.loc[0, "recur_layers"] == 8
    assert excluded == []


@pytest.mark.parametrize("status,loss", [("diverged", None), ("running", None), ("completed", float("nan")),
                                         ("completed", -1.0), ("completed", None)])
def test_collect_excludes_by_name(tmp_path, status, loss):
    write(tmp_path, record("good"))
    write(tmp_path, record("bad", status=status, loss=loss))
    rows, excluded = collect(["g"], tmp_path)
    assert [r["run_id"] for r in rows] == ["good"]
    assert len(excluded) == 1
    assert excluded[0].startswith("bad:")


def test_collect_malformed_record_names_file(tmp_path):
    rec = record("broken")
    del rec["accounting"]
    write(tmp_path, rec)
    with pytest.raises(ValueError, match="broken/record.json"):
        collect(["g"], tmp_path)


def test_collect_missing_grid(tmp_path):
    with pytest.raises(FileNotFoundError, match="make runs GRID=nope"):
        collect(["nope"], tmp_path)
