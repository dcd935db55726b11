"""Block bootstrap over (budget, r) cells and the budget stability split."""

import numpy as np
import pytest

from isodepth.fit import block_bootstrap, stability_split, validate_runs
from isodepth.fit.bootstrap import cell_index, resample_weights
from isodepth.fit.io import RunTableError
from isodepth.fit.synthetic import planned_runs_table, published_joint_params, synthetic_runs


@pytest.fixture(scope="module")
def planned():
    return planned_runs_table("paper")


@pytest.fixture(scope="module")
def noisy_runs(planned):
    return validate_runs(synthetic_runs(table=planned, noise_nats=0.01, seed=21))


def test_cells_are_budget_r_pairs(noisy_runs):
    cells, n_cells = cell_index(noisy_runs)
    assert n_cells == 24
    assert np.bincount(cells).sum() == 116


def test_resample_weights_move_whole_cells(noisy_runs):
    cells, n_cells = cell_index(noisy_runs)
    weight = resample_weights(cells, n_cells, np.random.default_rng(0))
    for cell in range(n_cells):
        assert np.unique(weight[cells == cell]).size == 1
    draws_per_cell = [weight[cells == cell][0] for cell in range(n_cells)]
    assert sum(draws_per_cell) == n_cells


def test_bootstrap_is_seeded_and_streams_differ(noisy_runs):
    first = block_bootstrap(noisy_runs, n_resamples=4, n_starts=30, seed=5, n_jobs=1)
    again = block_bootstrap(noisy_runs, n_resamples=4, n_starts=30, seed=5, n_jobs=1)
    other = block_bootstrap(noisy_runs, n_resamples=4, n_starts=30, seed=6, n_jobs=1)
    np.testing.assert_array_equal(first.samples, again.samples)
    assert not np.array_equal(first.samples, other.samples)
    # Each resample has its own stream, so no two resamples are the same draw.
    assert len({tuple(row) for row in first.samples}) == 4


def test_intervals_report_runs_and_cells(noisy_runs):
    result = block_bootstrap(noisy_runs, n_resamples=6, n_starts=30, seed=1, n_jobs=1)
    intervals = result.intervals()
    assert set(intervals) == {"A", "alpha", "B", "beta", "E", "phi"}
    for interval in intervals.values():
        assert interval["low"] <= interval["median"] <= interval["high"]
        assert interval["n_runs"] == 116
        assert interval["n_cells"] == 24
    summary = result.to_dict()
    assert summary["block"] == "(budget, r) cell"
    assert len(summary["samples"]["phi"]) == 6


def test_bootstrap_with_fixed_phi_omits_phi(noisy_runs):
    result = block_bootstrap(noisy_runs, phi=0.0, n_resamples=2, n_starts=20, n_jobs=1)
    assert "phi" not in result.intervals()


def test_bootstrap_needs_budget(noisy_runs):
    with pytest.raises(RunTableError, match="budget column"):
        block_bootstrap(noisy_runs.drop(columns="budget"), n_resamples=2, n_starts=5, n_jobs=1)


def test_stability_split_halves_budgets(noisy_runs):
    split = stability_split(noisy_runs, n_starts=40)
    assert split["k"] == 3
    assert split["low"]["n_runs"] == 56
    assert split["high"]["n_runs"] == 60
    assert max(split["low"]["budgets"]) == pytest.approx(2.15e18)
    assert min(split["high"]["budgets"]) == pytest.approx(4.64e18)
    assert abs(split["low"]["params"]["phi"] - split["high"]["params"]["phi"]) < 0.2


def test_stability_split_rejects_bad_k(noisy_runs):
    with pytest.raises(ValueError, match="both sides"):
        stability_split(noisy_runs, k=6, n_starts=5)


@pytest.mark.slow
def test_bootstrap_interval_coverage(planned):
    """95% block-bootstrap intervals cover the true phi, alpha and beta in at least 85% of noisy datasets."""
    truth = published_joint_params()
    seeds = range(20)
    covered = {"phi": 0, "alpha": 0, "beta": 0}
    for seed in seeds:
        runs = validate_runs(synthetic_runs(table=planned, noise_nats=0.01, seed=1000 + seed))
        intervals = block_bootstrap(runs, n_resamples=100, n_starts=40, seed=seed, n_jobs=-1).intervals()
        for name in covered:
            covered[name] += intervals[name]["low"] <= getattr(truth, name) <= intervals[name]["high"]
    for name, count in covered.items():
        assert count / len(seeds) >= 0.85, f"{name}: covered in {count} of {len(seeds)} datasets"
