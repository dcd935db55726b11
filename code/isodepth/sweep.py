"""Train every unfinished run of a grid with a launcher: local process pool, local GPUs or SLURM.

A run whose record exists is skipped, and a run with a checkpoint resumes from it. A run that
raises is logged and the sweep goes on with the others. The next sweep retries it because it
has no record. The launchers live in isodepth.launchers.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from .io import check_output_dir
from .options import non_negative_int, positive_float, positive_int, positive_seconds

# The grids, the launchers and the trainer import torch, so this module imports them only where
# it needs them: building the command-line parser stays fast.
if TYPE_CHECKING:
    from .grids import PlannedRun

log = logging.getLogger(__name__)

LAUNCHERS = ("local", "multi-gpu", "slurm")
FINISHED_STATUSES = ("completed", "diverged")

__all__ = ["FINISHED_STATUSES", "LAUNCHERS", "add_sweep_arguments", "is_finished", "make_launcher",
           "run_sweep", "select_runs", "sweep_command"]


def is_finished(run: PlannedRun, runs_dir: Path | None = None) -> bool:
    from .train import record_path

    path = record_path(run, runs_dir)
    if not path.exists():
        return False
    try:
        return json.loads(path.read_text()).get("status") in FINISHED_STATUSES
    except (OSError, ValueError):
        return False


def select_runs(grid_name: str, only: list[str] | None = None, max_budget: float | None = None,
                runs_dir: Path | None = None) -> list[PlannedRun]:
    from .grids import load_grid

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


def make_launcher(launcher: str = "local", *, workers: int = 2, threads_per_worker: int | None = None,
                  gpus: list[str] | None = None, gpus_per_run: int = 1, slurm=None,
                  log_dir: Path | None = None):
    """Build the launcher named `launcher` ('local', 'multi-gpu' or 'slurm') with its settings.

    slurm: a launchers.SlurmSettings; the default has gpus_per_run GPUs per run.
    log_dir: folder of each run's output under the multi-gpu launcher (default logs/sweep/GRID).
    """
    from .launchers import LocalLauncher, MultiGpuLauncher, SlurmLauncher, SlurmSettings, visible_gpus

    if launcher == "local":
        return LocalLauncher(workers=workers, threads_per_worker=threads_per_worker)
    if launcher == "multi-gpu":
        ids = list(gpus) if gpus else visible_gpus()
        if not ids:
            raise ValueError("the multi-gpu launcher found no GPU (CUDA_VISIBLE_DEVICES is empty and torch "
                             "counts none); pass --gpus 0,1,... or use --launcher local")
        return MultiGpuLauncher(gpus=tuple(ids), gpus_per_run=gpus_per_run, threads_per_run=threads_per_worker,
                                log_dir=log_dir)
    if launcher == "slurm":
        return SlurmLauncher(slurm or SlurmSettings(gpus_per_run=gpus_per_run))
    raise ValueError(f"launcher {launcher!r} is unknown; choose one of {', '.join(LAUNCHERS)}")


def run_sweep(grid_name: str, *, workers: int = 2, threads_per_worker: int | None = None,
              only: list[str] | None = None, max_budget: float | None = None,
              runs_dir: Path | None = None, checkpoint_dir: Path | None = None,
              device: str = "cpu", dry_run: bool = False, launcher: str = "local",
              gpus: list[str] | None = None, gpus_per_run: int = 1, slurm=None,
              log_dir: Path | None = None, options=None) -> dict[str, str]:
    """Train the unfinished runs of a grid, cheapest budget first; return run_id -> status.

    `options` (a launchers.TrainOptions) sets the training flags: compile, data folder,
    checkpoint cadence, micro-batch. device, runs_dir and checkpoint_dir override its fields.
    `slurm` is a launchers.SlurmSettings. A dry run returns the runs it would train as
    "pending" and starts nothing.
    """
    from .launchers import TrainOptions

    for folder, flag in ((runs_dir, "--runs-dir"), (checkpoint_dir, "--checkpoint-dir"), (log_dir, "--log-dir")):
        check_output_dir(folder, flag)
    pending = select_runs(grid_name, only, max_budget, runs_dir)
    chosen = make_launcher(launcher, workers=workers, threads_per_worker=threads_per_worker, gpus=gpus,
                           gpus_per_run=gpus_per_run, slurm=slurm, log_dir=log_dir)
    options = replace(options or TrainOptions(), device=device,
                      runs_dir=str(runs_dir) if runs_dir else None,
                      checkpoint_dir=str(checkpoint_dir) if checkpoint_dir else None)
    log.info("grid %s: %d runs to train; launcher settings %s", grid_name, len(pending),
             json.dumps(chosen.settings()))
    if dry_run or not pending:
        return {r.run_id: "pending" for r in pending}
    return chosen.launch(grid_name, pending, options)


# ---- command line ------------------------------------------------------------------------------


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `isodepth sweep`; sweep_command runs the parsed result."""
    parser.add_argument("grid", help="grid name in data/grids (paper, micro, tiny, ...) or a YAML path")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="local",
                        help="local: CPU process pool; multi-gpu: one run per local GPU; slurm: array job via submitit")
    parser.add_argument("--workers", type=positive_int, default=2, help="runs trained at once (local launcher)")
    parser.add_argument("--threads", type=positive_int, default=None, help="CPU threads per worker or per run")
    parser.add_argument("--runs", nargs="+", default=None, metavar="RUN_ID", help="only these run ids")
    parser.add_argument("--max-budget", type=positive_float, default=None, help="only budgets up to this many FLOPs")
    parser.add_argument("--device", default=None,
                        help="torch device of each run (default: cpu for the local launcher, cuda otherwise)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the launcher settings and the runs that would be trained, then stop")

    training = parser.add_argument_group("training")
    training.add_argument("--compile", action="store_true", help="compile each model with torch.compile")
    training.add_argument("--data-dir", default=None, help="folder of pre-packed parquet shards to train on")
    training.add_argument("--micro-batch-rows", type=positive_int, default=None, help="rows per forward pass on each rank")
    training.add_argument("--eval-batch-rows", type=positive_int, default=None,
                          help="rows per validation forward pass on each rank (default 32)")
    training.add_argument("--checkpoint-every-s", type=positive_seconds, default=120.0,
                          help="seconds between resumable checkpoints (default 120; inf: never)")
    training.add_argument("--checkpoint-every-steps", type=positive_int, default=None,
                          help="also checkpoint every this many optimiser steps")
    training.add_argument("--runs-dir", type=Path, default=None,
                          help="folder of run records (default data/runs); finished runs there are skipped")
    training.add_argument("--checkpoint-dir", type=Path, default=None,
                          help="folder of checkpoints (default checkpoints)")

    gpus = parser.add_argument_group("multi-gpu and slurm")
    gpus.add_argument("--gpus", type=gpu_ids, default=None,
                      help="comma-separated GPU ids for the multi-gpu launcher (default: all visible)")
    gpus.add_argument("--gpus-per-run", type=positive_int, default=1,
                      help="GPUs per run; above 1 a run is data-parallel over them (default 1)")
    gpus.add_argument("--log-dir", type=Path, default=None,
                      help="folder of each run's output under the multi-gpu launcher (default logs/sweep/GRID)")

    slurm = parser.add_argument_group("slurm")
    slurm.add_argument("--slurm-partition", default=None, help="partition to submit to")
    slurm.add_argument("--slurm-time-min", type=positive_int, default=24 * 60,
                       help="time limit per job attempt in minutes; a run that outlives it is requeued and resumes")
    slurm.add_argument("--slurm-cpus-per-task", type=positive_int, default=8, help="CPUs per task (per rank)")
    slurm.add_argument("--slurm-mem-gb", type=positive_float, default=None, help="memory per node in GB")
    slurm.add_argument("--slurm-array-parallelism", type=positive_int, default=64, help="array tasks running at once")
    slurm.add_argument("--slurm-account", default=None)
    slurm.add_argument("--slurm-qos", default=None)
    slurm.add_argument("--slurm-constraint", default=None)
    slurm.add_argument("--slurm-max-timeouts", type=non_negative_int, default=3,
                       help="requeues after hitting the time limit (preemptions do not count)")
    slurm.add_argument("--slurm-signal-delay-s", type=positive_int, default=120,
                       help="seconds before the time limit at which SLURM sends SIGUSR2 to save and requeue")
    slurm.add_argument("--slurm-setup", action="append", default=[],
                       help="shell line run before each job, e.g. 'module load cuda' (repeatable)")
    slurm.add_argument("--slurm-option", action="append", default=[], metavar="KEY=VALUE",
                       help="another sbatch option, e.g. reservation=abc (repeatable)")
    slurm.add_argument("--slurm-folder", default=None, help="submitit log folder (default logs/slurm/GRID)")
    slurm.add_argument("--slurm-cluster", choices=("slurm", "local", "debug"), default="slurm",
                       help="submitit executor (default slurm); local and debug run the jobs on this machine")
    slurm.add_argument("--wait", action="store_true", help="wait for the SLURM jobs to end and report their status")


def gpu_ids(text: str) -> list[str]:
    """argparse type of --gpus: comma-separated device ids (indices or UUIDs), each once."""
    ids = [part.strip() for part in text.split(",")]
    if not all(ids):
        raise argparse.ArgumentTypeError(f"{text!r} has an empty GPU id; give ids like 0,1,2")
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"{text!r} names GPU {', '.join(repeated)} more than once")
    return ids


def _slurm_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--slurm-option {pair!r} is not KEY=VALUE, e.g. reservation=abc")
        options[key.strip()] = value.strip()
    return options


def _check_launcher_flags(args) -> None:
    """Reject flags that the chosen launcher would ignore, so a typo in --launcher is not silent."""
    flag_given = {"--gpus": args.gpus is not None, "--log-dir": args.log_dir is not None,
                  "--gpus-per-run": args.gpus_per_run != 1}
    ignored = {"local": ("--gpus", "--log-dir", "--gpus-per-run"), "slurm": ("--gpus", "--log-dir")}
    unused = [flag for flag in ignored.get(args.launcher, ()) if flag_given[flag]]
    if unused:
        raise ValueError(f"--launcher {args.launcher} ignores {', '.join(unused)}; "
                         "use --launcher multi-gpu, or drop them")


def sweep_command(args) -> int:
    """Run `isodepth sweep` from parsed add_sweep_arguments options; return the exit status."""
    from .launchers import SlurmSettings, TrainOptions

    device = args.device or ("cpu" if args.launcher == "local" else "cuda")
    slurm = SlurmSettings(
        partition=args.slurm_partition, time_min=args.slurm_time_min, gpus_per_run=args.gpus_per_run,
        cpus_per_task=args.slurm_cpus_per_task, mem_gb=args.slurm_mem_gb,
        array_parallelism=args.slurm_array_parallelism, account=args.slurm_account, qos=args.slurm_qos,
        constraint=args.slurm_constraint, max_timeouts=args.slurm_max_timeouts,
        signal_delay_s=args.slurm_signal_delay_s, setup=tuple(args.slurm_setup),
        additional=_slurm_options(args.slurm_option), folder=args.slurm_folder,
        cluster=args.slurm_cluster, wait=args.wait)
    options = TrainOptions(compile_model=args.compile, data_dir=args.data_dir,
                           checkpoint_every_s=args.checkpoint_every_s,
                           checkpoint_every_steps=args.checkpoint_every_steps,
                           micro_batch_rows=args.micro_batch_rows, eval_batch_rows=args.eval_batch_rows)
    gpus = args.gpus
    _check_launcher_flags(args)
    if args.dry_run:
        launcher = make_launcher(args.launcher, workers=args.workers, threads_per_worker=args.threads,
                                 gpus=gpus, gpus_per_run=args.gpus_per_run, slurm=slurm, log_dir=args.log_dir)
        print("# launcher " + json.dumps({**launcher.settings(), "device": device}))
    results = run_sweep(args.grid, workers=args.workers, threads_per_worker=args.threads, only=args.runs,
                        max_budget=args.max_budget, device=device, dry_run=args.dry_run,
                        launcher=args.launcher, gpus=gpus, gpus_per_run=args.gpus_per_run, slurm=slurm,
                        runs_dir=args.runs_dir, checkpoint_dir=args.checkpoint_dir, log_dir=args.log_dir,
                        options=options)
    if args.dry_run:
        for run_id in results:
            print(run_id)
        return 0
    failed = [k for k, v in results.items() if v == "failed"]
    if failed:
        log.error("%d runs failed: %s; rerun the sweep to retry them", len(failed), ", ".join(failed))
    return 1 if failed else 0
