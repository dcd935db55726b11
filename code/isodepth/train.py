"""Train one planned run and write its run record, in one process or data-parallel under torchrun.

The run reads the fixed training stream from its first row, follows the recipe's schedule to
its own last step, measures the mean validation loss in nats on the validation split and writes
data/runs/<grid>/<run_id>/record.json atomically. Checkpoints (weights, optimiser, RNG, step,
loss curve) go to checkpoints/<grid>/<run_id>/state.pt, so an interrupted run resumes where it
stopped and ends with the same loss.

Data-parallel runs: `torchrun --nproc_per_node N -m isodepth.train --grid G --run-id RUN_ID`.
Each of the N ranks reads a disjoint slice of every global batch of batch_rows rows and
accumulates micro-batches, so batch_rows = N x micro_batch_rows x accumulation steps; DDP
averages the gradients before MuonH and AdamW step, so every rank applies the same update.
Rank 0 alone writes the record and the checkpoints.

Stop signals: on SIGTERM or SIGUSR1 the run finishes its current step, saves a checkpoint
and stops (train_run raises Preempted; the command exits with EXIT_PREEMPTED = 75).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import paths
from .checkpoint import save_checkpoint
from .data import TrainRows, token_stream, validation_rows
from .distributed import DistributedContext, init_distributed, shutdown_distributed
from .grids import PlannedRun
from .hardware import device_name, mfu, peak_flops, usable_attention_backends
from .io import atomic_write_json, ensure_writable_dir
from .model import LoopedLM
from .options import EVAL_BATCH_ROWS, add_train_options
from .optim import build_optimizers, lr_multiplier
from .provenance import git_commit, hardware, library_versions

log = logging.getLogger(__name__)

RECORD_VERSION = 1
STATE_FORMAT = 2  # 1: no data position or world size; both are read with defaults
LOG_EVERY_STEPS = 10
LOG_THROUGHPUT_EVERY_S = 60.0

# Exit status of `python -m isodepth.train`: 0 completed, 1 diverged, 2 invalid arguments,
# 75 (EX_TEMPFAIL in sysexits.h) stopped by a signal after saving a checkpoint: run it again to resume.
EXIT_DIVERGED = 1
EXIT_FAILED = 3  # an error during training, logged with its traceback
EXIT_PREEMPTED = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """A stop signal arrived, so the run saved a checkpoint at `step` and stopped."""

    def __init__(self, run_id: str, step: int, signum: int):
        super().__init__(run_id, step, signum)  # the arguments alone, so the exception pickles
        self.run_id, self.step, self.signum = run_id, step, signum

    def __str__(self) -> str:
        return (f"run {self.run_id} stopped by {signal.Signals(self.signum).name} at step {self.step}; "
                "its checkpoint is saved, so rerunning it resumes there")


def record_path(run: PlannedRun, runs_dir: Path | None = None) -> Path:
    return Path(runs_dir or paths.RUNS) / run.grid / run.run_id / "record.json"


def checkpoint_path(run: PlannedRun, checkpoint_dir: Path | None = None) -> Path:
    return Path(checkpoint_dir or paths.CHECKPOINTS) / run.grid / run.run_id / "state.pt"


def final_checkpoint_dir(run: PlannedRun, checkpoint_dir: Path | None = None) -> Path:
    """Folder of a run's final weights (model.safetensors + config.json)."""
    return Path(checkpoint_dir or paths.CHECKPOINTS) / run.grid / run.run_id / "final"


def autocast_context(device: torch.device):
    """bf16 autocast on CUDA; fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---- data --------------------------------------------------------------------------------------


class CorpusData:
    """The embedded corpus as a data source: TrainRows for training, a row tensor for validation.

    Streams default to the tokenized splits of data/corpus (tokenized on first use and cached).
    """

    def __init__(self, train_stream=None, validation_stream=None):
        self.train_stream = train_stream
        self.validation_stream = validation_stream

    def train_rows(self, seq_len: int, vocab_size: int | None = None) -> TrainRows:
        stream = token_stream("train") if self.train_stream is None else self.train_stream
        return TrainRows(stream, seq_len)

    def validation_rows(self, seq_len: int, vocab_size: int | None = None) -> torch.Tensor:
        stream = token_stream("validation") if self.validation_stream is None else self.validation_stream
        return validation_rows(stream, seq_len)

    def describe(self) -> dict:
        return {"kind": "corpus"}


@torch.no_grad()
def evaluate_loss(model: LoopedLM, rows, device: torch.device, batch_rows: int = EVAL_BATCH_ROWS,
                  n_rows: int | None = None, context: DistributedContext | None = None) -> float:
    """Token-weighted mean cross-entropy in nats over the first n_rows rows (all by default).

    Inputs are row[:-1] and targets row[1:]. `rows` is a tensor or any object with len() and
    contiguous slicing. Under data parallelism rank k evaluates chunks k, k + N, ... and the
    sums are added over ranks.
    """
    context = context or DistributedContext(device=device)
    n_rows = len(rows) if n_rows is None else min(n_rows, len(rows))
    model.eval()
    total, count = 0.0, 0
    for start in range(context.rank * batch_rows, n_rows, context.world_size * batch_rows):
        chunk = rows[start : min(start + batch_rows, n_rows)].to(device)
        with autocast_context(device):
            logits = model(chunk[:, :-1])
        loss = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), chunk[:, 1:].reshape(-1), reduction="sum")
        total += loss.item()
        count += chunk[:, 1:].numel()
    model.train()
    if context.is_distributed:
        sums = context.all_reduce_sum(torch.tensor([total, float(count)], dtype=torch.float64, device=device))
        total, count = sums[0].item(), int(sums[1].item())
    return total / count


# ---- checkpoints -------------------------------------------------------------------------------


def plan_fingerprint(run: PlannedRun) -> str:
    """Hash of everything that shapes a run, so a checkpoint of a changed plan is never resumed."""
    import hashlib

    plan = {"model": run.model.to_dict(), "steps": run.steps, "batch_rows": run.batch_rows,
            "micro_batch_rows": run.micro_batch_rows, "learning_rates": run.learning_rates,
            "recipe": asdict(run.recipe), "seed": run.seed}
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class StateFile:
    """Destination of a run's resumable checkpoints and the facts saved with each of them."""

    path: Path
    plan: str  # plan_fingerprint of the planned run
    batch_rows: int
    micro_batch_rows: int
    world_size: int
    extra: dict = field(default_factory=dict)


def _save_state(target: StateFile, model, optimizers, step: int, curve: list, elapsed: float) -> None:
    """Write the resumable state atomically: temporary file, fsync, rename."""
    path = target.path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    state = {
        "format": STATE_FORMAT,
        "plan": target.plan,
        "model": model.state_dict(),
        "optimizers": optimizers.state_dict(),
        "step": step,
        "rows_consumed": step * target.batch_rows,  # data position in the fixed row order
        "curve": curve,
        "elapsed_s": elapsed,
        "rng": torch.get_rng_state(),
        "world_size": target.world_size,
        "micro_batch_rows": target.micro_batch_rows,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda_rng"] = torch.cuda.get_rng_state()
    with open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def _load_state(target: StateFile, run: PlannedRun, device: torch.device) -> dict:
    state = torch.load(target.path, map_location=device, weights_only=True)
    if state.get("plan") != target.plan:
        raise RuntimeError(
            f"checkpoint {target.path} belongs to a different plan of run {run.run_id} (the grid "
            "changed since it was written); delete it to start the run from scratch")
    rows = state.get("rows_consumed", state["step"] * run.batch_rows)
    if rows != state["step"] * run.batch_rows:
        raise RuntimeError(f"checkpoint {target.path} is inconsistent: step {state['step']} but "
                           f"{rows} rows consumed at {run.batch_rows} rows per step; delete it")
    saved_world = state.get("world_size", 1)
    if saved_world != target.world_size:
        log.info("%s: checkpoint written by %d ranks, resuming on %d; the data position is global, "
                 "so the run reads the same rows", run.run_id, saved_world, target.world_size)
    return state


# ---- stop signals ------------------------------------------------------------------------------


class StopSignals:
    """Record stop signals during training so the run can stop at the end of a step.

    Handlers are installed only in the main thread (Python allows no other), and the previous
    handlers come back on exit. `chain` calls the previous handler of the received signal, so a
    launcher's own handler (submitit's requeue on SIGUSR2) runs once the checkpoint is saved.
    """

    def __init__(self, signals=STOP_SIGNALS):
        self.signals = tuple(signals)
        self.received: int | None = None
        self.previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        self.received = signum  # only a flag: the training loop acts on it between steps

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self.previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._handle)
        elif self.signals:
            log.debug("not in the main thread: stop signals keep their current handlers")
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self.previous.clear()

    def chain(self) -> None:
        """Run the handler that the received signal had before training started, if it was a function."""
        handler = self.previous.get(self.received)
        if callable(handler) and handler is not signal.default_int_handler:
            handler(self.received, None)


# ---- training ----------------------------------------------------------------------------------


@dataclass
class Throughput:
    """Tokens per second of this session, timed from the end of its first step (compilation and
    allocator warm-up excluded) when the session ran more than one step."""

    tokens_per_step: int
    first_step: int
    started: float = field(default_factory=time.perf_counter)
    mark_step: int | None = None
    mark_time: float = 0.0

    def step_done(self, step: int) -> None:
        if self.mark_step is None:
            self.mark_step, self.mark_time = step, time.perf_counter()

    def tokens_per_s(self, step: int) -> float:
        now = time.perf_counter()
        if self.mark_step is not None and step > self.mark_step:
            return (step - self.mark_step) * self.tokens_per_step / (now - self.mark_time)
        elapsed = now - self.started
        return (step - self.first_step) * self.tokens_per_step / elapsed if elapsed > 0 else 0.0

    def steps_timed(self, step: int) -> int:
        if self.mark_step is not None and step > self.mark_step:
            return step - self.mark_step
        return step - self.first_step


def _split_batch(run: PlannedRun, micro_batch_rows: int, world_size: int) -> tuple[int, int]:
    """Rows per rank and accumulation steps, or a ValueError when the batch does not divide."""
    if micro_batch_rows < 1 or run.batch_rows % (micro_batch_rows * world_size):
        raise ValueError(
            f"run {run.run_id}: batch rows {run.batch_rows} is not a multiple of micro-batch rows "
            f"{micro_batch_rows} x world size {world_size}; batch_rows must equal world_size x "
            "micro_batch_rows x accumulation steps, so pick a micro-batch size or a number of "
            f"processes that divides {run.batch_rows}")
    rank_rows = run.batch_rows // world_size
    return rank_rows, rank_rows // micro_batch_rows


def train_run(run: PlannedRun, *, runs_dir: Path | None = None, checkpoint_dir: Path | None = None,
              device: str | torch.device = "cpu", checkpoint_every_s: float = 120.0,
              checkpoint_every_steps: int | None = None, keep_checkpoint: bool = False,
              train_stream=None, validation_stream=None, data=None, progress: bool = False,
              compile_model: bool = False, micro_batch_rows: int | None = None,
              eval_batch_rows: int = EVAL_BATCH_ROWS, stop_signals=STOP_SIGNALS) -> dict:
    """Train one run to its last step (resuming from a checkpoint if one exists); return the record.

    data: a source with train_rows(seq_len, vocab_size) and validation_rows(seq_len, vocab_size),
    such as paper_data.PrepackedData; by default the embedded corpus (or the given streams).
    micro_batch_rows overrides the plan's micro-batch, which changes memory, not the update.
    eval_batch_rows sets the rows per validation forward pass (fp32 logits of 32 rows of 2048
    tokens over a 32,001-token vocabulary take 8.4 GB); it changes the loss only by float rounding.
    Under torchrun (WORLD_SIZE > 1 in the environment) the run joins the process group.
    Raises Preempted after saving a checkpoint when one of `stop_signals` arrives.
    """
    context = init_distributed(device)
    try:
        return _train(run, context, runs_dir=runs_dir, checkpoint_dir=checkpoint_dir,
                      checkpoint_every_s=checkpoint_every_s, checkpoint_every_steps=checkpoint_every_steps,
                      keep_checkpoint=keep_checkpoint,
                      data=data if data is not None else CorpusData(train_stream, validation_stream),
                      progress=progress, compile_model=compile_model,
                      micro_batch_rows=micro_batch_rows or run.micro_batch_rows,
                      eval_batch_rows=eval_batch_rows, stop_signals=stop_signals)
    finally:
        shutdown_distributed(context)


def _train(run: PlannedRun, context: DistributedContext, *, runs_dir, checkpoint_dir, checkpoint_every_s,
           checkpoint_every_steps, keep_checkpoint, data, progress, compile_model, micro_batch_rows,
           eval_batch_rows, stop_signals) -> dict:
    device = context.device
    if context.rank == 0:
        # The grid's folders, not the run's: a run that fails leaves no empty folder behind.
        ensure_writable_dir(record_path(run, runs_dir).parents[1], "--runs-dir")
        ensure_writable_dir(checkpoint_path(run, checkpoint_dir).parents[1], "--checkpoint-dir")
    target = StateFile(checkpoint_path(run, checkpoint_dir), plan_fingerprint(run), run.batch_rows,
                       micro_batch_rows, context.world_size)

    train_rows = data.train_rows(run.model.seq_len, run.model.vocab_size)
    val_rows = data.validation_rows(run.model.seq_len, run.model.vocab_size)
    needed_rows = run.steps * run.batch_rows
    if needed_rows > len(train_rows):
        raise ValueError(
            f"run {run.run_id} needs {needed_rows} training rows ({run.tokens} tokens) but the training "
            f"data packs {len(train_rows)}; reduce the budget or the batch, because rows are never repeated"
        )
    rank_rows, accumulation = _split_batch(run, micro_batch_rows, context.world_size)

    torch.manual_seed(run.seed)
    model = LoopedLM(run.model).to(device)
    optimizers = build_optimizers(model, run.recipe, run.learning_rates)
    step, curve, elapsed = _restore(target, run, model, optimizers, device)
    forward, train_forward = _wrap_model(model, context, compile_model)

    backends = usable_attention_backends(device, run.model.head_dim,
                                         torch.bfloat16 if device.type == "cuda" else torch.float32)
    peak = peak_flops(device)
    if context.is_main:
        log.info("%s: %d steps on %s (%s), %d rank(s) x %d micro-batch(es) of %d rows, compile=%s, "
                 "attention backends usable: %s", run.run_id, run.steps, device, device_name(device),
                 context.world_size, accumulation, micro_batch_rows, compile_model, ", ".join(backends) or "none")
        if peak is None:
            log.info("%s: MFU not reported, because no peak bf16 FLOP/s is known for %s; set "
                     "ISODEPTH_PEAK_FLOPS to report it", run.run_id, device_name(device))

    status = "completed"
    started = time.perf_counter() - elapsed
    last_save = time.perf_counter()
    last_log = time.perf_counter()
    meter = Throughput(run.tokens_per_step, first_step=step)
    bar = None
    if progress and context.is_main:
        from tqdm import tqdm
        bar = tqdm(total=run.steps, initial=step, desc=run.run_id, leave=False)

    with StopSignals(stop_signals) as stops:
        while step < run.steps:
            optimizers.set_lr(lr_multiplier(step, run.steps, run.recipe.final_lr_fraction,
                                            run.recipe.warmup_steps))
            inputs, targets = train_rows.batch(step * run.batch_rows + context.rank * rank_rows, rank_rows)
            loss_sum = _accumulate_gradients(train_forward, inputs, targets, micro_batch_rows, accumulation, context)

            # One reduction per step carries the loss and the stop flag, so every rank gets the
            # same values and takes the same branch below.
            stop_flag = 1.0 if stops.received is not None else 0.0
            loss_total, stop_votes = context.all_reduce_sum(
                torch.stack([loss_sum, loss_sum.new_tensor(stop_flag)])).tolist()
            step_loss = loss_total / context.world_size
            if not math.isfinite(step_loss):
                status = "diverged"
                curve.append([step, None])  # JSON has no NaN; null marks the non-finite loss
                log.warning("%s: non-finite training loss %s at step %d; stopping", run.run_id, step_loss, step)
                break
            optimizers.step()
            optimizers.zero_grad()
            step += 1
            meter.step_done(step)
            if step % LOG_EVERY_STEPS == 0 or step == run.steps or step == 1:
                curve.append([step, round(step_loss, 6)])
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.3f}")
            if context.is_main and time.perf_counter() - last_log > LOG_THROUGHPUT_EVERY_S:
                _log_progress(run, step, step_loss, meter, peak, context.world_size)
                last_log = time.perf_counter()

            if stop_votes > 0:
                _stop(run, target, model, optimizers, step, curve, started, stops, context, bar)
            due = (time.perf_counter() - last_save > checkpoint_every_s
                   or (checkpoint_every_steps and step % checkpoint_every_steps == 0))
            if due and step < run.steps:
                if context.is_main:
                    _save_state(target, model, optimizers, step, curve, time.perf_counter() - started)
                last_save = time.perf_counter()
    if bar is not None:
        bar.close()

    train_seconds = time.perf_counter() - started
    tokens_per_s = meter.tokens_per_s(step)
    val_loss = None
    if status == "completed":
        n_eval = len(val_rows) if run.eval_rows is None else min(run.eval_rows, len(val_rows))
        eval_start = time.perf_counter()
        val_loss = evaluate_loss(forward, val_rows, device, batch_rows=eval_batch_rows, n_rows=n_eval,
                                 context=context)
        eval_seconds = time.perf_counter() - eval_start
        if not math.isfinite(val_loss):
            status = "diverged"
        validation_tokens = n_eval * run.model.seq_len
    else:
        eval_seconds, validation_tokens = 0.0, 0

    record = build_record(run, status=status, steps_done=step, curve=curve, val_loss=val_loss,
                          validation_tokens=validation_tokens, train_seconds=train_seconds,
                          eval_seconds=eval_seconds, device=device)
    record["throughput"] = throughput_section(run, meter, step, tokens_per_s, peak, device, context,
                                              compile_model, backends)
    record["parallelism"] = {"world_size": context.world_size, "micro_batch_rows": micro_batch_rows,
                             "accumulation_steps": accumulation}
    record["data"] = data.describe() if hasattr(data, "describe") else {"kind": type(data).__name__}
    if context.is_main:
        _write_outputs(run, record, model, target, runs_dir, checkpoint_dir, keep_checkpoint)
        log.info("%s: %s, validation loss %s nats, %.1f s, %.0f tokens/s", run.run_id, status,
                 f"{val_loss:.4f}" if val_loss is not None else "n/a", train_seconds, tokens_per_s)
    context.barrier()
    return record


def _restore(target: StateFile, run: PlannedRun, model, optimizers, device) -> tuple[int, list, float]:
    """Load the run's checkpoint into model and optimisers if one exists; return (step, curve, elapsed seconds)."""
    if not target.path.exists():
        return 0, [], 0.0
    state = _load_state(target, run, device)
    model.load_state_dict(state["model"])
    optimizers.load_state_dict(state["optimizers"])
    torch.set_rng_state(state["rng"].cpu())
    if "cuda_rng" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
    log.info("%s: resuming at step %d of %d", run.run_id, state["step"], run.steps)
    return state["step"], state["curve"], state["elapsed_s"]


def _wrap_model(model: LoopedLM, context: DistributedContext, compile_model: bool):
    """Return (forward, train_forward): the model, compiled if asked, and that module under DDP when distributed."""
    if compile_model:
        model.fused_loss = False  # the compiler fuses the plain loss itself; it would unroll the chunk loop
    forward = torch.compile(model) if compile_model else model
    if not context.is_distributed:
        return forward, forward
    from torch.nn.parallel import DistributedDataParallel

    device = context.device
    # The only buffers are the rotary tables, computed alike on every rank, so none is synced.
    # torch 2.13 deprecates broadcast_buffers in favour of forward_sync_buffers, which older
    # releases lack. The old flag still does what is wanted here, so its warning is silenced.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*is deprecated", category=FutureWarning)
        return forward, DistributedDataParallel(forward, device_ids=[device.index] if device.type == "cuda" else None,
                                                broadcast_buffers=False)


def _accumulate_gradients(train_forward, inputs, targets, micro_batch_rows: int, accumulation: int,
                          context: DistributedContext) -> torch.Tensor:
    """Backpropagate this rank's rows in micro-batches; return their mean loss as a float64 scalar."""
    device = context.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for micro in range(accumulation):
        part = slice(micro * micro_batch_rows, (micro + 1) * micro_batch_rows)
        last = micro == accumulation - 1
        # DDP all-reduces gradients on the last micro-batch only.
        sync = contextlib.nullcontext() if last or not context.is_distributed else train_forward.no_sync()
        with sync:
            with autocast_context(device):
                loss = train_forward(inputs[part].to(device), targets[part].to(device))
            # Equal-sized micro-batches: the mean of their means is the full-batch mean.
            (loss / accumulation).backward()
        loss_sum += loss.detach().double() / accumulation
    return loss_sum


def _write_outputs(run, record, model, target, runs_dir, checkpoint_dir, keep_checkpoint) -> None:
    """Write the record (and the final weights if kept), then delete the resumable checkpoint."""
    atomic_write_json(record_path(run, runs_dir), record)
    if keep_checkpoint and record["status"] == "completed":
        save_checkpoint(model, final_checkpoint_dir(run, checkpoint_dir), {
            "run_id": run.run_id, "grid": run.grid, "recurrences": run.r,
            "final_val_loss": record["final_val_loss"], "accounting": record["accounting"],
            "tokenizer": record["data"].get("tokenizer", "data/corpus/tokenizer.json")})
    if target.path.exists():
        target.path.unlink()


def _stop(run, target, model, optimizers, step, curve, started, stops, context, bar) -> None:
    """Save a checkpoint at `step`, let the launcher's handler act, then raise Preempted."""
    if context.is_main:
        _save_state(target, model, optimizers, step, curve, time.perf_counter() - started)
        log.warning("%s: stop signal received; saved a checkpoint at step %d of %d",
                    run.run_id, step, run.steps)
    # Other ranks must not exit before rank 0 has written the checkpoint, because a launcher
    # such as torchrun stops every rank once one of them exits.
    context.barrier()
    if bar is not None:
        bar.close()
    signum = stops.received if stops.received is not None else signal.SIGTERM
    stops.chain()
    raise Preempted(run.run_id, step, signum)


def _log_progress(run, step, step_loss, meter, peak, world_size) -> None:
    tokens_per_s = meter.tokens_per_s(step)
    utilisation = mfu(run.flops_per_token, tokens_per_s, peak, world_size)
    log.info("%s: step %d of %d, training loss %.4f, %.0f tokens/s%s", run.run_id, step, run.steps,
             step_loss, tokens_per_s, f", MFU {100 * utilisation:.1f}%" if utilisation is not None else "")


def throughput_section(run, meter, step, tokens_per_s, peak, device, context, compile_model, backends) -> dict:
    """Build the record's `throughput` section: tokens/s and, on a device of known peak, MFU."""
    return {
        "tokens_per_s": round(tokens_per_s, 3),
        "model_flops_per_s": run.flops_per_token * tokens_per_s,
        "mfu": mfu(run.flops_per_token, tokens_per_s, peak, context.world_size),
        "peak_flops_per_device": peak.flops if peak else None,
        "peak_flops_source": peak.source if peak else None,
        "device_name": device_name(device),
        "devices": context.world_size,
        "steps_timed": meter.steps_timed(step),
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
        "compiled": compile_model,
        "attention_backends": backends,
    }


def build_record(run: PlannedRun, *, status: str, steps_done: int, curve: list, val_loss: float | None,
                 validation_tokens: int, train_seconds: float, eval_seconds: float,
                 device: torch.device) -> dict:
    return {
        "record_version": RECORD_VERSION,
        "grid": run.grid,
        "run_id": run.run_id,
        "status": status,
        "budget": run.budget,
        "r": run.r,
        "size": run.size,
        "variant": run.variant,
        "model": run.model.to_dict(),
        "family": run.family,
        "accounting": {
            "n_once": run.n_once, "n_rec": run.n_rec, "n_total": run.n_total,
            "flops_per_token": run.flops_per_token,
            "training_flops": run.flops_per_token * run.tokens_per_step * steps_done,
        },
        "training": {
            "steps": run.steps, "steps_done": steps_done, "tokens": run.tokens,
            "tokens_seen": steps_done * run.tokens_per_step, "tokens_per_step": run.tokens_per_step,
            "batch_rows": run.batch_rows, "micro_batch_rows": run.micro_batch_rows,
            "seed": run.seed, "learning_rates": run.learning_rates,
            "schedule": {"warmup_steps": run.recipe.warmup_steps, "decay": "linear",
                         "final_lr_fraction": run.recipe.final_lr_fraction},
            "recipe": asdict(run.recipe),
        },
        "loss_curve": curve,
        "final_val_loss": val_loss,
        "validation_tokens": validation_tokens,
        "wall_time_s": round(train_seconds + eval_seconds, 3),
        "train_time_s": round(train_seconds, 3),
        "eval_time_s": round(eval_seconds, 3),
        "hardware": {**hardware(device), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")},
        "versions": library_versions(),
        "git_commit": git_commit(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def load_record(path: Path) -> dict:
    return json.loads(Path(path).read_text())


# ---- command line ------------------------------------------------------------------------------


def run_from_args(args) -> int:
    """Train args.run of args.grid with the parsed options; return the exit status."""
    from .grids import load_grid
    from .paper_data import data_source_from_spec

    if args.threads:
        torch.set_num_threads(args.threads)
    grid = load_grid(args.grid)
    runs = {r.run_id: r for r in grid.runs()}
    if args.run not in runs:
        log.error("run %r is not in grid %r; list the runs with `isodepth plan %s`", args.run, args.grid, args.grid)
        return 2
    data = data_source_from_spec(grid.spec.get("data"), args.data_dir)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        record = train_run(runs[args.run], runs_dir=args.runs_dir, checkpoint_dir=args.checkpoint_dir,
                           device=args.device, checkpoint_every_s=args.checkpoint_every_s,
                           checkpoint_every_steps=args.checkpoint_every_steps,
                           keep_checkpoint=args.keep_checkpoint, data=data, progress=progress,
                           compile_model=args.compile, micro_batch_rows=args.micro_batch_rows,
                           eval_batch_rows=args.eval_batch_rows)
    except Preempted as stopped:
        log.warning("%s", stopped)
        return EXIT_PREEMPTED
    except (ValueError, OSError):
        raise  # bad input or a path that cannot be used: the caller prints the message
    except Exception:
        log.exception("run %s of grid %s failed", args.run, args.grid)
        return EXIT_FAILED
    if int(os.environ.get("RANK", "0")) == 0:
        summary = {k: record[k] for k in ("run_id", "status", "final_val_loss", "wall_time_s")}
        summary["tokens_per_s"] = record["throughput"]["tokens_per_s"]
        summary["mfu"] = record["throughput"]["mfu"]
        print(json.dumps(summary), flush=True)
    return 0 if record["status"] == "completed" else EXIT_DIVERGED


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m isodepth.train",
        description="Train one run of a grid; start it with torchrun for data-parallel training.",
        epilog=f"Exit status: 0 completed, {EXIT_DIVERGED} diverged, 2 invalid arguments, {EXIT_FAILED} failed "
               f"with an error, {EXIT_PREEMPTED} stopped by SIGTERM or SIGUSR1 after saving a checkpoint "
               "(rerun to resume).")
    parser.add_argument("--grid", required=True, help="grid name in data/grids (paper, micro, tiny, ...) or a YAML path")
    # torchrun's own parser rejects `--run` as an ambiguous abbreviation of its --run-path, so
    # the flag is --run-id, and --run remains for plain `python -m isodepth.train`.
    parser.add_argument("--run-id", "--run", dest="run", required=True,
                        help="run id, as printed by `isodepth plan GRID` (under torchrun write --run-id)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    add_train_options(parser)
    args = parser.parse_args(argv)

    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s %(levelname)s rank{rank} %(name)s: %(message)s")
    try:
        return run_from_args(args)
    except (ValueError, OSError) as error:
        if args.verbose:
            raise
        print(f"python -m isodepth.train: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
