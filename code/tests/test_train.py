"""The trainer on the tiny grid with a synthetic token stream: record, accumulation, divergence, resume."""

import dataclasses
import inspect
import json
import math
from importlib import metadata

import numpy as np
import pytest
import torch

from isodepth import train
from isodepth.data import TrainRows
from isodepth.grids import Variant, load_grid, plan_run
from isodepth.model import LoopedLM
from isodepth.optim import Optimizers

RUN_ID = "C2.00e09-r2-s4"  # 62 steps of a d = 16, r = 2 model, 4 rows of 32 tokens per step


def markov_stream(n_tokens: int, seed: int) -> np.ndarray:
    """A learnable stream: each token is the previous one plus 1 or 2, modulo 64, offset by 100."""
    steps = np.random.default_rng(seed).integers(1, 3, n_tokens)
    return (np.cumsum(steps) % 64 + 100).astype(np.uint16)


TRAIN_STREAM = markov_stream(33 * 600, seed=0)
VALIDATION_STREAM = markov_stream(33 * 64, seed=1)


@pytest.fixture(scope="module")
def tiny_runs():
    return {run.run_id: run for run in load_grid("tiny").runs()}


@pytest.fixture(scope="module")
def run(tiny_runs):
    return tiny_runs[RUN_ID]


def train_tiny(run, folder, **kwargs) -> dict:
    return train.train_run(run, runs_dir=folder / "runs", checkpoint_dir=folder / "checkpoints",
                           train_stream=TRAIN_STREAM, validation_stream=VALIDATION_STREAM, **kwargs)


@pytest.fixture(scope="module")
def completed(run, tmp_path_factory):
    """One uninterrupted run, with the training rows it read and the LR multipliers it set."""
    folder = tmp_path_factory.mktemp("completed")
    batches, multipliers = [], []
    original_batch, original_set_lr = TrainRows.batch, Optimizers.set_lr

    def recording_batch(self, start_row, n_rows):
        batches.append((start_row, n_rows))
        return original_batch(self, start_row, n_rows)

    def recording_set_lr(self, multiplier):
        multipliers.append(multiplier)
        return original_set_lr(self, multiplier)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TrainRows, "batch", recording_batch)
        patch.setattr(Optimizers, "set_lr", recording_set_lr)
        record = train_tiny(run, folder)
    return {"record": record, "folder": folder, "batches": batches, "multipliers": multipliers}


# ---- record ------------------------------------------------------------------------------------


def test_record_completed(completed):
    assert completed["record"]["status"] == "completed"


def test_record_finite_loss(completed):
    assert math.isfinite(completed["record"]["final_val_loss"])


def test_record_loss_learned(completed):
    """The synthetic stream is learnable, so the run ends well below the uniform ln(1024)."""
    assert completed["record"]["final_val_loss"] < math.log(1024) - 1.0


def test_record_written(completed, run):
    path = completed["folder"] / "runs" / run.grid / run.run_id / "record.json"
    assert json.loads(path.read_text()) == json.loads(json.dumps(completed["record"]))


def test_record_fields(completed):
    missing = {"record_version", "grid", "run_id", "status", "budget", "r", "size", "variant",
               "model", "accounting", "training", "loss_curve", "final_val_loss",
               "validation_tokens", "wall_time_s", "train_time_s", "eval_time_s", "hardware",
               "versions", "git_commit", "finished_at"} - set(completed["record"])
    assert missing == set()


def test_record_configuration(completed, run):
    assert completed["record"]["model"] == run.model.to_dict()


def test_record_accounting(completed, run):
    accounting = completed["record"]["accounting"]
    assert accounting["n_total"] == run.n_total
    assert accounting["n_once"] + accounting["n_rec"] == run.n_total
    assert accounting["flops_per_token"] == run.flops_per_token
    assert accounting["training_flops"] == run.flops_per_token * run.tokens


def test_record_tokens_steps(completed, run):
    training = completed["record"]["training"]
    assert training["steps"] == training["steps_done"] == run.steps
    assert training["tokens"] == training["tokens_seen"] == run.steps * 4 * 32


def test_record_schedule(completed, run):
    training = completed["record"]["training"]
    assert training["schedule"] == {"warmup_steps": 0, "decay": "linear", "final_lr_fraction": 0.1}
    assert training["learning_rates"] == run.learning_rates
    assert list(training["recipe"]["adam_betas"]) == [0.8, 0.95]
    assert training["batch_rows"] == 4


def test_record_provenance(completed):
    record = completed["record"]
    assert record["hardware"]["device"] == "cpu"
    assert record["versions"]["torch"] == metadata.version("torch")
    assert record["wall_time_s"] > 0
    assert "git_commit" in record


def test_record_loss_curve(completed, run):
    curve = completed["record"]["loss_curve"]
    steps = [step for step, _ in curve]
    assert steps[0] == 1
    assert steps[-1] == run.steps
    assert all(math.isfinite(loss) for _, loss in curve)


def test_record_validation_tokens(completed, run):
    assert completed["record"]["validation_tokens"] == run.eval_rows * 32


def test_checkpoint_removed(completed, run):
    assert not (completed["folder"] / "checkpoints" / run.grid / run.run_id / "state.pt").exists()


# ---- data and schedule as the run saw them -----------------------------------------------------


def test_reads_leading_rows(completed, run):
    """A run of n steps reads rows [0, n * batch) of the fixed order, in order, once each."""
    expected = [(step * run.batch_rows, run.batch_rows) for step in range(run.steps)]
    assert completed["batches"] == expected


def test_lr_schedule_applied(completed, run):
    multipliers = completed["multipliers"]
    assert len(multipliers) == run.steps
    assert multipliers[0] == 1.0
    assert multipliers[-1] == pytest.approx(0.1, rel=1e-12)


def test_too_few_rows_raises(run, tmp_path):
    short = TRAIN_STREAM[: 33 * (run.steps * run.batch_rows - 1)]
    with pytest.raises(ValueError, match="rows are never repeated"):
        train.train_run(run, runs_dir=tmp_path, checkpoint_dir=tmp_path, train_stream=short,
                        validation_stream=VALIDATION_STREAM)


# ---- gradient accumulation ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_batch(run, tmp_path_factory):
    assert run.micro_batch_rows * 2 == run.batch_rows  # the tiny grid accumulates two micro-batches
    return train_tiny(dataclasses.replace(run, micro_batch_rows=run.batch_rows),
                 tmp_path_factory.mktemp("full_batch"))


def test_accumulation_final_loss(completed, full_batch):
    assert abs(completed["record"]["final_val_loss"] - full_batch["final_val_loss"]) < 1e-5


def test_accumulation_curve(completed, full_batch):
    """The logged training loss is the full-batch mean either way."""
    accumulated = np.array(completed["record"]["loss_curve"])
    whole = np.array(full_batch["loss_curve"])
    assert np.array_equal(accumulated[:, 0], whole[:, 0])
    assert np.abs(accumulated[:, 1] - whole[:, 1]).max() < 1e-5


def test_accumulation_rejects_uneven(run, tmp_path):
    uneven = dataclasses.replace(run, micro_batch_rows=3)
    with pytest.raises(ValueError, match="not a multiple of micro-batch rows"):
        train_tiny(uneven, tmp_path)


# ---- divergence --------------------------------------------------------------------------------

NAN_CALL = 9  # forward call that returns NaN: step 5 with two micro-batches per step


@pytest.fixture
def diverged(run, tmp_path, monkeypatch):
    original = LoopedLM.forward
    calls = {"n": 0}

    def forward(self, idx, targets=None):
        out = original(self, idx, targets)
        if targets is not None:
            calls["n"] += 1
            if calls["n"] == NAN_CALL:
                return out * float("nan")
        return out

    monkeypatch.setattr(LoopedLM, "forward", forward)
    return train_tiny(run, tmp_path, checkpoint_every_s=0)


def test_diverged_status(diverged):
    assert diverged["status"] == "diverged"


def test_diverged_no_val_loss(diverged):
    assert diverged["final_val_loss"] is None


def test_diverged_stops_at_step(diverged):
    assert diverged["training"]["steps_done"] == (NAN_CALL - 1) // 2


def test_diverged_curve_ends_null(diverged):
    # JSON has no NaN, so the non-finite loss that stopped the run is written as null.
    assert diverged["loss_curve"][-1][1] is None


def test_diverged_record_written(diverged, run, tmp_path):
    path = tmp_path / "runs" / run.grid / run.run_id / "record.json"
    assert json.loads(path.read_text())["status"] == "diverged"


# ---- resume ------------------------------------------------------------------------------------

STOP_STEP = 20


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def resumed(run, tmp_path_factory):
    """Stop the run by an exception right after its step-20 checkpoint, then run it again."""
    folder = tmp_path_factory.mktemp("resumed")
    original_save = train._save_state

    signature = inspect.signature(original_save)

    def save_then_stop(*args, **kwargs):
        original_save(*args, **kwargs)
        step = signature.bind(*args, **kwargs).arguments["step"]
        if step == STOP_STEP:
            raise Interrupted

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "_save_state", save_then_stop)
        with pytest.raises(Interrupted):
            train_tiny(run, folder, checkpoint_every_s=0)
    state_file = folder / "checkpoints" / run.grid / run.run_id / "state.pt"
    saved_step = torch.load(state_file, weights_only=False)["step"]

    batches = []
    original_batch = TrainRows.batch

    def recording_batch(self, start_row, n_rows):
        batches.append(start_row)
        return original_batch(self, start_row, n_rows)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TrainRows, "batch", recording_batch)
        record = train_tiny(run, folder, checkpoint_every_s=0)
    return {"record": record, "saved_step": saved_step, "batches": batches, "state_file": state_file}


def test_resume_checkpoint_step(resumed):
    assert resumed["saved_step"] == STOP_STEP


def test_resume_continues_rows(resumed, run):
    assert resumed["batches"][0] == STOP_STEP * run.batch_rows
    assert len(resumed["batches"]) == run.steps - STOP_STEP


def test_resume_final_loss(resumed, completed):
    assert resumed["record"]["final_val_loss"] == pytest.approx(
        completed["record"]["final_val_loss"], abs=1e-6)


def test_resume_curve(resumed, completed):
    assert resumed["record"]["loss_curve"] == completed["record"]["loss_curve"]


def test_resume_steps_done(resumed, run):
    assert resumed["record"]["training"]["steps_done"] == run.steps


def test_resume_checkpoint_removed(resumed):
    assert not resumed["state_file"].exists()


# ---- variants and defaults ---------------------------------------------------------------------


@pytest.mark.parametrize("variant", [Variant("tbptt", "linear", True),
                                     Variant("hyper", "hyperconnections", False)])
def test_variant_run_completes(tiny_runs, tmp_path, variant):
    grid = load_grid("tiny")
    planned = plan_run(grid, 2.0e9, 4, 6, variant)
    record = train_tiny(planned, tmp_path)
    assert record["status"] == "completed"
    assert math.isfinite(record["final_val_loss"])


def test_default_paths_isolated(run, runs_dir, checkpoint_dir):
    """Without runs_dir the record lands in the test's temporary runs folder."""
    assert train.record_path(run) == runs_dir / run.grid / run.run_id / "record.json"
    assert train.checkpoint_path(run) == checkpoint_dir / run.grid / run.run_id / "state.pt"
