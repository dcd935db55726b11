"""Learning-rate transfer and the extrapolation pair: the optimum rule, and both notebooks run on
fabricated records (losses on a known parabola in log lr) and on no records at all."""

from __future__ import annotations

import copy
import json
import math
import shutil
import subprocess

import numpy as np
import pytest

from isodepth import paths
from isodepth.collect import collect_grid, write_csv
from isodepth.evaluate.sources import AXES
from isodepth.grids import load_grid
from isodepth.lr_analysis import lr_optimum, regret, shared_rate
from isodepth.notebooks import run_notebook

LR_GRID = "micro-lr-transfer"
PAIR_GRID = "micro-extrapolation"
TEMPLATES = {1: "C8.62e11-r1-s10-lr0.01", 4: "C8.62e11-r4-s10-lr0.01"}
CURVATURE = 0.05  # nats per log(lr)^2 of the fabricated losses
VERTEX_LOOPED = 0.0095  # inside the r = 4 rates 0.006-0.014
VERTEX_PLAIN = 0.026  # above the r = 1 rates 0.011-0.023, so the sweep only bounds that optimum
PAIR_LOSSES = {1: 3.40, 4: 3.47}


# ---- the optimum rule -----------------------------------------------------------------------

def test_lr_optimum_recovers_vertex():
    lr = np.array([0.004, 0.006, 0.008, 0.010, 0.012, 0.016])
    loss = 3.0 + 0.1 * (np.log(lr) - np.log(0.009)) ** 2
    optimum = lr_optimum(lr[::-1], loss[::-1])
    assert optimum.lr == pytest.approx(0.009, rel=1e-9)
    assert optimum.loss == pytest.approx(3.0, abs=1e-9)
    assert optimum.bracketed
    assert optimum.method == "vertex"


def test_lr_optimum_clips_at_edge():
    lr = np.array([0.006, 0.008, 0.010, 0.012, 0.014])
    loss = 3.0 + 0.1 * (np.log(lr) - np.log(0.02)) ** 2
    optimum = lr_optimum(lr, loss)
    assert optimum.lr == pytest.approx(0.014)
    assert not optimum.bracketed
    assert optimum.method == "vertex clipped to the sampled rates"


def test_lr_optimum_concave_uses_best_rate():
    lr = np.array([0.006, 0.008, 0.010])
    loss = np.array([3.0, 3.5, 3.2])
    optimum = lr_optimum(lr, loss)
    assert optimum.lr == 0.006
    assert optimum.method == "best sampled rate"
    assert not optimum.bracketed


def test_lr_optimum_two_rates_uses_best_rate():
    optimum = lr_optimum([0.01, 0.02], [3.1, 3.0])
    assert optimum.lr == 0.02
    assert optimum.n_rates == 2


def test_lr_optimum_rejects_bad_input():
    with pytest.raises(ValueError, match="finite"):
        lr_optimum([0.01, 0.02, 0.03], [3.0, float("nan"), 3.1])
    with pytest.raises(ValueError, match="positive"):
        lr_optimum([0.0, 0.02, 0.03], [3.0, 2.9, 3.1])
    with pytest.raises(ValueError, match="1-D"):
        lr_optimum([], [])


def test_regret_and_shared_rate():
    assert regret([3.2, 3.0, 3.1]).tolist() == pytest.approx([0.2, 0.0, 0.1])
    series = {"a": {0.01: 0.0, 0.02: 0.05}, "b": {0.01: 0.03, 0.02: 0.0, 0.04: 0.0}}
    assert shared_rate(series) == (0.01, 0.03)
    assert shared_rate({"a": {0.01: 0.0}, "b": {0.02: 0.0}}) is None
    assert shared_rate({}) is None


# ---- fabricated records ---------------------------------------------------------------------

def series_vertex(run) -> float:
    """Known optimum of a run's series: a few percent apart per width and ratio for r = 4."""
    if run.r == 1:
        return VERTEX_PLAIN
    return VERTEX_LOOPED * (1 + 0.02 * (run.size - 8) / 2 + 0.01 * (run.tokens_per_param / 10 - 1))


def series_best_loss(run) -> float:
    return 4.0 - 0.05 * run.size / 8 - 0.02 * math.log2(run.tokens_per_param / 10) + 0.05 * (run.r == 4)


def fabricated_loss(run) -> float:
    return series_best_loss(run) + CURVATURE * (math.log(run.recipe.muon_lr) - math.log(series_vertex(run))) ** 2


def write_record(runs_dir, run, loss, muon_peak):
    """Copy a committed micro-lr record and set the run's identity, plan, rates and loss."""
    template = paths.DATA / "runs" / "micro-lr" / TEMPLATES[run.r]
    record = copy.deepcopy(json.loads((template / "record.json").read_text()))
    record.update({"grid": run.grid, "run_id": run.run_id, "budget": run.budget, "r": run.r, "size": run.size,
                   "final_val_loss": loss})
    record["model"]["d_model"] = run.model.d_model
    record["accounting"].update({"n_once": run.n_once, "n_rec": run.n_rec, "n_total": run.n_total,
                                 "flops_per_token": run.flops_per_token})
    record["training"].update({"steps": run.steps, "steps_done": run.steps, "tokens": run.tokens,
                               "tokens_seen": run.tokens, "tokens_per_step": run.tokens_per_step})
    record["training"]["recipe"]["muon_lr"] = run.recipe.muon_lr
    record["training"]["learning_rates"]["muon"] = muon_peak
    folder = runs_dir / run.grid / run.run_id
    folder.mkdir(parents=True)
    (folder / "record.json").write_text(json.dumps(record))


def write_downstream(runs_dir, run, shift):
    """A result file with every axis but math word problems, losses shifted per run."""
    axes = {axis: {"loss": 4.0 + 0.1 * i + shift, "acc": 0.0, "tasks": [f"{axis}_task"], "missing": []}
            for i, axis in enumerate(AXES) if axis != "math_word_problems"}
    tasks = {f"{axis}_task": {"axis": axis, "loss": value["loss"], "acc": 0.0} for axis, value in axes.items()}
    result = {"format": 1, "run_id": run.run_id, "grid": run.grid, "recurrences": run.r, "tasks": tasks,
              "axes": axes, "macro": {"loss": None, "acc": None, "axes": list(axes)}, "skipped": {}}
    (runs_dir / run.grid / run.run_id / "downstream.json").write_text(json.dumps(result))


def transfer_factor(run) -> float:
    """A fixed factor per series, as the recipe's transfer rules give one per (r, width, tokens)."""
    return 0.5 + run.size / 100 + run.tokens / 1e8


def fabricate(runs_dir):
    for run in load_grid(LR_GRID).runs():
        write_record(runs_dir, run, fabricated_loss(run), run.recipe.muon_lr * transfer_factor(run))
    for run in load_grid(PAIR_GRID).runs():
        write_record(runs_dir, run, PAIR_LOSSES[run.r], run.learning_rates["muon"])
        write_downstream(runs_dir, run, shift=0.05 if run.r == 4 else 0.0)


# ---- running the notebooks ------------------------------------------------------------------

def run_transfer_notebooks(tmp_path, runs_dir):
    """Collect both grids from runs_dir, then run the compute and the drawing notebook."""
    csvs = {}
    for grid in (LR_GRID, PAIR_GRID):
        rows, _ = collect_grid(grid, runs_dir=runs_dir)
        csvs[grid] = tmp_path / "derived" / f"runs-{grid}.csv"
        write_csv(rows, csvs[grid])
    out = {"json": tmp_path / "derived" / "transfer.json",
           "numbers": tmp_path / "paper" / "generated" / "transfer_numbers.tex",
           "figure": tmp_path / "figures" / "lr_transfer.pdf",
           "table": tmp_path / "paper" / "generated" / "tables" / "extrapolation.tex"}
    run_notebook(paths.ROOT / "notebooks" / "transfer_extrapolation.ipynb",
                 {"lr_runs_csv": str(csvs[LR_GRID]), "extrapolation_runs_csv": str(csvs[PAIR_GRID]),
                  "runs_dir": str(runs_dir), "transfer_json": str(out["json"]), "numbers_tex": str(out["numbers"])},
                 [out["json"], out["numbers"]])
    run_notebook(paths.ROOT / "notebooks" / "transfer_figures.ipynb",
                 {"transfer_json": str(out["json"]), "figure_pdf": str(out["figure"]), "table_tex": str(out["table"])},
                 [out["figure"], out["table"]])
    return out


def macros(path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        if line.startswith("\\newcommand"):
            name, value = line[len("\\newcommand{\\"):].split("}{", 1)
            found[name] = value[:-1]
    return found


def compile_section(tmp_path) -> str:
    """Typeset the paper section with the generated files and return the text of the PDF."""
    paper = tmp_path / "paper"
    (paper / "sections").mkdir(parents=True, exist_ok=True)
    shutil.copy(paths.PAPER / "sections" / "transfer.tex", paper / "sections" / "transfer.tex")
    (paper / "main.tex").write_text(
        "\\documentclass{article}\n\\usepackage{amsmath,booktabs,graphicx}\n"
        "\\begin{document}\n"
        "\\begin{figure}\\caption{sweep}\\label{fig:lr}\\end{figure}\n"
        "\\input{sections/transfer.tex}\n\\end{document}\n")
    subprocess.run(["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error", "-quiet", "main.tex"],
                   cwd=paper, check=True, capture_output=True)
    log = (paper / "main.log").read_text(errors="replace")
    assert "undefined" not in log.lower()
    if shutil.which("pdftotext") is None:
        return ""
    text = subprocess.run(["pdftotext", str(paper / "main.pdf"), "-"], check=True, capture_output=True, text=True)
    return " ".join(text.stdout.split())


def test_notebooks_on_fabricated_records(tmp_path, runs_dir):
    fabricate(runs_dir)
    out = run_transfer_notebooks(tmp_path, runs_dir)
    result = json.loads(out["json"].read_text())
    transfer = result["lr_transfer"]
    assert transfer["n_trained"] == 50
    assert transfer["reference_ratio"] == 10
    assert transfer["reference_size"] == 6

    plan = {run.run_id: run for run in load_grid(LR_GRID).runs()}
    for panel in transfer["panels"]:
        assert panel["n_trained"] == panel["n_planned"] == 15
        for line in panel["lines"]:
            run = plan[line["points"][0]["run_id"]]
            optimum = line["optimum"]
            assert min(p["regret"] for p in line["points"]) == 0.0
            if run.r == 4:
                assert optimum["lr"] == pytest.approx(series_vertex(run), rel=1e-6)
                # The vertex lies between sampled rates, so the fit dips below the best run.
                best_sampled = min(fabricated_loss(plan[p["run_id"]]) for p in line["points"])
                assert optimum["regret"] == pytest.approx(series_best_loss(run) - best_sampled, abs=1e-9)
                assert optimum["bracketed"]
            else:
                assert optimum["lr"] == pytest.approx(0.023)
                assert not optimum["bracketed"]

    # The shared rate of r = 4, recomputed from the fabricated losses of every series.
    looped = [run for run in plan.values() if run.r == 4]
    rates = sorted({run.recipe.muon_lr for run in looped})
    best = {}
    for run in looped:
        key = (run.size, run.tokens_per_param)
        best[key] = min(best.get(key, math.inf), fabricated_loss(run))
    worst = {rate: max(fabricated_loss(run) - best[(run.size, run.tokens_per_param)]
                       for run in looped if run.recipe.muon_lr == rate) for rate in rates}
    expected_rate = min(worst, key=worst.get)
    assert transfer["shared_rate"]["4"]["rate"] == pytest.approx(expected_rate)
    assert transfer["shared_rate"]["4"]["max_regret"] == pytest.approx(worst[expected_rate])

    numbers = macros(out["numbers"])
    assert numbers["lrtRunsTrained"] == "50"
    assert numbers["lrtOptimaFound"] == "12"
    assert numbers["lrtOptimaAtEdge"] == "6"
    width_vertices = [series_vertex(run) for run in looped if run.tokens_per_param == 10]
    assert f"{min(width_vertices):.4f} and {max(width_vertices):.4f}" in numbers["lrtWidthSpanLooped"]
    assert numbers["lrtSharedLooped"].startswith(f"the base rate {expected_rate:.3f} keeps every series")
    assert numbers["extrapLossPlain"] == "3.400"
    assert numbers["extrapGapPhrase"] == "0.070 nats above"
    assert numbers["extrapAxesCompared"] == "4"
    assert numbers["extrapAxesLoopedLower"] == "0"

    table = out["table"].read_text()
    assert "3.400 & 3.470 & 0.070" in table
    assert "parametric knowledge & 4.000 & 4.050 & 0.050" in table
    assert "math word problems & -- & -- & --" in table
    assert "not trained yet" not in table
    assert out["figure"].read_bytes().startswith(b"%PDF")

    if shutil.which("latexmk"):
        text = compile_section(tmp_path)
        assert "So far 50 of the 50 runs are trained" in text or not text


def test_notebooks_without_records(tmp_path, runs_dir):
    out = run_transfer_notebooks(tmp_path, runs_dir)
    result = json.loads(out["json"].read_text())
    assert result["lr_transfer"]["n_trained"] == 0
    assert result["lr_transfer"]["n_planned"] == 50
    assert all(panel["n_trained"] == 0 for panel in result["lr_transfer"]["panels"])

    numbers = macros(out["numbers"])
    assert numbers["lrtRunsTrained"] == "0"
    assert numbers["lrtOptimaFound"] == "0"
    assert numbers["extrapRunsTrained"] == "0"
    assert numbers["extrapLossPlain"] == "--"
    assert numbers["lrtSharedLooped"].startswith("no base rate is trained in every series yet")

    table = out["table"].read_text()
    assert "validation loss & not trained yet & not trained yet" in table
    assert "not trained yet: 2 of 2 runs of micro-extrapolation" in table
    assert "2.047 & 2.108 & 0.061" in table
    assert out["figure"].read_bytes().startswith(b"%PDF")

    if shutil.which("latexmk"):
        text = compile_section(tmp_path)
        assert "None of the 50 runs is trained yet" in text or not text
        assert "The pair is not trained yet" in text or not text


def test_notebook_rejects_unswept_rates(tmp_path, runs_dir):
    # Every r = 1 run of one series trains at one peak rate, whatever its base rate.
    for run in load_grid(LR_GRID).runs():
        if run.r == 1 and run.size == 8 and run.tokens_per_param == 10:
            write_record(runs_dir, run, fabricated_loss(run), 0.0128)
    with pytest.raises(Exception, match="muon_lr_plain"):
        run_transfer_notebooks(tmp_path, runs_dir)


def test_notebooks_on_a_partly_trained_grid(tmp_path, runs_dir):
    # As a sweep cut off mid-grid leaves it: two whole series of the width axis, two runs of a
    # third, none of the ratio axis.
    plan = load_grid(LR_GRID).runs()
    whole = [run for run in plan if run.size == 6 and run.tokens_per_param == 10]
    started = [run for run in plan if run.r == 1 and run.size == 8 and run.tokens_per_param == 10][:2]
    for run in whole + started:
        write_record(runs_dir, run, fabricated_loss(run), run.recipe.muon_lr * transfer_factor(run))
    out = run_transfer_notebooks(tmp_path, runs_dir)
    transfer = json.loads(out["json"].read_text())["lr_transfer"]
    assert transfer["n_trained"] == 12
    assert sum(panel["n_trained"] for panel in transfer["panels"]) == 12 + 10  # s = 6 is on both axes
    numbers = macros(out["numbers"])
    assert numbers["lrtRunsTrained"] == "12"
    assert out["figure"].read_bytes().startswith(b"%PDF")
    if shutil.which("latexmk"):
        text = compile_section(tmp_path)
        assert "So far 12 of the 50 runs are trained" in text or not text
