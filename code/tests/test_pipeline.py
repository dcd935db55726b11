"""End to end on the tiny grid: train, collect, fit notebook, figure notebook, LaTeX PDF."""

from __future__ import annotations

import shutil
import subprocess

import pandas as pd
import pytest

from isodepth import paths
from isodepth.collect import collect, write_csv
from isodepth.notebooks import run_notebook
from isodepth.sweep import run_sweep

pytestmark = pytest.mark.skipif(shutil.which("latexmk") is None, reason="latexmk not installed")


def test_tiny_grid_end_to_end(tmp_path):
    runs_dir = tmp_path / "runs"
    results = run_sweep("tiny", workers=2, threads_per_worker=1, runs_dir=runs_dir,
                        checkpoint_dir=tmp_path / "checkpoints")
    assert results and set(results.values()) == {"completed"}

    # A second sweep finds every run finished and trains nothing.
    assert run_sweep("tiny", workers=2, runs_dir=runs_dir, dry_run=True) == {}

    rows, excluded = collect(["tiny"], runs_dir)
    assert len(rows) == len(results)
    assert excluded == []
    runs_csv = tmp_path / "derived" / "runs.csv"
    write_csv(rows, runs_csv)
    assert pd.read_csv(runs_csv)["loss"].between(1.0, 10.0).all()

    fits = tmp_path / "derived" / "fits" / "joint.json"
    numbers = tmp_path / "paper" / "generated" / "numbers.tex"
    run_notebook(paths.ROOT / "notebooks" / "fit.ipynb",
                 {"runs_csv": str(runs_csv), "joint_json": str(fits), "numbers_tex": str(numbers),
                  "grid": "tiny", "n_starts": 40, "n_bootstrap": 8, "n_bootstrap_per_r": 4},
                 [fits, numbers])
    assert "\\newcommand{\\phiFit}" in numbers.read_text()

    figure = tmp_path / "figures" / "isoflops.pdf"
    table = tmp_path / "paper" / "generated" / "tables" / "joint_fit.tex"
    run_notebook(paths.ROOT / "notebooks" / "isoflops.ipynb",
                 {"runs_csv": str(runs_csv), "joint_json": str(fits), "figure_pdf": str(figure),
                  "table_tex": str(table)},
                 [figure, table])
    assert figure.read_bytes().startswith(b"%PDF")

    assert set(run_sweep("tiny-lr", workers=2, threads_per_worker=1, runs_dir=runs_dir,
                         checkpoint_dir=tmp_path / "checkpoints").values()) == {"completed"}
    lr_rows, _ = collect(["tiny-lr"], runs_dir)
    lr_csv = tmp_path / "derived" / "runs-lr.csv"
    write_csv(lr_rows, lr_csv)
    lr_figure = tmp_path / "figures" / "lr_sweep.pdf"
    lr_numbers = tmp_path / "paper" / "generated" / "lr_numbers.tex"
    run_notebook(paths.ROOT / "notebooks" / "lr_sweep.ipynb",
                 {"runs_csv": str(lr_csv), "figure_pdf": str(lr_figure), "numbers_tex": str(lr_numbers),
                  "grid": "tiny"},
                 [lr_figure, lr_numbers])
    assert "\\newcommand{\\lrOptimumPlain}" in lr_numbers.read_text()

    tables = {key: tmp_path / "paper" / "generated" / "tables" / f"{key}.tex"
              for key in ("per_r_fits", "residuals", "headline")}
    run_notebook(paths.ROOT / "notebooks" / "tables.ipynb",
                 {"joint_json": str(fits), "per_r_tex": str(tables["per_r_fits"]),
                  "residuals_tex": str(tables["residuals"]), "headline_tex": str(tables["headline"])},
                 list(tables.values()))
    assert "published" in tables["headline"].read_text()

    co_figures = [tmp_path / "figures" / "compute_optimal_loss.pdf", tmp_path / "figures" / "allocation.pdf"]
    run_notebook(paths.ROOT / "notebooks" / "compute_optimal.ipynb",
                 {"joint_json": str(fits), "figure1_pdf": str(co_figures[0]), "figure3_pdf": str(co_figures[1]),
                  "grid": "tiny"},
                 co_figures)

    for name in ("paper.tex", "references.bib"):
        shutil.copy(paths.PAPER / name, tmp_path / "paper" / name)
    subprocess.run(["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error", "-quiet", "paper.tex"],
                   cwd=tmp_path / "paper", check=True, capture_output=True)
    log = (tmp_path / "paper" / "paper.log").read_text(errors="replace")
    assert "undefined" not in log.lower()
    assert (tmp_path / "paper" / "paper.pdf").stat().st_size > 10_000


def test_failed_notebook_leaves_no_output(tmp_path):
    stale = tmp_path / "joint.json"
    stale.write_text("{}")
    with pytest.raises(Exception):
        run_notebook(paths.ROOT / "notebooks" / "fit.ipynb",
                     {"runs_csv": str(tmp_path / "missing.csv"), "joint_json": str(stale),
                      "numbers_tex": str(tmp_path / "numbers.tex")},
                     [stale, tmp_path / "numbers.tex"])
    assert not stale.exists()
