"""Launchers that train a list of planned runs: a CPU process pool, one run per local GPU, or SLURM.

Every launcher trains each run through train_run, so records, checkpoints and resumption are
the same whichever launcher ran them. A launcher returns run_id -> status, where status is
"completed" or "diverged" (the run's record), "preempted" (stopped by a signal after saving
a checkpoint), "failed" (an error, logged) or, for SLURM jobs not waited for, "submitted".
"""

from __future__ import annotations

import concurrent.futures as futures
import json
import logging
import os
import queue
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import paths
from .grids import PlannedRun, load_grid
from .io import atomic_write_json
from .sweep import FINISHED_STATUSES
from .train import EXIT_PREEMPTED, Preempted, record_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOptions:
    """Settings of train_run that a launcher passes to every run it starts."""

    device: str = "cpu"
    compile_model: bool = False
    data_dir: str | None = None
    checkpoint_every_s: float = 120.0
    checkpoint_every_steps: int | None = None
    micro_batch_rows: int | None = None
    eval_batch_rows: int | None = None
    keep_checkpoint: bool = True
    runs_dir: str | None = None
    checkpoint_dir: str | None = None

    def cli_args(self) -> list[str]:
        """Return the same settings as flags of `python -m isodepth.train`."""
        args = ["--device", self.device, "--checkpoint-every-s", repr(self.checkpoint_every_s), "--no-progress"]
        if self.compile_model:
            args.append("--compile")
        if self.data_dir:
            args += ["--data-dir", str(self.data_dir)]
        if self.checkpoint_every_steps:
            args += ["--checkpoint-every-steps", str(self.checkpoint_every_steps)]
        if self.micro_batch_rows:
            args += ["--micro-batch-rows", str(self.micro_batch_rows)]
        if self.eval_batch_rows:
            args += ["--eval-batch-rows", str(self.eval_batch_rows)]
        if self.keep_checkpoint:
            args.append("--keep-checkpoint")
        if self.runs_dir:
            args += ["--runs-dir", str(self.runs_dir)]
        if self.checkpoint_dir:
            args += ["--checkpoint-dir", str(self.checkpoint_dir)]
        return args


def record_status(run: PlannedRun, runs_dir: str | Path | None) -> str | None:
    """Status in the run's record, or None when it has no readable record."""
    path = record_path(run, Path(runs_dir) if runs_dir else None)
    try:
        return json.loads(path.read_text()).get("status")
    except (OSError, ValueError):
        return None


def train_in_process(grid: str, run_id: str, options: TrainOptions, stop_signals=None) -> dict:
    """Train one run of `grid` in this process with `options`; return the short summary of its record."""
    from .paper_data import data_source_from_spec
    from .train import EVAL_BATCH_ROWS, STOP_SIGNALS, train_run

    loaded = load_grid(grid)
    runs = {r.run_id: r for r in loaded.runs()}
    if run_id not in runs:
        raise ValueError(f"run {run_id!r} is not in grid {grid!r}; list the runs with `isodepth plan {grid}`")
    data = data_source_from_spec(loaded.spec.get("data"), options.data_dir)
    record = train_run(
        runs[run_id], runs_dir=Path(options.runs_dir) if options.runs_dir else None,
        checkpoint_dir=Path(options.checkpoint_dir) if options.checkpoint_dir else None,
        device=options.device, checkpoint_every_s=options.checkpoint_every_s,
        checkpoint_every_steps=options.checkpoint_every_steps, keep_checkpoint=options.keep_checkpoint,
        data=data, compile_model=options.compile_model, micro_batch_rows=options.micro_batch_rows,
        eval_batch_rows=options.eval_batch_rows or EVAL_BATCH_ROWS,
        stop_signals=STOP_SIGNALS if stop_signals is None else stop_signals)
    return {"run_id": run_id, "status": record["status"], "final_val_loss": record["final_val_loss"],
            "tokens_per_s": record["throughput"]["tokens_per_s"]}


# ---- local process pool (CPU) ------------------------------------------------------------------


def _pool_worker(grid: str, run_id: str, threads: int, options: TrainOptions) -> dict:
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return train_in_process(grid, run_id, options)


@dataclass(frozen=True)
class LocalLauncher:
    """A pool of worker processes on this machine, each training one run at a time on its own threads."""

    workers: int = 2
    threads_per_worker: int | None = None

    def settings(self) -> dict:
        return {"launcher": "local", "workers": self.workers, "threads_per_worker": self.threads()}

    def threads(self) -> int:
        return self.threads_per_worker or max(1, (os.cpu_count() or 1) // self.workers)

    def launch(self, grid: str, runs: list[PlannedRun], options: TrainOptions) -> dict[str, str]:
        from tqdm import tqdm

        results: dict[str, str] = {}
        with futures.ProcessPoolExecutor(max_workers=self.workers) as pool:
            jobs = {pool.submit(_pool_worker, grid, r.run_id, self.threads(), options): r.run_id for r in runs}
            for job in tqdm(futures.as_completed(jobs), total=len(jobs), desc=f"sweep {grid}"):
                run_id = jobs[job]
                try:
                    summary = job.result()
                except Preempted as stopped:
                    log.warning("grid %s: %s", grid, stopped)
                    results[run_id] = "preempted"
                    continue
                except Exception:  # one failed run must not stop the others; it is rerun next time
                    log.exception("grid %s: run %s failed", grid, run_id)
                    results[run_id] = "failed"
                    continue
                results[run_id] = summary["status"]
                log.info("grid %s: %s %s (validation loss %s)", grid, run_id, summary["status"],
                         summary["final_val_loss"])
        return results


# ---- local GPUs, one run per GPU (or per group of GPUs) ----------------------------------------


def visible_gpus() -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES if set, else every device torch counts."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


@dataclass(frozen=True)
class MultiGpuLauncher:
    """One `python -m isodepth.train` process per run, each pinned to its own GPUs.

    The GPUs are cut into slots of gpus_per_run ids. A run takes a free slot, and
    CUDA_VISIBLE_DEVICES limits it to those GPUs. A slot of several GPUs runs torchrun (DDP).
    Each run's output goes to log_dir/<run_id>.log.
    """

    gpus: tuple[str, ...]
    gpus_per_run: int = 1
    threads_per_run: int | None = None
    log_dir: Path | None = None

    def __post_init__(self):
        if self.gpus_per_run < 1:
            raise ValueError(f"gpus_per_run={self.gpus_per_run} must be at least 1")
        if len(self.gpus) < self.gpus_per_run:
            raise ValueError(f"{len(self.gpus)} GPUs ({','.join(self.gpus) or 'none'}) cannot host a run of "
                             f"{self.gpus_per_run} GPUs; pass --gpus with more ids or use --launcher local")

    def slots(self) -> list[tuple[str, ...]]:
        n = len(self.gpus) // self.gpus_per_run
        return [tuple(self.gpus[i * self.gpus_per_run : (i + 1) * self.gpus_per_run]) for i in range(n)]

    def settings(self) -> dict:
        return {"launcher": "multi-gpu", "gpus": list(self.gpus), "gpus_per_run": self.gpus_per_run,
                "slots": [",".join(s) for s in self.slots()], "threads_per_run": self.threads_per_run,
                "log_dir": str(self.log_dir) if self.log_dir else "logs/sweep/GRID"}

    def command(self, grid: str, run_id: str, options: TrainOptions) -> list[str]:
        train = ["--grid", grid, "--run-id", run_id, *options.cli_args()]
        if self.gpus_per_run == 1:
            return [sys.executable, "-m", "isodepth.train", *train]
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", str(self.gpus_per_run), "-m", "isodepth.train", *train]

    def _run_one(self, grid: str, run: PlannedRun, options: TrainOptions, free: queue.Queue, log_dir: Path) -> str:
        slot = free.get()
        try:
            env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(slot), PYTHONUNBUFFERED="1")
            if self.threads_per_run:
                env["OMP_NUM_THREADS"] = str(self.threads_per_run)
            log_file = log_dir / f"{run.run_id}.log"
            command = self.command(grid, run.run_id, options)
            log.info("grid %s: %s on GPU %s, output in %s", grid, run.run_id, ",".join(slot), log_file)
            with open(log_file, "a") as handle:
                code = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode
        finally:
            free.put(slot)
        status = record_status(run, options.runs_dir)
        if status in FINISHED_STATUSES:
            return status
        if code == EXIT_PREEMPTED:
            return "preempted"
        log.error("grid %s: run %s exited with status %d and wrote no record; see %s",
                  grid, run.run_id, code, log_file)
        return "failed"

    def launch(self, grid: str, runs: list[PlannedRun], options: TrainOptions) -> dict[str, str]:
        from tqdm import tqdm

        log_dir = Path(self.log_dir or paths.ROOT / "logs" / "sweep" / Path(grid).stem)
        log_dir.mkdir(parents=True, exist_ok=True)
        free: queue.Queue = queue.Queue()
        for slot in self.slots():
            free.put(slot)
        results: dict[str, str] = {}
        with futures.ThreadPoolExecutor(max_workers=len(self.slots())) as pool:
            jobs = {pool.submit(self._run_one, grid, r, options, free, log_dir): r.run_id for r in runs}
            for job in tqdm(futures.as_completed(jobs), total=len(jobs), desc=f"sweep {grid}"):
                run_id = jobs[job]
                try:
                    results[run_id] = job.result()
                except OSError:  # the process could not start; the other runs go on
                    log.exception("grid %s: could not start run %s", grid, run_id)
                    results[run_id] = "failed"
        return results


# ---- SLURM through submitit --------------------------------------------------------------------


@dataclass(frozen=True)
class SlurmSettings:
    """sbatch settings of the array job that trains one run per array task."""

    partition: str | None = None
    time_min: int = 24 * 60  # per attempt: a run that outlives it resumes in a requeued job
    gpus_per_run: int = 1  # one node; one task (DDP rank) per GPU
    ranks_per_run: int | None = None  # tasks per run when different from gpus_per_run (CPU ranks)
    cpus_per_task: int = 8
    mem_gb: float | None = None
    array_parallelism: int = 64  # array tasks running at once
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    max_timeouts: int = 3  # requeues after reaching the time limit; preemptions do not count
    signal_delay_s: int = 120  # SLURM sends SIGUSR2 this long before the time limit
    setup: tuple[str, ...] = ()  # shell lines run before the job, e.g. `module load cuda`
    additional: dict = field(default_factory=dict)  # other sbatch options, e.g. {"reservation": "x"}
    folder: str | None = None  # submitit logs and pickles (default logs/slurm/<grid>)
    cluster: str = "slurm"  # submitit executor; "local" and "debug" run the jobs on this machine
    wait: bool = False  # block until every job ends

    def ranks(self) -> int:
        return self.ranks_per_run or max(1, self.gpus_per_run)


class SlurmTrainTask:
    """The callable that one array task runs: train one run, resumable after requeueing.

    submitit pickles it with the job. It follows submitit's checkpointing protocol: on the
    preemption or time-limit signal (SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL names another),
    train_run finishes the step and saves its checkpoint, then submitit's handler calls
    `checkpoint`, which resubmits this same task, and requeues the job; the new attempt resumes
    from the saved checkpoint.
    """

    def __init__(self, grid: str, run_id: str, options: TrainOptions, threads: int | None = None):
        self.grid, self.run_id, self.options, self.threads = grid, run_id, options, threads

    def __call__(self) -> dict:
        import submitit
        import torch

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if self.threads:
            torch.set_num_threads(self.threads)
        environment = submitit.JobEnvironment()
        if environment.num_tasks > 1:
            export_rank_environment(environment)
        requeue_signal = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
        stop_signals = tuple(dict.fromkeys((signal.SIGTERM, signal.SIGUSR1, requeue_signal)))
        log.info("%s: training %s of grid %s", environment, self.run_id, self.grid)
        return train_in_process(self.grid, self.run_id, self.options, stop_signals=stop_signals)

    def checkpoint(self, *args, **kwargs):
        """Resubmit this task unchanged; train_run has saved the state it resumes from."""
        from submitit.core.utils import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


def export_rank_environment(environment) -> None:
    """Set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT for init_distributed in a job task.

    The port is derived from the job id (submitit's rule), so every task of the job agrees on it.
    A run's tasks share one node, so they meet on 127.0.0.1 unless the job spans several nodes.
    """
    import submitit

    ranks = submitit.helpers.TorchDistributedEnvironment()
    os.environ.update(
        RANK=str(ranks.rank), WORLD_SIZE=str(ranks.world_size), LOCAL_RANK=str(ranks.local_rank),
        LOCAL_WORLD_SIZE=str(ranks.local_world_size), MASTER_PORT=str(ranks.master_port),
        MASTER_ADDR="127.0.0.1" if environment.num_nodes == 1 else ranks.master_addr)


ACTIVE_SLURM_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
                       "COMPLETING", "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT"}


def slurm_job_state(folder: Path, job_id: str) -> str:
    """SLURM state of a submitted job as sacct reports it through submitit (UNKNOWN if not found)."""
    import submitit

    return submitit.SlurmJob(folder=folder, job_id=job_id).state


@dataclass(frozen=True)
class SlurmLauncher:
    """One SLURM array job per sweep; each array task trains one run on one node."""

    settings_: SlurmSettings = field(default_factory=SlurmSettings)

    def folder(self, grid: str) -> Path:
        return Path(self.settings_.folder or paths.ROOT / "logs" / "slurm" / Path(grid).stem)

    def settings(self) -> dict:
        values = asdict(self.settings_)
        values["setup"] = list(values["setup"])
        return {"launcher": "slurm", **values, "ranks_per_run": self.settings_.ranks()}

    def executor(self, grid: str):
        import submitit

        s = self.settings_
        try:
            executor = submitit.AutoExecutor(folder=self.folder(grid), cluster=s.cluster,
                                             slurm_max_num_timeout=s.max_timeouts,
                                             local_max_num_timeout=s.max_timeouts)
        except RuntimeError as err:  # submitit's SLURM executor raises this when srun is missing
            raise RuntimeError(f"cannot submit to SLURM ({err}); run the sweep on a SLURM login node, or pass "
                               "--slurm-cluster local to run the jobs on this machine") from err
        executor.update_parameters(
            name=f"isodepth-{Path(grid).stem}", timeout_min=s.time_min, nodes=1,
            tasks_per_node=s.ranks(), gpus_per_node=s.gpus_per_run, cpus_per_task=s.cpus_per_task,
            mem_gb=s.mem_gb, slurm_partition=s.partition, slurm_array_parallelism=s.array_parallelism,
            slurm_account=s.account, slurm_qos=s.qos, slurm_constraint=s.constraint,
            slurm_signal_delay_s=s.signal_delay_s, slurm_setup=list(s.setup) or None,
            slurm_additional_parameters=dict(s.additional) or None)
        return executor

    def _ledger(self, grid: str) -> Path:
        return self.folder(grid) / "submitted.json"

    def active_runs(self, grid: str, executor) -> set[str]:
        """Runs whose last submitted SLURM job is still queued or running, so they are not submitted twice."""
        ledger = self._ledger(grid)
        if executor.cluster != "slurm" or not ledger.exists():
            return set()
        active = set()
        for run_id, job_id in json.loads(ledger.read_text()).items():
            try:
                state = slurm_job_state(self.folder(grid), job_id).split()[0]
            except (OSError, RuntimeError, subprocess.SubprocessError) as err:
                log.warning("could not read the state of job %s (run %s): %s; submitting the run again",
                            job_id, run_id, err)
                continue
            if state in ACTIVE_SLURM_STATES:
                active.add(run_id)
        return active

    def submit(self, grid: str, runs: list[PlannedRun], options: TrainOptions) -> tuple[dict[str, str], list]:
        """Submit one array task per run that has no live job; return (skipped run -> "submitted", [(run, job)])."""
        executor = self.executor(grid)
        active = self.active_runs(grid, executor)
        if active:
            log.info("grid %s: %d runs already have a queued or running job: %s", grid, len(active),
                     ", ".join(sorted(active)))
        skipped = {run_id: "submitted" for run_id in sorted(active)}
        todo = [r for r in runs if r.run_id not in active]
        if not todo:
            return skipped, []

        threads = self.settings_.cpus_per_task
        with executor.batch():
            jobs = [executor.submit(SlurmTrainTask(grid, r.run_id, options, threads)) for r in todo]
        ledger_path = self._ledger(grid)
        ledger = json.loads(ledger_path.read_text()) if ledger_path.exists() else {}
        ledger.update({r.run_id: job.job_id for r, job in zip(todo, jobs)})
        atomic_write_json(ledger_path, ledger)
        log.info("grid %s: submitted %d runs as %s jobs %s ... (logs in %s)", grid, len(jobs),
                 executor.cluster, jobs[0].job_id, self.folder(grid))
        return skipped, list(zip(todo, jobs))

    def launch(self, grid: str, runs: list[PlannedRun], options: TrainOptions) -> dict[str, str]:
        results, submitted = self.submit(grid, runs, options)
        for run, job in submitted:
            if not self.settings_.wait:
                results[run.run_id] = "submitted"
                continue
            try:
                summary = job.result()
                results[run.run_id] = summary["status"]
            except Exception as err:  # a failed job is reported here and rerun by the next sweep
                status = record_status(run, options.runs_dir)
                results[run.run_id] = status if status in FINISHED_STATUSES else "failed"
                log.error("grid %s: job %s of run %s failed: %s", grid, job.job_id, run.run_id, err)
        return results
