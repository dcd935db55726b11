"""Case studies: collecting grids with reused runs, the refit notebook and the figure notebook.

The records are fabricated from a committed micro record. Each planned run gets its own
accounting from the planner and a final loss from a known joint law with phi set per grid,
so the refits must recover those phi values.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict

import pandas as pd
import pytest

from isodepth import paths
from isodepth.collect import COLUMNS, collect_grid, write_coverage, write_csv
from isodepth.grids import load_grid
from isodepth.notebooks import run_notebook

TEMPLATE = paths.ROOT / "data" / "runs" / "micro" / "C6.03e11-r4-s10" / "record.json"
LAW = {"A": 60.0, "alpha": 0.3, "B": 200.0, "beta": 0.35, "E": 2.5}
PHI = {"micro": 0.45, "micro-tbptt": 0.30, "micro-hyper": 0.65, "micro-ablation": 0.45}
LOWER_BUDGETS = (2.80e11, 6.03e11, 1.30e12, 2.80e12)
CASE_GRIDS = ("micro-tbptt", "micro-hyper", "micro-ablation")
FAST = {"n_starts": 40, "n_bootstrap": 2, "n_bootstrap_starts": 8}


def law_loss(run) -> float:
    n_eff = run.n_once + run.r ** PHI[run.grid] * run.n_rec
    return LAW["E"] + LAW["A"] * n_eff ** -LAW["alpha"] + LAW["B"] * run.tokens ** -LAW["beta"]


def fabricate(run, runs_dir, status="completed", loss="law") -> None:
    record = json.loads(TEMPLATE.read_text())
    record.update(grid=run.grid, run_id=run.run_id, budget=run.budget, r=run.r, size=run.size,
                  variant=run.variant, model=run.model.to_dict(), family=run.family, status=status,
                  final_val_loss=law_loss(run) if loss == "law" else loss)
    record["accounting"] = {"n_once": run.n_once, "n_rec": run.n_rec, "n_total": run.n_total,
                            "flops_per_token": run.flops_per_token,
                            "training_flops": run.flops_per_token * run.tokens}
    record["training"].update(steps=run.steps, steps_done=run.steps, tokens=run.tokens, tokens_seen=run.tokens,
                              learning_rates=run.learning_rates, recipe=asdict(run.recipe))
    folder = runs_dir / run.grid / run.run_id
    folder.mkdir(parents=True)
    (folder / "record.json").write_text(json.dumps(record))


def fabricate_grids(runs_dir, grids=("micro",) + CASE_GRIDS) -> None:
    """Records for the micro grid's four lower budgets and every run of the named case-study grids.

    The passthrough ablation run is written as diverged, as a run without injection may be.
    """
    for name in grids:
        for run in load_grid(name).runs():
            if name == "micro" and not any(abs(run.budget / b - 1) < 1e-3 for b in LOWER_BUDGETS):
                continue
            if run.variant == "passthrough":
                fabricate(run, runs_dir, status="diverged", loss=None)
            else:
                fabricate(run, runs_dir)


def write_tables(runs_dir, out_dir) -> dict:
    """Collect the main grid and the case-study grids as the Makefile does; return the notebook parameters."""
    rows, _ = collect_grid("micro", runs_dir)
    write_csv(rows, out_dir / "runs.csv")
    parameters = {"runs_csv": str(out_dir / "runs.csv")}
    for name, key in zip(CASE_GRIDS, ("tbptt", "hyper", "ablation")):
        rows, coverage = collect_grid(name, runs_dir)
        write_csv(rows, out_dir / f"runs-{name}.csv")
        write_coverage([coverage], out_dir / f"runs-{name}.coverage.json")
        parameters[f"{key}_csv"] = str(out_dir / f"runs-{name}.csv")
        parameters[f"{key}_coverage"] = str(out_dir / f"runs-{name}.coverage.json")
    return parameters


def run_both_notebooks(runs_dir, out_dir) -> dict:
    parameters = write_tables(runs_dir, out_dir)
    case_json = out_dir / "case_studies.json"
    run_notebook(paths.ROOT / "notebooks" / "case_studies.ipynb",
                 {**parameters, **FAST, "case_json": str(case_json)}, [case_json])
    outputs = {name: out_dir / name for name in ("isoflops.pdf", "fit.pdf", "table.tex", "ablation.tex",
                                                  "case_numbers.tex")}
    run_notebook(paths.ROOT / "notebooks" / "case_study_figures.ipynb",
                 {"case_json": str(case_json), "tbptt_csv": parameters["tbptt_csv"],
                  "hyper_csv": parameters["hyper_csv"], "isoflops_pdf": str(outputs["isoflops.pdf"]),
                  "fit_quality_pdf": str(outputs["fit.pdf"]), "table_tex": str(outputs["table.tex"]),
                  "ablation_tex": str(outputs["ablation.tex"]), "numbers_tex": str(outputs["case_numbers.tex"])},
                 list(outputs.values()))
    return {"case": json.loads(case_json.read_text()), **{k: v.read_text() for k, v in outputs.items()
                                                          if k.endswith(".tex")}}


# ---- collector --------------------------------------------------------------------------------


def test_collect_grid_includes_reused_runs(runs_dir):
    fabricate_grids(runs_dir, grids=("micro", "micro-tbptt"))
    rows, coverage = collect_grid("micro-tbptt", runs_dir)
    table = pd.DataFrame(rows, columns=COLUMNS)
    assert len(table) == 89
    assert (table["grid"] == "micro").sum() == 20
    assert set(table.loc[table["grid"] == "micro", "r"]) == {1}
    assert set(table.loc[table["grid"] == "micro-tbptt", "variant"]) == {"tbptt"}
    assert coverage.count("missing") == 0
    assert coverage.count() == 89


def test_collect_grid_keeps_tbptt_accounting(runs_dir):
    fabricate_grids(runs_dir, grids=("micro", "micro-tbptt"))
    rows, _ = collect_grid("micro-tbptt", runs_dir)
    main_rows, _ = collect_grid("micro", runs_dir)
    tbptt = {(row["budget"], row["r"], row["size"]): row for row in rows if row["grid"] == "micro-tbptt"}
    main = {(row["budget"], row["r"], row["size"]): row for row in main_rows}
    shared = sorted(set(tbptt) & set(main))
    assert shared
    for key in shared:
        assert tbptt[key]["grad_recurrences"] == -(-key[1] // 2)
        assert tbptt[key]["flops_per_token"] < main[key]["flops_per_token"]
        assert tbptt[key]["tokens"] > main[key]["tokens"]


def test_collect_grid_reports_missing_runs(runs_dir):
    fabricate_grids(runs_dir, grids=("micro",))
    rows, coverage = collect_grid("micro-hyper", runs_dir)
    assert len(rows) == 20
    assert coverage.count("missing") == 63
    missing = [run for run in coverage.runs if run["state"] == "missing"]
    assert all(run["grid"] == "micro-hyper" and run["reason"] == "not trained yet" for run in missing)


def test_collect_grid_marks_diverged_run_excluded(runs_dir):
    fabricate_grids(runs_dir, grids=("micro", "micro-hyper", "micro-ablation"))
    rows, coverage = collect_grid("micro-ablation", runs_dir)
    states = {run["injection"]: run["state"] for run in coverage.runs}
    assert states == {"additive": "collected", "passthrough": "excluded", "linear": "collected",
                      "hyperconnections": "collected"}
    assert {(row["grid"], row["injection"]) for row in rows} == {
        ("micro-ablation", "additive"), ("micro", "linear"), ("micro-hyper", "hyperconnections")}


def test_collect_grid_without_any_folder(runs_dir):
    rows, coverage = collect_grid("micro-ablation", runs_dir)
    assert rows == []
    assert coverage.count("missing") == 4


def test_collect_grid_rejects_misplaced_record(runs_dir):
    run = next(r for r in load_grid("micro-ablation").runs() if r.variant == "additive")
    fabricate(run, runs_dir)
    path = runs_dir / run.grid / run.run_id / "record.json"
    record = json.loads(path.read_text())
    record["run_id"] = "C6.03e11-r4-s12-additive"
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="names the run"):
        collect_grid("micro-ablation", runs_dir)


# ---- notebooks --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_outputs(tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp("runs")
    fabricate_grids(runs_dir)
    return run_both_notebooks(runs_dir, tmp_path_factory.mktemp("out"))


def test_refits_recover_phi(full_outputs):
    refits = full_outputs["case"]["refits"]
    expected = {"baseline": PHI["micro"], "truncated_bptt": PHI["micro-tbptt"],
                "truncated_bptt_without_r2": PHI["micro-tbptt"], "hyperconnections": PHI["micro-hyper"]}
    for key, phi in expected.items():
        assert refits[key]["status"] == "fitted", key
        assert refits[key]["params"]["phi"] == pytest.approx(phi, abs=0.02), key
        assert refits[key]["params"]["alpha"] == pytest.approx(LAW["alpha"], abs=0.02), key
        assert refits[key]["r2"] > 0.999, key


def test_refit_run_counts(full_outputs):
    refits = full_outputs["case"]["refits"]
    assert (refits["baseline"]["n_runs"], refits["baseline"]["n_planned"]) == (80, 80)
    assert (refits["truncated_bptt"]["n_runs"], refits["truncated_bptt"]["n_planned"]) == (89, 89)
    assert refits["truncated_bptt_without_r2"]["n_runs"] == 89 - 23
    assert (refits["hyperconnections"]["n_runs"], refits["hyperconnections"]["n_planned"]) == (83, 83)


def test_isoflops_cells_per_grid(full_outputs):
    isoflops = full_outputs["case"]["isoflops"]
    assert len(isoflops["tbptt"]) == 4 * 4
    assert len(isoflops["hyper"]) == 4 * 4


def test_tables_show_ours_and_published(full_outputs):
    table = full_outputs["table.tex"]
    assert "0.453" in table  # published baseline phi
    assert "0.646" in table  # published hyperconnections phi
    assert "not trained" not in table
    ablation = full_outputs["ablation.tex"]
    assert "excluded (status diverged)" in ablation
    assert "7.400" in ablation


def test_numbers_prefixed_and_shift(full_outputs):
    macros = re.findall(r"\\newcommand\{\\(\w+)\}\{(.*)\}", full_outputs["case_numbers.tex"])
    assert macros
    assert all(name.startswith("case") for name, _ in macros)
    values = dict(macros)
    assert values["caseShiftHyper"] == "+0.20"
    assert values["casePubShiftTruncated"] == "-0.073"
    assert values["caseNotTrained"].startswith("Every planned")
    assert "a shift of $+0.20$" in values["caseHyperSentence"]


def test_missing_grid_renders_not_trained(tmp_path, runs_dir):
    fabricate_grids(runs_dir, grids=("micro", "micro-tbptt", "micro-ablation"))
    outputs = run_both_notebooks(runs_dir, tmp_path)
    hyper = outputs["case"]["refits"]["hyperconnections"]
    assert hyper["status"] == "missing"
    assert (hyper["n_runs"], hyper["n_planned"]) == (20, 83)
    assert outputs["case"]["refits"]["truncated_bptt"]["status"] == "fitted"
    assert "not trained yet" in outputs["table.tex"]
    assert "not trained yet" in outputs["ablation.tex"]  # the reused hyperconnections run
    assert "63 of the 83 hyperconnections runs" in outputs["case_numbers.tex"]
    assert "Hyperconnections has no refit yet: 20 of its 83" in outputs["case_numbers.tex"]


def test_makefile_fragment_parameters_declared():
    from isodepth.notebooks import parameters_cell

    text = (paths.ROOT / "make" / "case_studies.mk").read_text().replace("\\\n", " ")
    for name in ("case_studies.ipynb", "case_study_figures.ipynb"):
        cell = parameters_cell(paths.ROOT / "notebooks" / name)[0]
        declared = set(re.findall(r"^(\w+) =", "".join(cell["source"]), re.M))
        passed = set()
        for line in text.splitlines():
            if f"notebooks/{name}" in line and "$(NOTEBOOK)" in line:
                passed |= set(re.findall(r"-p\s+(\w+)", line))
        assert passed, name
        assert passed <= declared, f"{name}: undeclared {sorted(passed - declared)}"
