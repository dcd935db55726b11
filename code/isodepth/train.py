"""Train one planned run and write its run record.

The run reads the fixed training stream from its first row, follows the recipe's schedule to
its own last step, measures the mean validation loss in nats on the validation split and writes
data/runs/<grid>/<run_id>/record.json atomically. Checkpoints (weights, optimiser, RNG, step)
go to checkpoints/<grid>/<run_id>/ so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch

from . import paths
from .checkpoint import save_checkpoint
from .data import TrainRows, token_stream, validation_rows
from .grids import PlannedRun
from .io import atomic_write_json
from .model import LoopedLM
from .optim import build_optimizers, lr_multiplier
from .provenance import git_commit, hardware, library_versions

log = logging.getLogger(__name__)

RECORD_VERSION = 1
LOG_EVERY_STEPS = 10


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


@torch.no_grad()
def evaluate_loss(model: LoopedLM, rows: torch.Tensor, device: torch.device,
                  batch_rows: int = 32) -> float:
    """Token-weighted mean cross-entropy in nats over all rows (inputs row[:-1], targets row[1:])."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_rows):
        chunk = rows[start : start + batch_rows].to(device)
        with autocast_context(device):
            logits = model(chunk[:, :-1])
        loss = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), chunk[:, 1:].reshape(-1), reduction="sum")
        total += loss.item()
        count += chunk[:, 1:].numel()
    model.train()
    return total / count


def plan_fingerprint(run: PlannedRun) -> str:
    """Hash of everything that shapes a run, so a checkpoint of a changed plan is never resumed."""
    import hashlib

    plan = {"model": run.model.to_dict(), "steps": run.steps, "batch_rows": run.batch_rows,
            "micro_batch_rows": run.micro_batch_rows, "learning_rates": run.learning_rates,
            "recipe": asdict(run.recipe), "seed": run.seed}
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()


def _save_state(path: Path, run: PlannedRun, model, optimizers, step: int, curve: list,
                elapsed: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({
        "plan": plan_fingerprint(run),
        "model": model.state_dict(),
        "optimizers": optimizers.state_dict(),
        "step": step,
        "curve": curve,
        "elapsed_s": elapsed,
        "rng": torch.get_rng_state(),
    }, tmp)
    tmp.replace(path)


def train_run(run: PlannedRun, *, runs_dir: Path | None = None, checkpoint_dir: Path | None = None,
              device: str | torch.device = "cpu", checkpoint_every_s: float = 120.0,
              keep_checkpoint: bool = False, train_stream=None, validation_stream=None,
              progress: bool = False) -> dict:
    """Train one run to its last step (resuming from a checkpoint if one exists); return the record."""
    device = torch.device(device)
    out = record_path(run, runs_dir)
    state_file = checkpoint_path(run, checkpoint_dir)

    train_stream = token_stream("train") if train_stream is None else train_stream
    validation_stream = token_stream("validation") if validation_stream is None else validation_stream
    train_rows = TrainRows(train_stream, run.model.seq_len)
    needed_rows = run.steps * run.batch_rows
    if needed_rows > len(train_rows):
        raise ValueError(
            f"run {run.run_id} needs {needed_rows} training rows ({run.tokens} tokens) but the corpus "
            f"packs {len(train_rows)}; reduce the budget or the batch, because rows are never repeated"
        )
    if run.batch_rows % run.micro_batch_rows:
        raise ValueError(f"run {run.run_id}: batch rows {run.batch_rows} is not a multiple of "
                         f"micro-batch rows {run.micro_batch_rows}")
    accumulation = run.batch_rows // run.micro_batch_rows

    torch.manual_seed(run.seed)
    model = LoopedLM(run.model).to(device)
    optimizers = build_optimizers(model, run.recipe, run.learning_rates)

    step, curve, elapsed = 0, [], 0.0
    if state_file.exists():
        state = torch.load(state_file, map_location=device, weights_only=True)
        if state.get("plan") != plan_fingerprint(run):
            raise RuntimeError(
                f"checkpoint {state_file} belongs to a different plan of run {run.run_id} (the grid "
                "changed since it was written); delete it to start the run from scratch")
        model.load_state_dict(state["model"])
        optimizers.load_state_dict(state["optimizers"])
        torch.set_rng_state(state["rng"])
        step, curve, elapsed = state["step"], state["curve"], state["elapsed_s"]
        log.info("%s: resuming at step %d of %d", run.run_id, step, run.steps)

    status = "completed"
    started = time.perf_counter() - elapsed
    last_save = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=run.steps, initial=step, desc=run.run_id, leave=False)

    while step < run.steps:
        optimizers.set_lr(lr_multiplier(step, run.steps, run.recipe.final_lr_fraction,
                                        run.recipe.warmup_steps))
        inputs, targets = train_rows.batch(step * run.batch_rows, run.batch_rows)
        step_loss = 0.0
        for micro in range(accumulation):
            part = slice(micro * run.micro_batch_rows, (micro + 1) * run.micro_batch_rows)
            with autocast_context(device):
                loss = model(inputs[part].to(device), targets[part].to(device))
            # Equal-sized micro-batches: the mean of their means is the full-batch mean.
            (loss / accumulation).backward()
            step_loss += loss.item() / accumulation
        if not math.isfinite(step_loss):
            status = "diverged"
            curve.append([step, None])  # JSON has no NaN; null marks the non-finite loss
            log.warning("%s: non-finite training loss %s at step %d; stopping", run.run_id, step_loss, step)
            break
        optimizers.step()
        optimizers.zero_grad()
        step += 1
        if step % LOG_EVERY_STEPS == 0 or step == run.steps or step == 1:
            curve.append([step, round(step_loss, 6)])
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}")
        if time.perf_counter() - last_save > checkpoint_every_s and step < run.steps:
            _save_state(state_file, run, model, optimizers, step, curve, time.perf_counter() - started)
            last_save = time.perf_counter()
    if bar is not None:
        bar.close()

    train_seconds = time.perf_counter() - started
    val_loss = None
    if status == "completed":
        rows = validation_rows(validation_stream, run.model.seq_len)
        if run.eval_rows is not None:
            rows = rows[: run.eval_rows]
        eval_start = time.perf_counter()
        val_loss = evaluate_loss(model, rows, device)
        eval_seconds = time.perf_counter() - eval_start
        if not math.isfinite(val_loss):
            status = "diverged"
        validation_tokens = int(rows[:, 1:].numel())
    else:
        eval_seconds, validation_tokens = 0.0, 0

    record = build_record(run, status=status, steps_done=step, curve=curve, val_loss=val_loss,
                          validation_tokens=validation_tokens, train_seconds=train_seconds,
                          eval_seconds=eval_seconds, device=device)
    atomic_write_json(out, record)
    if keep_checkpoint and status == "completed":
        save_checkpoint(model, final_checkpoint_dir(run, checkpoint_dir), {
            "run_id": run.run_id, "grid": run.grid, "recurrences": run.r,
            "final_val_loss": val_loss, "accounting": record["accounting"],
            "tokenizer": "data/corpus/tokenizer.json"})
    if state_file.exists():
        state_file.unlink()
    log.info("%s: %s, validation loss %s nats, %.1f s", run.run_id, status,
             f"{val_loss:.4f}" if val_loss is not None else "n/a", train_seconds)
    return record


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
        "hardware": hardware(device),
        "versions": library_versions(),
        "git_commit": git_commit(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def load_record(path: Path) -> dict:
    return json.loads(Path(path).read_text())
