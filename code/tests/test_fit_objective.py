"""Huber-LSE objective: analytic gradient against finite differences, Huber values, batch consistency."""

import numpy as np
import pytest

from isodepth.fit.objective import HUBER_DELTA, BatchObjective, FitData, huber


def make_data(weight=None, seed=0):
    rng = np.random.default_rng(seed)
    n = 40
    r = rng.choice([1, 2, 4, 8], size=n).astype(float)
    n_once = rng.uniform(1e4, 1e6, size=n)
    n_rec = rng.uniform(1e4, 1e6, size=n)
    tokens = rng.uniform(1e5, 4e6, size=n)
    n_eff = n_once + r ** 0.5 * n_rec
    loss = 2.5 + 40 * n_eff ** -0.3 + 300 * tokens ** -0.35 + rng.normal(0, 0.003, size=n)
    return FitData.from_arrays(r, n_once, n_rec, tokens, loss, weight=weight)


def central_difference(objective, theta, step=1e-8):
    grad = np.zeros_like(theta)
    for j in range(theta.size):
        up, down = theta.copy(), theta.copy()
        up[j] += step
        down[j] -= step
        grad[j] = (objective(up[None])[0][0] - objective(down[None])[0][0]) / (2 * step)
    return grad


THETAS = [
    np.array([np.log(40), np.log(300), np.log(2.5), 0.3, 0.35, 0.5]),  # near the truth: quadratic Huber regime
    np.array([3.0, 5.0, 0.5, 0.2, 0.3, -0.7]),  # far away: linear regime
    np.array([20.0, 12.0, -2.0, 1.5, 0.9, 2.2]),
]


@pytest.mark.parametrize("theta", THETAS)
def test_gradient_matches_finite_differences(theta):
    objective = BatchObjective(make_data())
    _, grad = objective(theta[None])
    numeric = central_difference(objective, theta)
    np.testing.assert_allclose(grad[0], numeric, rtol=1e-5, atol=1e-9)


def test_gradient_with_weights_matches_finite_differences():
    weight = np.random.default_rng(3).integers(0, 3, size=40).astype(float)
    objective = BatchObjective(make_data(weight=weight))
    theta = THETAS[1]
    _, grad = objective(theta[None])
    np.testing.assert_allclose(grad[0], central_difference(objective, theta), rtol=1e-5, atol=1e-9)


def test_weights_equal_duplicated_runs():
    data = make_data()
    weight = np.zeros(data.n_runs)
    weight[:10] = 2.0
    weighted = BatchObjective(data.with_weight(weight))
    rows = np.r_[np.arange(10), np.arange(10)]
    duplicated = BatchObjective(data.subset(rows))
    theta = np.array(THETAS)
    f_w, g_w = weighted(theta)
    f_d, g_d = duplicated(theta)
    np.testing.assert_allclose(f_w, f_d, rtol=1e-12)
    np.testing.assert_allclose(g_w, g_d, rtol=1e-10, atol=1e-15)


def test_batch_rows_equal_single_evaluations():
    objective = BatchObjective(make_data())
    batch = np.array(THETAS)
    f_batch, g_batch = objective(batch)
    for i, theta in enumerate(THETAS):
        f_one, g_one = objective(theta[None])
        np.testing.assert_allclose(f_batch[i], f_one[0], rtol=1e-13)
        np.testing.assert_allclose(g_batch[i], g_one[0], rtol=1e-12, atol=1e-18)


def test_objective_is_huber_of_log_residuals():
    data = make_data()
    theta = THETAS[0]
    a, b, e, alpha, beta, phi = theta
    n_eff = data.n_once + data.r ** phi * data.n_rec
    predicted = np.exp(e) + np.exp(a) * n_eff ** -alpha + np.exp(b) * data.tokens ** -beta
    expected = huber(np.log(predicted) - np.log(data.loss)).sum()
    value, _ = BatchObjective(data)(theta[None])
    assert value[0] == pytest.approx(expected, rel=1e-10)


def test_huber_regimes():
    delta = HUBER_DELTA
    assert huber(0.5 * delta) == pytest.approx(0.125 * delta ** 2)
    assert huber(-3 * delta) == pytest.approx(delta * (3 * delta - 0.5 * delta))
    assert huber(0.0) == 0.0


def test_gradient_when_exp_would_overflow():
    # a - alpha log N = 800 overflows exp, so the objective takes its max-shifted path.
    objective = BatchObjective(make_data())
    theta = np.array([800.0, 5.0, 1.0, 0.01, 0.3, 0.2])
    value, grad = objective(theta[None])
    assert np.isfinite(value[0])
    np.testing.assert_allclose(grad[0], central_difference(objective, theta, step=1e-6), rtol=1e-5, atol=1e-9)
