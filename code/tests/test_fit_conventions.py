"""N_once/N_rec conventions: literal columns and the per-width least-squares split."""

import numpy as np
import pytest

from isodepth.fit import effective_params, split_params, validate_runs
from isodepth.fit.conventions import check_convention
from isodepth.fit.io import RunTableError
from isodepth.fit.synthetic import planned_runs_table, synthetic_runs


@pytest.fixture(scope="module")
def paper_runs():
    return validate_runs(synthetic_runs(table=planned_runs_table("paper")))


def test_literal_returns_columns(paper_runs):
    split = split_params(paper_runs, "literal")
    np.testing.assert_array_equal(split.n_once, paper_runs["n_once"].to_numpy(float))
    assert split.per_width == {}


def test_least_squares_split_reproduces_figure1(paper_runs):
    split = split_params(paper_runs, "least-squares")
    rows = paper_runs.assign(n_once_fit=split.n_once, n_rec_fit=split.n_rec)
    at_width = rows[rows["size"] == 10].drop_duplicates("r").set_index("r")
    n_eff = effective_params(at_width["n_once_fit"], at_width["n_rec_fit"], at_width.index, 0.46)
    ratio = dict(zip(at_width.index, n_eff / n_eff[list(at_width.index).index(1)]))
    for r, expected in ((2, 0.75), (4, 0.58), (8, 0.47)):
        assert ratio[r] == pytest.approx(expected, abs=0.005)


def test_least_squares_split_is_per_width(paper_runs):
    split = split_params(paper_runs, "least-squares")
    assert len(split.per_width) == paper_runs["d_model"].nunique()
    entry = split.per_width["640"]
    assert entry["recurrences"] == [1, 2, 4, 8]
    # The fitted block is close to one layer, 12 d^2 + 2 d.
    assert entry["n_block"] == pytest.approx(12 * 640 ** 2, rel=0.02)


def test_least_squares_needs_width_columns(paper_runs):
    with pytest.raises(RunTableError, match="recur_layers and d_model"):
        split_params(paper_runs.drop(columns=["recur_layers"]), "least-squares")


def test_least_squares_needs_two_r_per_width(paper_runs):
    lonely = paper_runs[~((paper_runs["size"] == 34) & (paper_runs["r"] != 4))]
    with pytest.raises(RunTableError, match="d_model = 2176 has only r = \\[4\\]"):
        split_params(lonely, "least-squares")


def test_unknown_convention_rejected():
    assert check_convention("least_squares") == "least-squares"
    with pytest.raises(ValueError, match="unknown N_once/N_rec convention"):
        check_convention("fitted")
