"""Exact resumption: a run killed with SIGKILL or stopped by SIGTERM / SIGUSR1 ends as if never stopped."""

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from isodepth import train
from isodepth.grids import load_grid
from prepacked_fixture import tiny_streams, write_tiny_prepacked

RUN_ID = "C4.00e09-r2-s4"  # 123 steps of a d = 16, r = 2 model: long enough to interrupt
CHECKPOINT_EVERY = 5
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_tiny_prepacked(tmp_path_factory.mktemp("shards"))


def command(shards, folder, *extra) -> list[str]:
    return [sys.executable, "-m", "isodepth.train", "--grid", "tiny", "--run-id", RUN_ID, "--threads", "1",
            "--data-dir", str(shards), "--runs-dir", str(folder / "runs"),
            "--checkpoint-dir", str(folder / "checkpoints"), "--no-progress", *extra]


def environment() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")


def state_file(folder):
    return folder / "checkpoints" / "tiny" / RUN_ID / "state.pt"


def record(folder) -> dict:
    return json.loads((folder / "runs" / "tiny" / RUN_ID / "record.json").read_text())


def start_and_wait_for_checkpoint(shards, folder, *extra) -> subprocess.Popen:
    """Start a run and return once its first checkpoint exists (it is then inside the training loop)."""
    process = subprocess.Popen(command(shards, folder, *extra), env=environment(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + TIMEOUT_S
    while not state_file(folder).exists():
        if process.poll() is not None:
            raise AssertionError(f"the run exited with {process.returncode} before its first checkpoint:\n"
                                 f"{process.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("no checkpoint appeared in time")
        time.sleep(0.01)
    return process


def finish(shards, folder) -> subprocess.CompletedProcess:
    done = subprocess.run(command(shards, folder, "--checkpoint-every-steps", str(CHECKPOINT_EVERY)),
                          env=environment(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def uninterrupted(shards, tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted")
    finish(shards, folder)
    return record(folder)


@pytest.fixture(scope="module")
def killed(shards, tmp_path_factory):
    """SIGKILL right after the first checkpoint, a junk temporary file left behind, then a restart."""
    folder = tmp_path_factory.mktemp("killed")
    process = start_and_wait_for_checkpoint(shards, folder, "--checkpoint-every-steps", str(CHECKPOINT_EVERY))
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=TIMEOUT_S)
    saved_step = torch.load(state_file(folder), weights_only=True)["step"]
    state_file(folder).with_name("state.pt.tmp").write_bytes(b"partial write")
    had_record = (folder / "runs" / "tiny" / RUN_ID / "record.json").exists()
    done = finish(shards, folder)
    return {"returncode": process.returncode, "had_record": had_record, "saved_step": saved_step,
            "record": record(folder), "log": done.stderr, "folder": folder}


def test_kill_interrupted_run(killed):
    assert killed["returncode"] == -signal.SIGKILL
    assert not killed["had_record"]


def test_kill_resumed_from_checkpoint(killed):
    assert killed["saved_step"] % CHECKPOINT_EVERY == 0
    assert f"resuming at step {killed['saved_step']}" in killed["log"]


def test_kill_final_loss_bitwise(killed, uninterrupted):
    assert killed["record"]["final_val_loss"] == uninterrupted["final_val_loss"]


def test_kill_loss_curve(killed, uninterrupted):
    assert killed["record"]["loss_curve"] == uninterrupted["loss_curve"]


def test_kill_tokens_seen(killed, uninterrupted):
    assert killed["record"]["training"]["tokens_seen"] == uninterrupted["training"]["tokens_seen"]


def test_kill_checkpoint_removed(killed):
    assert not state_file(killed["folder"]).exists()


@pytest.fixture(scope="module")
def terminated(shards, tmp_path_factory):
    """SIGTERM during training: the run saves at the end of its step and exits with status 75."""
    folder = tmp_path_factory.mktemp("terminated")
    process = start_and_wait_for_checkpoint(shards, folder, "--checkpoint-every-steps", str(CHECKPOINT_EVERY),
                                            "--checkpoint-every-s", "inf")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=TIMEOUT_S)
    state = torch.load(state_file(folder), weights_only=True)
    had_record = (folder / "runs" / "tiny" / RUN_ID / "record.json").exists()
    finish(shards, folder)
    return {"returncode": process.returncode, "log": stderr, "state": state, "had_record": had_record,
            "record": record(folder)}


def test_sigterm_exit_status(terminated):
    assert terminated["returncode"] == train.EXIT_PREEMPTED, terminated["log"][-3000:]


def test_sigterm_saves_checkpoint(terminated):
    step = terminated["state"]["step"]
    assert f"saved a checkpoint at step {step} of" in terminated["log"]


def test_sigterm_no_record(terminated):
    assert not terminated["had_record"]


def test_sigterm_final_loss_bitwise(terminated, uninterrupted):
    assert terminated["record"]["final_val_loss"] == uninterrupted["final_val_loss"]


# ---- in-process: SIGUSR1, handler chaining, checkpoint cadence ---------------------------------

SIGNAL_AT_STEP = 7


@pytest.fixture
def tiny_run():
    return {r.run_id: r for r in load_grid("tiny").runs()}["C2.00e09-r2-s4"]


def train_tiny(run, folder, **kwargs) -> dict:
    train_stream, val_stream = tiny_streams()
    return train.train_run(run, runs_dir=folder / "runs", checkpoint_dir=folder / "checkpoints",
                           train_stream=train_stream, validation_stream=val_stream, **kwargs)


def signal_at_step(monkeypatch, signum, at_step):
    """Send `signum` to this process while step `at_step` is running."""
    original = train.lr_multiplier

    def multiplier(step, *args):
        if step == at_step:
            os.kill(os.getpid(), signum)
        return original(step, *args)

    monkeypatch.setattr(train, "lr_multiplier", multiplier)


def test_sigusr1_stops_after_step(tiny_run, tmp_path, monkeypatch):
    signal_at_step(monkeypatch, signal.SIGUSR1, SIGNAL_AT_STEP)
    with pytest.raises(train.Preempted) as stopped:
        train_tiny(tiny_run, tmp_path, checkpoint_every_s=math.inf)
    assert stopped.value.step == SIGNAL_AT_STEP + 1
    assert stopped.value.signum == signal.SIGUSR1
    saved = torch.load(tmp_path / "checkpoints" / "tiny" / tiny_run.run_id / "state.pt", weights_only=True)
    assert saved["step"] == SIGNAL_AT_STEP + 1
    assert saved["rows_consumed"] == (SIGNAL_AT_STEP + 1) * tiny_run.batch_rows


def test_sigusr1_resume_matches(tiny_run, tmp_path, monkeypatch):
    reference = train_tiny(tiny_run, tmp_path / "reference")
    with monkeypatch.context() as patch:
        signal_at_step(patch, signal.SIGUSR1, SIGNAL_AT_STEP)
        with pytest.raises(train.Preempted):
            train_tiny(tiny_run, tmp_path / "stopped", checkpoint_every_s=math.inf)
    resumed = train_tiny(tiny_run, tmp_path / "stopped")
    assert resumed["final_val_loss"] == reference["final_val_loss"]
    assert resumed["loss_curve"] == reference["loss_curve"]


def test_previous_handler_chained_and_restored(tiny_run, tmp_path, monkeypatch):
    """A launcher's handler (submitit's, on SLURM) runs after the checkpoint and comes back afterwards."""
    calls = []
    state = tmp_path / "checkpoints" / "tiny" / tiny_run.run_id / "state.pt"

    def launcher_handler(signum, frame):
        calls.append((signum, state.exists()))

    previous = signal.signal(signal.SIGUSR1, launcher_handler)
    try:
        signal_at_step(monkeypatch, signal.SIGUSR1, SIGNAL_AT_STEP)
        with pytest.raises(train.Preempted):
            train_tiny(tiny_run, tmp_path, checkpoint_every_s=math.inf)
        assert calls == [(signal.SIGUSR1, True)]
        assert signal.getsignal(signal.SIGUSR1) is launcher_handler
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_handlers_restored_after_run(tiny_run, tmp_path):
    before = {s: signal.getsignal(s) for s in train.STOP_SIGNALS}
    train_tiny(tiny_run, tmp_path)
    assert {s: signal.getsignal(s) for s in train.STOP_SIGNALS} == before


def test_checkpoint_every_steps(tiny_run, tmp_path, monkeypatch):
    saved = []
    original = train._save_state

    def recording_save(target, model, optimizers, step, curve, elapsed):
        saved.append(step)
        original(target, model, optimizers, step, curve, elapsed)

    monkeypatch.setattr(train, "_save_state", recording_save)
    train_tiny(tiny_run, tmp_path, checkpoint_every_s=math.inf, checkpoint_every_steps=20)
    assert saved == [20, 40, 60]  # 62 steps; no checkpoint at the last step


def test_checkpoint_of_other_plan_rejected(tiny_run, tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        signal_at_step(patch, signal.SIGUSR1, 3)
        with pytest.raises(train.Preempted):
            train_tiny(tiny_run, tmp_path, checkpoint_every_s=math.inf)
    changed = dataclasses.replace(tiny_run, seed=tiny_run.seed + 1)
    with pytest.raises(RuntimeError, match="different plan"):
        train_tiny(changed, tmp_path)


def test_resume_with_other_micro_batch(tiny_run, tmp_path, monkeypatch):
    """The data position is global, so a resumed run may use another micro-batch size."""
    reference = train_tiny(tiny_run, tmp_path / "reference")
    with monkeypatch.context() as patch:
        signal_at_step(patch, signal.SIGUSR1, SIGNAL_AT_STEP)
        with pytest.raises(train.Preempted):
            train_tiny(tiny_run, tmp_path / "stopped", checkpoint_every_s=math.inf)
    resumed = train_tiny(tiny_run, tmp_path / "stopped", micro_batch_rows=tiny_run.batch_rows)
    assert abs(resumed["final_val_loss"] - reference["final_val_loss"]) < 1e-5
