"""Command line: `isodepth fit` on a CSV and `isodepth equivalence`."""

import json

import pytest

from isodepth.cli import main
from isodepth.fit.synthetic import planned_runs_table, synthetic_runs


@pytest.fixture(scope="module")
def runs_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("fit") / "runs.csv"
    synthetic_runs(table=planned_runs_table("paper"), noise_nats=0.01, seed=3).to_csv(path, index=False)
    return path


def test_fit_prints_and_writes_json(runs_csv, tmp_path, capsys):
    out = tmp_path / "fit.json"
    code = main(["fit", str(runs_csv), "--starts", "40", "--seed", "2", "--json", str(out), "--bootstrap", "2",
                 "--jobs", "1"])
    printed = capsys.readouterr().out
    assert code == 0
    for name in ("A =", "alpha =", "B =", "beta =", "E =", "phi =", "r2 =", "status converged", "start seed 2"):
        assert name in printed
    report = json.loads(out.read_text())
    assert report["convention"] == "literal"
    assert report["joint"]["diagnostics"]["n_starts"] == 40
    assert report["joint"]["n_runs"] == 116
    assert report["bootstrap"]["intervals"]["phi"]["n_cells"] == 24


def test_fit_accepts_minimal_columns(runs_csv, tmp_path, capsys):
    import pandas as pd

    minimal = tmp_path / "minimal.csv"
    pd.read_csv(runs_csv)[["r", "n_once", "n_rec", "tokens", "loss"]].to_csv(minimal, index=False)
    assert main(["fit", str(minimal), "--starts", "20"]) == 0
    assert "no budget column" in capsys.readouterr().out


def test_fit_least_squares_needs_width(runs_csv, tmp_path):
    import pandas as pd

    minimal = tmp_path / "minimal.csv"
    pd.read_csv(runs_csv)[["r", "n_once", "n_rec", "tokens", "loss"]].to_csv(minimal, index=False)
    assert main(["fit", str(minimal), "--starts", "5", "--convention", "least-squares"]) == 2


def test_fit_rejects_bad_table(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("r,n_once,n_rec,tokens\n1,1,1,1\n")
    assert main(["fit", str(bad)]) == 2


def test_extended_report(runs_csv, tmp_path):
    out = tmp_path / "extended.json"
    assert main(["fit", str(runs_csv), "--starts", "20", "--extended", "--json", str(out)]) in (0, 1)
    report = json.loads(out.read_text())
    assert set(report["restricted"]) == {"phi_0", "phi_1"}
    assert set(report["per_r"]) == {"r1", "r2", "r4", "r8"}
    assert report["stability"]["low"]["n_runs"] == 56
    assert len(report["isoflops"]) == 24


def test_equivalence_worked_example(capsys, tmp_path):
    out = tmp_path / "eq.json"
    assert main(["equivalence", "--r", "4", "--size", "16", "--phi", "0.46", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "0.408x" in printed
    assert "0.578x" in printed
    assert json.loads(out.read_text())["d_model"] == 1024
