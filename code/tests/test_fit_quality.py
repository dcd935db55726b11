"""Figures 8 and 9: the fit-quality notebook on the committed micro runs and real per-r fits."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from papermill.exceptions import PapermillExecutionError

from isodepth import paths
from isodepth.collect import collect, write_csv
from isodepth.fit.fits import fit_per_r
from isodepth.fit.io import read_runs, write_json
from isodepth.notebooks import run_notebook

NOTEBOOK = paths.ROOT / "notebooks" / "fit_quality.ipynb"
LOWER_BUDGETS = 1.31e12  # the lowest three micro budgets, trained for every r
N_STARTS = 20  # enough for the per-r laws on these runs; notebooks/fit.ipynb uses 500


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A run table of the committed micro runs at the lowest three budgets and a joint.json with
    their per-r fits, laid out as notebooks/fit.ipynb writes them."""
    folder = tmp_path_factory.mktemp("fit_quality")
    rows, _ = collect(["micro"], paths.ROOT / "data" / "runs")
    rows = [row for row in rows if float(row["budget"]) <= LOWER_BUDGETS]
    runs_csv = folder / "runs.csv"
    write_csv(rows, runs_csv)
    per_r = fit_per_r(read_runs(runs_csv), n_starts=N_STARTS, seed=0)
    joint = {
        "per_r": {str(r): {**fit.params.__dict__, "r2": fit.r2, "status": fit.status, "huber": fit.objective,
                           "n_runs": fit.n_runs} for r, fit in per_r.items()},
        "per_r_details": {str(r): fit.to_dict() for r, fit in per_r.items()},
    }
    joint_json = folder / "joint.json"
    write_json(joint_json, joint)
    return {"runs_csv": runs_csv, "joint_json": joint_json, "joint": joint, "n_runs": len(rows)}


def run_fit_quality(folder, runs_csv, joint_json):
    outputs = {name: folder / name for name in ("fit_quality.pdf", "fit_residuals.pdf", "numbers.tex")}
    run_notebook(NOTEBOOK, {"runs_csv": str(runs_csv), "joint_json": str(joint_json), "grid": "micro",
                            "predicted_pdf": str(outputs["fit_quality.pdf"]),
                            "residuals_pdf": str(outputs["fit_residuals.pdf"]),
                            "numbers_tex": str(outputs["numbers.tex"])},
                 list(outputs.values()))
    numbers = dict(re.findall(r"\\newcommand\{\\(\w+)\}\{(.*)\}", outputs["numbers.tex"].read_text()))
    return outputs, numbers


def test_notebook_on_committed_runs(tmp_path, fitted):
    outputs, numbers = run_fit_quality(tmp_path, fitted["runs_csv"], fitted["joint_json"])
    assert outputs["fit_quality.pdf"].read_bytes().startswith(b"%PDF")
    assert outputs["fit_residuals.pdf"].read_bytes().startswith(b"%PDF")

    per_r = fitted["joint"]["per_r"]
    assert numbers["fitqNumFits"] == str(len(per_r))
    assert numbers["fitqMissingFits"] == "0"
    assert numbers["fitqNumRuns"] == str(fitted["n_runs"])
    r2 = [fit["r2"] for fit in per_r.values()]
    assert numbers["fitqRsqMin"] == f"{min(r2):.4f}"
    assert numbers["fitqRsqMax"] == f"{max(r2):.4f}"
    rmse = [fit["rmse_nats"] for fit in fitted["joint"]["per_r_details"].values()]
    assert numbers["fitqRmseMin"] == f"{min(rmse):.3f}"
    assert numbers["fitqRmseMax"] == f"{max(rmse):.3f}"
    largest = max(fit["max_abs_residual_nats"] for fit in fitted["joint"]["per_r_details"].values())
    assert numbers["fitqMaxAbs"] == f"{largest:.3f}"
    assert 0.0 <= float(numbers["fitqCorrN"]) <= 1.0


def test_notebook_rejects_changed_losses(tmp_path, fitted):
    """A run table edited after the fit no longer reproduces the stored R^2."""
    runs = pd.read_csv(fitted["runs_csv"])
    runs.loc[0, "loss"] += 0.3
    changed = tmp_path / "runs.csv"
    runs.to_csv(changed, index=False)
    with pytest.raises(PapermillExecutionError, match="rebuild"):
        run_fit_quality(tmp_path, changed, fitted["joint_json"])
    assert not (tmp_path / "fit_quality.pdf").exists()


def test_notebook_reports_missing_fit(tmp_path, fitted):
    joint = json.loads(fitted["joint_json"].read_text())
    dropped = max(joint["per_r"], key=int)
    del joint["per_r"][dropped]
    partial = tmp_path / "joint.json"
    write_json(partial, joint)
    _, numbers = run_fit_quality(tmp_path, fitted["runs_csv"], partial)
    assert numbers["fitqMissingFits"] == "1"
    assert numbers["fitqNumFits"] == str(len(joint["per_r"]))
    runs = pd.read_csv(fitted["runs_csv"])
    assert numbers["fitqNumRuns"] == str(int(np.sum(runs["r"] != int(dropped))))


@pytest.mark.slow
def test_notebook_after_fit_notebook(tmp_path, fitted):
    """The contract with notebooks/fit.ipynb itself: its joint.json feeds this notebook."""
    joint_json = tmp_path / "joint.json"
    run_notebook(paths.ROOT / "notebooks" / "fit.ipynb",
                 {"runs_csv": str(fitted["runs_csv"]), "joint_json": str(joint_json),
                  "numbers_tex": str(tmp_path / "fit_numbers.tex"), "n_starts": 30, "n_bootstrap": 2,
                  "n_bootstrap_per_r": 2},
                 [joint_json])
    _, numbers = run_fit_quality(tmp_path, fitted["runs_csv"], joint_json)
    assert numbers["fitqNumRuns"] == str(fitted["n_runs"])
    assert numbers["fitqMissingFits"] == "0"
