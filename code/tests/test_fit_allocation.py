"""Compute-optimal allocation: the study's Figure 3 exponents from its Table 1 laws and per-token FLOPs."""

import json

import numpy as np
import pytest

from isodepth import paths
from isodepth.fit.allocation import (allocation_per_r, closed_form_optimum, compute_optimal_allocation,
                                     fit_flops_power_law, flops_table_from_grid, interpolated_flops)
from isodepth.fit.laws import LawParams

PUBLISHED = json.loads((paths.REFERENCE / "published.json").read_text())
BUDGETS = [4.64e17, 1e18, 2.15e18, 4.64e18, 1e19, 2.15e19]


@pytest.fixture(scope="module")
def paper_allocation():
    per_r = {int(key[1:]): LawParams(v["A"], v["alpha"], v["B"], v["beta"], v["E"])
             for key, v in PUBLISHED["table1_per_arch"].items()}
    return allocation_per_r(per_r, flops_table_from_grid("paper"), BUDGETS)


def test_gamma_near_study_value(paper_allocation):
    for allocation in paper_allocation.values():
        assert allocation.gamma == pytest.approx(0.83, abs=0.01)


@pytest.mark.parametrize("r", [1, 2, 4, 8])
def test_figure3_exponents(paper_allocation, r):
    expected = PUBLISHED["figure3_exponents"]
    allocation = paper_allocation[r]
    assert allocation.exponent_n == pytest.approx(expected["N_star"][f"r{r}"], abs=0.01)
    assert allocation.exponent_d == pytest.approx(expected["D_star"][f"r{r}"], abs=0.01)


def test_closed_form_is_stationary_point():
    params = LawParams(A=58, alpha=0.251, B=150, beta=0.267, E=1.56)
    k, gamma = 20.0, 0.83
    n_opt, d_opt = closed_form_optimum(params, k, gamma, [1e18])
    budget = 1e18

    def loss(n):
        return params.loss(n, budget / (k * n ** gamma))

    assert loss(n_opt[0]) < loss(n_opt[0] * 1.01)
    assert loss(n_opt[0]) < loss(n_opt[0] / 1.01)
    assert d_opt[0] == pytest.approx(budget / (k * n_opt[0] ** gamma))


def test_numeric_matches_closed_form_for_exact_power_law():
    params = LawParams(A=58, alpha=0.251, B=150, beta=0.267, E=1.56)
    n_sampled = np.geomspace(1e7, 1e9, 6)
    flops = 20.0 * n_sampled ** 0.83
    allocation = compute_optimal_allocation(params, n_sampled, flops, BUDGETS)
    np.testing.assert_allclose(allocation.n_opt, allocation.n_opt_closed, rtol=1e-6)
    assert allocation.exponent_n_numeric == pytest.approx(allocation.exponent_n, abs=1e-6)
    assert allocation.exponent_d_numeric == pytest.approx(allocation.exponent_d, abs=1e-6)


def test_power_law_fit_and_interpolation():
    n = np.array([1e6, 4e6, 1.6e7])
    f = 3.0 * n ** 0.8
    k, gamma = fit_flops_power_law(n, f)
    assert gamma == pytest.approx(0.8)
    assert k == pytest.approx(3.0)
    exact = interpolated_flops(n, f)
    np.testing.assert_allclose(exact(np.array([2e6, 1e8, 1e5])), 3.0 * np.array([2e6, 1e8, 1e5]) ** 0.8, rtol=1e-10)
