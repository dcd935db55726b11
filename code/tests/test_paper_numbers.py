"""grid_macros: design values from the grid file, trained-run values from a run table."""

import pandas as pd
import pytest

from isodepth.grids import load_grid
from isodepth.paper_numbers import grid_macros


def run_table(runs) -> pd.DataFrame:
    return pd.DataFrame([{"run_id": run.run_id, "budget": run.budget, "d_model": run.model.d_model,
                          "validation_tokens": 1000, "train_time_s": 36.0} for run in runs])


@pytest.fixture(scope="module")
def planned():
    return load_grid("micro").runs()


def test_partly_trained_grid(planned):
    budgets = sorted({run.budget for run in planned})
    # The lowest two budgets complete, and one run of the third.
    trained = [run for run in planned if run.budget <= budgets[1]]
    trained.append(next(run for run in planned if run.budget == budgets[2]))
    macros = grid_macros("micro", run_table(trained))
    assert macros["microNumRuns"] == str(len(trained))
    assert macros["microMissingRuns"] == str(len(planned) - len(trained))
    assert macros["microCompleteBudgets"] == "2"
    assert macros["microTrainedBudgets"] == "3"
    assert macros["microCoverage"] == "every run of the lowest 2 budgets and part of the next"
    widths = sorted({run.model.d_model for run in trained})
    assert (macros["microTrainedWidthMin"], macros["microTrainedWidthMax"]) == (str(widths[0]), str(widths[-1]))
    assert int(macros["microTrainedWidthMax"]) < int(macros["microWidthMax"])
    # Budgets step by 10^(1/3): three trained budgets span a factor of 10^(2/3).
    assert macros["microTrainedSpan"] == "5"
    assert macros["microCPUHours"] == f"{len(trained) * 36 / 3600:.1f}"


def test_fully_trained_grid_against_the_study(planned):
    macros = grid_macros("micro", run_table(planned))
    assert macros["microMissingRuns"] == "0"
    assert macros["microCoverage"] == "every planned run"
    assert macros["microCompleteBudgets"] == macros["microNumBudgets"] == "6"
    # Six budgets 10^(1/3) apart on both grids; the study's smallest is 4.64e17 FLOPs.
    assert macros["microTrainedSpan"] == macros["pubBudgetSpan"] == "46"
    assert macros["microComputeGap"] == "$10^{6}$"
    # The study's unique parameter counts are about a thousand times ours at both ends of the grids.
    gaps = [int(macros[name].replace("\\,", "")) for name in ("microParamGapMin", "microParamGapMax")]
    assert 500 < gaps[0] <= gaps[1] < 2000
