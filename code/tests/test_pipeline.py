"""End to end on the tiny grid: train, collect, every notebook, LaTeX PDF.

The case-study, transfer and extrapolation grids have no runs in the test's folder, and the tiny
runs have no downstream results, so those sections are built in their "not trained yet" state.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import pandas as pd
import pytest

from isodepth import paths
from isodepth.collect import collect, collect_grid, write_coverage, write_csv
from isodepth.evaluate.collect import collect_command
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

    build_other_sections(tmp_path, runs_dir, runs_csv, fits)

    for name in ("paper.tex", "references.bib"):
        shutil.copy(paths.PAPER / name, tmp_path / "paper" / name)
    shutil.copytree(paths.PAPER / "sections", tmp_path / "paper" / "sections")
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


def _run(name: str, parameters: dict, outputs: dict) -> None:
    """Run notebooks/<name>.ipynb with its parameters and output paths, all given as paths or values."""
    values = {key: str(value) if isinstance(value, pathlib.Path) else value
              for key, value in {**parameters, **outputs}.items()}
    run_notebook(paths.ROOT / "notebooks" / f"{name}.ipynb", values, list(outputs.values()))


def _collect_untrained(grid: str, runs_dir, derived) -> tuple[pathlib.Path, pathlib.Path]:
    rows, coverage = collect_grid(grid, runs_dir)
    assert rows == []
    assert coverage.to_dict()["n_planned"] > 0
    csv_path, coverage_path = derived / f"runs-{grid}.csv", derived / f"runs-{grid}.coverage.json"
    write_csv(rows, csv_path)
    write_coverage([coverage], coverage_path)
    return csv_path, coverage_path


def build_other_sections(tmp_path, runs_dir, runs_csv, fits) -> None:
    """Build the inputs of paper/sections/*.tex that the steps above do not write."""
    derived, generated, figures = tmp_path / "derived", tmp_path / "paper" / "generated", tmp_path / "figures"
    tables = generated / "tables"

    _run("architecture", {"grid": "tiny", "runs_csv": runs_csv},
         {"figure_pdf": figures / "architecture.pdf", "setup_tex": tables / "setup.tex",
          "grid_tex": tables / "grid.tex", "numbers_tex": generated / "architecture_numbers.tex"})
    _run("fit_quality", {"grid": "tiny", "runs_csv": runs_csv, "joint_json": fits},
         {"predicted_pdf": figures / "fit_quality.pdf", "residuals_pdf": figures / "fit_residuals.pdf",
          "numbers_tex": generated / "fit_quality_numbers.tex"})

    case = {}
    for key, grid in (("tbptt", "micro-tbptt"), ("hyper", "micro-hyper"), ("ablation", "micro-ablation")):
        case[f"{key}_csv"], case[f"{key}_coverage"] = _collect_untrained(grid, runs_dir, derived)
    case_json = derived / "fits" / "case_studies.json"
    _run("case_studies", {"runs_csv": runs_csv, **case, "n_starts": 40, "n_bootstrap": 4,
                          "n_bootstrap_starts": 10},
         {"case_json": case_json})
    _run("case_study_figures", {"case_json": case_json, "tbptt_csv": case["tbptt_csv"], "hyper_csv": case["hyper_csv"]},
         {"isoflops_pdf": figures / "case_studies_isoflops.pdf", "fit_quality_pdf": figures / "case_studies_fit.pdf",
          "table_tex": tables / "case_studies.tex", "ablation_tex": tables / "ablation.tex",
          "numbers_tex": generated / "case_numbers.tex"})
    assert "not trained yet" in (tables / "case_studies.tex").read_text()

    lr_csv, _ = _collect_untrained("micro-lr-transfer", runs_dir, derived)
    pair_csv, _ = _collect_untrained("micro-extrapolation", runs_dir, derived)
    transfer_json = derived / "transfer.json"
    _run("transfer_extrapolation", {"lr_runs_csv": lr_csv, "extrapolation_runs_csv": pair_csv, "runs_dir": runs_dir},
         {"transfer_json": transfer_json, "numbers_tex": generated / "transfer_numbers.tex"})
    _run("transfer_figures", {"transfer_json": transfer_json},
         {"figure_pdf": figures / "lr_transfer.pdf", "table_tex": tables / "extrapolation.tex"})

    summary = derived / "downstream-tiny.json"
    collect_command("tiny", derived / "downstream-tiny.csv", summary, runs_dir)
    _run("downstream", {"summary_json": summary},
         {"figure11_pdf": figures / "downstream_compute.pdf", "figure12_pdf": figures / "downstream_val_loss.pdf",
          "figure13_pdf": figures / "downstream_macro.pdf", "settings_tex": tables / "downstream_settings.tex",
          "per_task_tex": tables / "downstream_per_task.tex", "numbers_tex": generated / "downstream_numbers.tex"})
