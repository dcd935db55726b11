"""Run every planned run of a grid with a local process pool, skipping finished runs.

Each worker trains one run at a time on its own CPU threads. A run whose record exists is
skipped; a run with a checkpoint resumes from it; a run that raises is logged and the sweep goes
on, so one bad run never loses the others.
"""

from __future__ import annotations

import concurrent.futures as futures
import logging
import os
from pathlib import Path

from .grids import PlannedRun, load_grid
from .train import record_path

log = logging.getLogger(__name__)

FINISHED_STATUSES = ("completed", "diverged")


def is_finished(run: PlannedRun, runs_dir: Path | None = None) -> bool:
    import json

    path = record_path(run, runs_dir)
    if not path.exists():
        return False
    try:
        return json.loads(path.read_text()).get("status") in FINISHED_STATUSES
    except (OSError, ValueError):
        return False


def _worker(grid_name: str, run_id: str, threads: int, runs_dir: str | None,
            checkpoint_dir: str | None, device: str) -> tuple[str, str, float | None]:
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from .train import train_run

    runs = {r.run_id: r for r in load_grid(grid_name).runs()}
    record = train_run(runs[run_id], runs_dir=Path(runs_dir) if runs_dir else None,
                       checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir else None, device=device,
                       keep_checkpoint=True)
    return run_id, record["status"], record["final_val_loss"]


def select_runs(grid_name: str, only: list[str] | None = None, max_budget: float | None = None,
                runs_dir: Path | None = None) -> list[PlannedRun]:
    runs = load_grid(grid_name).runs()
    if only:
        known = {r.run_id for r in runs}
        missing = sorted(set(only) - known)
        if missing:
            raise ValueError(f"runs {missing} are not in grid {grid_name!r}; list them with `isodepth plan {grid_name}`")
        runs = [r for r in runs if r.run_id in only]
    if max_budget is not None:
        runs = [r for r in runs if r.budget <= max_budget * (1 + 1e-9)]
    return [r for r in runs if not is_finished(r, runs_dir)]


def run_sweep(grid_name: str, *, workers: int = 2, threads_per_worker: int | None = None,
              only: list[str] | None = None, max_budget: float | None = None,
              runs_dir: Path | None = None, checkpoint_dir: Path | None = None,
              device: str = "cpu", dry_run: bool = False) -> dict[str, str]:
    """Train the unfinished runs of a grid, cheapest budget first; return run_id -> status."""
    pending = select_runs(grid_name, only, max_budget, runs_dir)
    log.info("grid %s: %d runs to train with %d workers", grid_name, len(pending), workers)
    if dry_run or not pending:
        return {r.run_id: "pending" for r in pending}
    threads = threads_per_worker or max(1, (os.cpu_count() or 1) // workers)

    results: dict[str, str] = {}
    from tqdm import tqdm

    with futures.ProcessPoolExecutor(max_workers=workers) as pool:
        jobs = {
            pool.submit(_worker, grid_name, r.run_id, threads,
                        str(runs_dir) if runs_dir else None,
                        str(checkpoint_dir) if checkpoint_dir else None, device): r.run_id
            for r in pending
        }
        for job in tqdm(futures.as_completed(jobs), total=len(jobs), desc=f"sweep {grid_name}"):
            run_id = jobs[job]
            try:
                _, status, loss = job.result()
                results[run_id] = status
                log.info("grid %s: %s %s (validation loss %s)", grid_name, run_id, status, loss)
            except Exception:  # one failed run must not stop the others; it is rerun next time
                log.exception("grid %s: run %s failed", grid_name, run_id)
                results[run_id] = "failed"
    return results
