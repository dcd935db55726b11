"""Iso-FLOPs profiles: vertex acceptance rules, sampled ranges and the study's optimum gaps."""

import numpy as np
import pandas as pd
import pytest

from isodepth import paths
from isodepth.fit.io import validate_runs
from isodepth.fit.isoflops import fit_profile, isoflops_profiles, optimum_gaps, profile_optima, published_optima


def parabola(n, center=3e7, curvature=0.05, floor=3.0):
    return floor + curvature * (np.log(n) - np.log(center)) ** 2


def test_convex_inside_range_has_optimum():
    n = np.array([1e7, 2e7, 4e7, 8e7])
    cell = fit_profile(n, parabola(n), budget=1e12, r=2)
    assert cell.has_optimum
    assert cell.n_opt == pytest.approx(3e7, rel=1e-8)
    assert cell.loss_opt == pytest.approx(3.0, abs=1e-10)
    assert (cell.n_min, cell.n_max) == (1e7, 8e7)
    assert cell.position == "interior"


def test_concave_has_no_optimum():
    n = np.array([1e7, 2e7, 4e7])
    cell = fit_profile(n, parabola(n, curvature=-0.05))
    assert not cell.has_optimum
    assert "concave" in cell.reason
    assert cell.position == "concave"


@pytest.mark.parametrize("center, position", [(2e8, "above"), (2e6, "below")])
def test_vertex_outside_range_has_no_optimum(center, position):
    n = np.array([1e7, 2e7, 4e7])
    cell = fit_profile(n, parabola(n, center=center))
    assert not cell.has_optimum
    assert "outside the sampled range" in cell.reason
    assert cell.n_opt is None
    assert cell.position == position


def test_fewer_than_three_distinct_n_has_no_optimum():
    n = np.array([1e7, 1e7, 2e7])
    cell = fit_profile(n, np.array([3.1, 3.12, 3.0]))
    assert not cell.has_optimum
    assert "fewer than 3 distinct N" in cell.reason
    assert cell.position == "too few"


def test_profiles_cover_every_cell():
    rows = []
    for budget in (1e12, 4e12):
        for r in (1, 2):
            for i, n in enumerate(np.geomspace(1e5, 1e6, 4)):
                rows.append({"budget": budget, "r": r, "n_once": n / 2, "n_rec": n / 2, "tokens": budget / n,
                             "loss": float(parabola(n, center=3e5))})
    cells = isoflops_profiles(validate_runs(pd.DataFrame(rows)))
    assert [(c.budget, c.r) for c in cells] == [(1e12, 1), (1e12, 2), (4e12, 1), (4e12, 2)]
    assert all(c.has_optimum for c in cells)
    assert set(profile_optima(cells)) == {(c.budget, c.r) for c in cells}


def test_published_optimum_gaps():
    gaps = optimum_gaps(published_optima(paths.REFERENCE / "published.json"))
    expected = {"r2": (0.03, 0.06), "r4": (0.05, 0.08), "r8": (0.09, 0.12)}
    for key, (low, high) in expected.items():
        assert round(gaps[key]["min"], 2) == low
        assert round(gaps[key]["max"], 2) == high
        assert len(gaps[key]["per_budget"]) == 6
