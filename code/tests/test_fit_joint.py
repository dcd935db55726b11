"""Joint and per-r fits: recovery of known parameters, start selection, engines, diagnostics, JSON."""

import json

import numpy as np
import pytest

from isodepth.fit import (FitResult, OptimizerSettings, draw_starts, fit_chinchilla, fit_joint, fit_per_r,
                          fit_restricted, joint_residuals, subset_runs, validate_runs)
from isodepth.fit.fits import joint_data
from isodepth.fit.io import dumps
from isodepth.fit.laws import LawParams
from isodepth.fit.optimize import lockstep_available, run_multistart
from isodepth.fit.synthetic import planned_runs_table, published_joint_params, synthetic_runs

STARTS = 120


@pytest.fixture(scope="module")
def planned():
    return planned_runs_table("paper")


@pytest.fixture(scope="module")
def exact_runs(planned):
    return validate_runs(synthetic_runs(table=planned))


@pytest.fixture(scope="module")
def noisy_runs(planned):
    return validate_runs(synthetic_runs(table=planned, noise_nats=0.01, seed=7))


def test_noise_free_recovers_all_parameters(exact_runs):
    truth = published_joint_params()
    fit = fit_joint(exact_runs, n_starts=STARTS, seed=1)
    got = fit.params
    assert got.alpha == pytest.approx(truth.alpha, abs=1e-4)
    assert got.beta == pytest.approx(truth.beta, abs=1e-4)
    assert got.phi == pytest.approx(truth.phi, abs=1e-3)
    assert got.A == pytest.approx(truth.A, rel=1e-3)
    assert got.B == pytest.approx(truth.B, rel=1e-3)
    assert got.E == pytest.approx(truth.E, rel=1e-4)
    assert fit.r2 == pytest.approx(1.0, abs=1e-9)
    assert fit.status == "converged"
    assert fit.n_runs == 116
    assert fit.n_cells == 24


def test_noise_free_micro_scale_recovery(planned):
    # Micro-scale magnitudes: N ~ 2e4 to 2e6, D ~ 1e5 to 4e6, loss ~ 3 to 5 nats.
    truth = LawParams(A=60.0, alpha=0.3, B=400.0, beta=0.4, E=2.2, phi=0.6)
    micro = validate_runs(synthetic_runs("micro", params=truth))
    assert micro["n_once"].add(micro["n_rec"]).max() < 3e6
    fit = fit_joint(micro, n_starts=STARTS, seed=2)
    assert fit.params.alpha == pytest.approx(0.3, abs=1e-4)
    assert fit.params.beta == pytest.approx(0.4, abs=1e-4)
    assert fit.params.phi == pytest.approx(0.6, abs=1e-3)


def test_best_start_independent_of_order(noisy_runs):
    data, _ = joint_data(noisy_runs)
    starts = draw_starts(60, seed=3)
    forward = run_multistart(data, starts)
    reversed_starts = type(starts)(points=starts.points[::-1].copy(), seed=starts.seed, box=starts.box)
    backward = run_multistart(data, reversed_starts)
    assert forward.objective[forward.best_index] == pytest.approx(backward.objective[backward.best_index], rel=1e-9)
    np.testing.assert_allclose(forward.x[forward.best_index], backward.x[backward.best_index], rtol=1e-4, atol=1e-5)
    assert forward.best_index == 59 - backward.best_index or forward.n_at_best() > 1


def test_best_index_is_lowest_objective_not_first(noisy_runs):
    data, _ = joint_data(noisy_runs)
    result = run_multistart(data, draw_starts(8, seed=4))
    result.objective = np.array([5.0, 4.0, 3.0, np.nan, 2.0, 6.0, 7.0, 1.0])
    assert result.best_index == 7


@pytest.mark.skipif(not lockstep_available(), reason="this scipy lacks the reverse-communication L-BFGS-B routine")
def test_lockstep_engine_matches_scipy_minimize(noisy_runs):
    data, _ = joint_data(noisy_runs)
    starts = draw_starts(12, seed=5)
    lockstep = run_multistart(data, starts, settings=OptimizerSettings(engine="lockstep"))
    reference = run_multistart(data, starts, settings=OptimizerSettings(engine="minimize"))
    # Same algorithm and bit-identical objective values, so each start follows the same path.
    np.testing.assert_allclose(lockstep.x, reference.x, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(lockstep.objective, reference.objective, rtol=1e-12)
    np.testing.assert_array_equal(lockstep.n_iterations, reference.n_iterations)


def test_parallel_workers_give_same_result(noisy_runs):
    data, _ = joint_data(noisy_runs)
    starts = draw_starts(16, seed=6)
    serial = run_multistart(data, starts)
    parallel = run_multistart(data, starts, settings=OptimizerSettings(n_jobs=2))
    np.testing.assert_array_equal(serial.objective, parallel.objective)
    np.testing.assert_array_equal(serial.x, parallel.x)


def test_fixed_phi_is_held(noisy_runs):
    fits = fit_restricted(noisy_runs, n_starts=60)
    assert fits[0.0].params.phi == 0.0
    assert fits[1.0].params.phi == 1.0
    free = fit_joint(noisy_runs, n_starts=60)
    assert free.objective <= fits[0.0].objective
    assert free.objective <= fits[1.0].objective


def test_iteration_limit_is_reported(noisy_runs):
    fit = fit_joint(noisy_runs, n_starts=5, settings=OptimizerSettings(max_iter=3))
    assert fit.status == "iteration_limit"


def test_parameter_on_bound_is_reported(noisy_runs):
    box = {"a": (-5, 35), "b": (-5, 35), "e": (-3, 2), "alpha": (0.0, 0.1), "beta": (0, 2.5), "phi": (-3, 3)}
    fit = fit_joint(noisy_runs, starts=draw_starts(40, seed=0, box=box))
    assert fit.status == "at_bound"
    assert fit.diagnostics["params_at_bound"] == ["alpha"]


def test_diagnostics_fields(noisy_runs):
    fit = fit_joint(noisy_runs, n_starts=40, seed=11)
    diag = fit.diagnostics
    assert diag["n_starts"] == 40
    assert 1 <= diag["n_starts_at_best"] <= 40
    assert diag["grad_norm"] < 1e-4
    assert fit.start_seed == 11
    assert set(diag["terminations"]) <= {"converged", "abnormal", "iteration_limit"}


def test_per_r_fits_recover_chinchilla_law(planned):
    truth = LawParams(A=58.0, alpha=0.251, B=150.0, beta=0.267, E=1.56)
    frame = planned[planned["r"] == 1].copy()
    frame["loss"] = truth.loss(frame["n_once"] + frame["n_rec"], frame["tokens"])
    frame = validate_runs(frame, min_distinct_r=1)
    fit = fit_chinchilla(frame, n_starts=STARTS)
    assert fit.params.alpha == pytest.approx(0.251, abs=1e-4)
    assert fit.params.beta == pytest.approx(0.267, abs=1e-4)
    assert fit.params.phi is None


def test_fit_per_r_gives_one_fit_per_r(noisy_runs):
    fits = fit_per_r(noisy_runs, n_starts=40)
    assert sorted(fits) == [1, 2, 4, 8]
    assert all(fit.n_runs == 29 for fit in fits.values())
    assert all(fit.r2 > 0.98 for fit in fits.values())


def test_residuals_per_r(noisy_runs):
    fit = fit_joint(noisy_runs, n_starts=60)
    table = joint_residuals(noisy_runs, fit)["per_r"]
    assert [table[f"r{r}"]["n"] for r in (1, 2, 4, 8)] == [29, 29, 29, 29]
    assert table["pooled"]["rmse"] == pytest.approx(fit.rmse_nats, rel=1e-9)
    assert table["pooled"]["max_abs"] == pytest.approx(fit.max_abs_residual_nats, rel=1e-9)
    assert 0.005 < table["pooled"]["rmse"] < 0.015


def test_subset_by_budget(noisy_runs):
    low = subset_runs(noisy_runs, budgets=[4.64e17, 1e18, 2.15e18])
    assert len(low) == 56
    assert len(subset_runs(noisy_runs, recurrences=[1, 4])) == 58


def test_least_squares_convention_is_named(noisy_runs):
    fit = fit_joint(noisy_runs, n_starts=40, convention="least-squares")
    assert fit.convention["convention"] == "least-squares"
    assert set(fit.convention["per_width"]) == {f"{d:g}" for d in set(noisy_runs["d_model"])}


def test_json_round_trip_keeps_full_precision(noisy_runs):
    fit = fit_joint(noisy_runs, n_starts=20)
    again = FitResult.from_dict(json.loads(dumps(fit.to_dict())))
    np.testing.assert_array_equal(again.theta, fit.theta)
    assert again.params == fit.params
    assert again.diagnostics["status"] == fit.status
    assert again.convention["convention"] == "literal"
