"""Sweep launchers on the tiny grid: dry runs, the CPU pool, one run per (fake) GPU, and SLURM via submitit."""

import argparse
import json
import os
import signal
import stat
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from isodepth import launchers, sweep, train
from isodepth.grids import load_grid
from isodepth.launchers import MultiGpuLauncher, SlurmLauncher, SlurmSettings, TrainOptions
from isodepth.paper_data import PrepackedData
from prepacked_fixture import write_tiny_prepacked

RUN_A = "C2.00e09-r1-s8"  # 22 steps
RUN_B = "C2.00e09-r2-s8"  # 21 steps
RUN_LONG = "C4.00e09-r2-s4"  # 123 steps: long enough to preempt
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_tiny_prepacked(tmp_path_factory.mktemp("shards"))


def tiny_runs() -> dict:
    return {r.run_id: r for r in load_grid("tiny").runs()}


def parse_sweep(argv: list[str]):
    parser = argparse.ArgumentParser()
    sweep.add_sweep_arguments(parser)
    return parser.parse_args(argv)


def read_record(runs_dir: Path, run_id: str) -> dict:
    return json.loads((runs_dir / "tiny" / run_id / "record.json").read_text())


# ---- dry runs and settings ---------------------------------------------------------------------


def dry_run_output(capsys, argv) -> tuple[dict, list[str]]:
    assert sweep.sweep_command(parse_sweep(argv)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# launcher ")
    return json.loads(lines[0].removeprefix("# launcher ")), lines[1:]


def test_dry_run_lists_unfinished(capsys):
    _, run_ids = dry_run_output(capsys, ["tiny", "--dry-run"])
    assert run_ids == [r.run_id for r in load_grid("tiny").runs()]


def test_dry_run_skips_finished(capsys, runs_dir):
    path = runs_dir / "tiny" / RUN_A / "record.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"status": "completed"}))
    _, run_ids = dry_run_output(capsys, ["tiny", "--dry-run"])
    assert RUN_A not in run_ids
    assert len(run_ids) == len(load_grid("tiny").runs()) - 1


def test_dry_run_slurm_settings(capsys):
    settings, run_ids = dry_run_output(capsys, [
        "tiny", "--dry-run", "--launcher", "slurm", "--slurm-partition", "gpu", "--gpus-per-run", "4",
        "--slurm-time-min", "600", "--slurm-option", "reservation=abc", "--runs", RUN_A])
    assert run_ids == [RUN_A]
    assert settings["launcher"] == "slurm"
    assert settings["partition"] == "gpu"
    assert settings["gpus_per_run"] == settings["ranks_per_run"] == 4
    assert settings["time_min"] == 600
    assert settings["additional"] == {"reservation": "abc"}
    assert settings["device"] == "cuda"


def test_dry_run_multi_gpu_slots(capsys):
    settings, _ = dry_run_output(capsys, ["tiny", "--dry-run", "--launcher", "multi-gpu",
                                          "--gpus", "0,1,2,3", "--gpus-per-run", "2"])
    assert settings["slots"] == ["0,1", "2,3"]


def test_dry_run_starts_nothing(capsys, runs_dir):
    dry_run_output(capsys, ["tiny", "--dry-run", "--launcher", "local"])
    assert not (runs_dir / "tiny").exists()


def test_unknown_launcher_raises():
    with pytest.raises(ValueError, match="launcher 'cloud' is unknown"):
        sweep.make_launcher("cloud")


def test_multi_gpu_without_gpus_raises(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ValueError, match="found no GPU"):
        sweep.make_launcher("multi-gpu")


def test_multi_gpu_too_few_gpus_raises():
    with pytest.raises(ValueError, match="cannot host a run of 2 GPUs"):
        MultiGpuLauncher(gpus=("0",), gpus_per_run=2)


def test_multi_gpu_torchrun_command():
    command = MultiGpuLauncher(gpus=("0", "1"), gpus_per_run=2).command("tiny", RUN_A, TrainOptions(device="cuda"))
    assert command[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    assert command[command.index("--run-id") + 1] == RUN_A


def test_slurm_option_needs_key_value():
    with pytest.raises(ValueError, match="is not KEY=VALUE"):
        sweep.sweep_command(parse_sweep(["tiny", "--launcher", "slurm", "--slurm-option", "reservation"]))


def test_train_options_round_trip():
    """The flags a launcher passes parse back into the same settings in `python -m isodepth.train`."""
    options = TrainOptions(device="cuda", compile_model=True, data_dir="/data/shards", checkpoint_every_s=30.0,
                           checkpoint_every_steps=50, micro_batch_rows=8, eval_batch_rows=4, runs_dir="/r",
                           checkpoint_dir="/c")
    parser = argparse.ArgumentParser()
    train.add_train_options(parser)
    args = parser.parse_args(options.cli_args())
    assert (args.device, args.compile, str(args.data_dir)) == ("cuda", True, "/data/shards")
    assert (args.checkpoint_every_s, args.checkpoint_every_steps, args.micro_batch_rows) == (30.0, 50, 8)
    assert args.eval_batch_rows == 4
    assert (str(args.runs_dir), str(args.checkpoint_dir), args.keep_checkpoint) == ("/r", "/c", True)


# ---- local launchers ---------------------------------------------------------------------------


def test_local_pool_trains(shards, tmp_path):
    results = sweep.run_sweep("tiny", only=[RUN_A], workers=1, threads_per_worker=1,
                              runs_dir=tmp_path / "runs", checkpoint_dir=tmp_path / "checkpoints",
                              options=TrainOptions(data_dir=str(shards)))
    assert results == {RUN_A: "completed"}
    assert read_record(tmp_path / "runs", RUN_A)["data"]["kind"] == "parquet"


def test_sweep_command_writes_to_the_given_folders(shards, tmp_path):
    argv = ["tiny", "--runs", RUN_A, "--workers", "1", "--threads", "1", "--data-dir", str(shards),
            "--runs-dir", str(tmp_path / "runs"), "--checkpoint-dir", str(tmp_path / "checkpoints")]
    assert sweep.sweep_command(parse_sweep(argv)) == 0
    assert read_record(tmp_path / "runs", RUN_A)["status"] == "completed"
    assert (tmp_path / "checkpoints" / "tiny" / RUN_A / "final" / "model.safetensors").exists()
    assert sweep.select_runs("tiny", [RUN_A], runs_dir=tmp_path / "runs") == []


@pytest.fixture(scope="module")
def multi_gpu(shards, tmp_path_factory):
    """Two runs on two fake GPU ids, on CPU: CUDA_VISIBLE_DEVICES gives each process its own id."""
    folder = tmp_path_factory.mktemp("multi_gpu")
    results = sweep.run_sweep("tiny", only=[RUN_A, RUN_B], launcher="multi-gpu", gpus=["0", "1"],
                              threads_per_worker=1, device="cpu", runs_dir=folder / "runs",
                              checkpoint_dir=folder / "checkpoints", options=TrainOptions(data_dir=str(shards)))
    return {"results": results, "folder": folder}


def test_multi_gpu_completed(multi_gpu):
    assert multi_gpu["results"] == {RUN_A: "completed", RUN_B: "completed"}


def test_multi_gpu_one_gpu_each(multi_gpu):
    seen = {read_record(multi_gpu["folder"] / "runs", run_id)["hardware"]["cuda_visible_devices"]
            for run_id in (RUN_A, RUN_B)}
    assert seen == {"0", "1"}


def test_multi_gpu_keeps_final_weights(multi_gpu):
    assert (multi_gpu["folder"] / "checkpoints" / "tiny" / RUN_A / "final" / "model.safetensors").exists()


# ---- SLURM through submitit --------------------------------------------------------------------


def test_slurm_debug_executor(shards, tmp_path):
    settings = SlurmSettings(cluster="debug", folder=str(tmp_path / "slurm"), gpus_per_run=0, cpus_per_task=1,
                             wait=True)
    results = sweep.run_sweep("tiny", only=[RUN_A, RUN_B], launcher="slurm", slurm=settings,
                              runs_dir=tmp_path / "runs", checkpoint_dir=tmp_path / "checkpoints",
                              options=TrainOptions(data_dir=str(shards)))
    assert results == {RUN_A: "completed", RUN_B: "completed"}
    ledger = json.loads((tmp_path / "slurm" / "submitted.json").read_text())
    assert sorted(ledger) == [RUN_A, RUN_B]


def test_slurm_not_waiting_reports_submitted(shards, tmp_path):
    settings = SlurmSettings(cluster="debug", folder=str(tmp_path / "slurm"), gpus_per_run=0)
    results = sweep.run_sweep("tiny", only=[RUN_A], launcher="slurm", slurm=settings,
                              runs_dir=tmp_path / "runs", options=TrainOptions(data_dir=str(shards)))
    assert results == {RUN_A: "submitted"}


def test_slurm_skips_live_jobs(tmp_path, monkeypatch):
    launcher = SlurmLauncher(SlurmSettings(folder=str(tmp_path)))
    (tmp_path / "submitted.json").write_text(json.dumps({RUN_A: "100_0", RUN_B: "100_1"}))
    states = {"100_0": "RUNNING", "100_1": "FAILED"}
    monkeypatch.setattr(launchers, "slurm_job_state", lambda folder, job_id: states[job_id])
    assert launcher.active_runs("tiny", SimpleNamespace(cluster="slurm")) == {RUN_A}


FAKE_SBATCH = """#!/bin/sh
# Stand-in for sbatch: keep the submitted script and report a job id as sbatch does.
for last; do :; done
cp "$last" "{log}/submitted.sh"
echo "Submitted batch job 4242"
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """srun and sbatch stand-ins on PATH, so submitit's SLURM executor writes a real sbatch script."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH.format(log=tmp_path)), ("srun", "#!/bin/sh\nexit 0\n")):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path


def test_slurm_array_script(fake_slurm):
    settings = SlurmSettings(cluster="slurm", folder=str(fake_slurm / "slurm"), partition="gpu", time_min=600,
                             gpus_per_run=2, cpus_per_task=6, array_parallelism=1, signal_delay_s=90,
                             setup=("module load cuda",), additional={"reservation": "abc"})
    runs = [tiny_runs()[RUN_A], tiny_runs()[RUN_B]]
    skipped, submitted = SlurmLauncher(settings).submit("tiny", runs, TrainOptions(device="cuda"))
    script = (fake_slurm / "submitted.sh").read_text()
    assert [job.job_id for _, job in submitted] == ["4242_0", "4242_1"]
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=600", "#SBATCH --gpus-per-node=2",
                 "#SBATCH --ntasks-per-node=2", "#SBATCH --cpus-per-task=6", "#SBATCH --array=0-1%1",
                 "#SBATCH --signal=USR2@90", "#SBATCH --reservation=abc", "module load cuda"):
        assert line in script


def _descendants(pid: int) -> list[int]:
    children_file = Path(f"/proc/{pid}/task/{pid}/children")
    children = [int(c) for c in children_file.read_text().split()] if children_file.exists() else []
    return children + [d for c in children for d in _descendants(c)]


def _task_pid(controller_pid: int) -> int | None:
    for pid in _descendants(controller_pid):
        try:
            if b"submitit.core._submit" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    return None


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the job's process through /proc")
def test_slurm_local_preempt_requeue(shards, tmp_path):
    """SIGUSR2 (SLURM's preemption signal) mid-run: checkpoint, requeue, resume, same final loss."""
    run = tiny_runs()[RUN_LONG]
    reference = train.train_run(run, runs_dir=tmp_path / "reference", checkpoint_dir=tmp_path / "reference",
                                data=PrepackedData(shards))

    settings = SlurmSettings(cluster="local", folder=str(tmp_path / "slurm"), gpus_per_run=0, cpus_per_task=1)
    options = TrainOptions(data_dir=str(shards), checkpoint_every_steps=5, runs_dir=str(tmp_path / "runs"),
                           checkpoint_dir=str(tmp_path / "checkpoints"))
    _, submitted = SlurmLauncher(settings).submit("tiny", [run], options)
    _, job = submitted[0]
    state = tmp_path / "checkpoints" / "tiny" / RUN_LONG / "state.pt"
    deadline = time.monotonic() + TIMEOUT_S
    while not state.exists():
        assert not job.done(), f"the job ended before its first checkpoint:\n{job.stderr()}"
        assert time.monotonic() < deadline, "no checkpoint appeared in time"
        time.sleep(0.01)
    task = _task_pid(job._process.pid)
    assert task is not None
    os.kill(task, signal.SIGUSR2)

    summary = job.result()
    log = job.stdout() + (job.stderr() or "")
    assert summary["status"] == "completed"
    assert "stop signal received; saved a checkpoint" in log
    assert "resuming at step" in log
    assert read_record(tmp_path / "runs", RUN_LONG)["final_val_loss"] == reference["final_val_loss"]


def test_slurm_local_two_ranks(shards, tmp_path, monkeypatch):
    """An array task of two CPU ranks (gloo) trains like one process at the same global batch."""
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    run = tiny_runs()[RUN_A]
    reference = train.train_run(run, runs_dir=tmp_path / "reference", checkpoint_dir=tmp_path / "reference",
                                data=PrepackedData(shards))
    settings = SlurmSettings(cluster="local", folder=str(tmp_path / "slurm"), gpus_per_run=0, ranks_per_run=2,
                             cpus_per_task=1, wait=True)
    results = sweep.run_sweep("tiny", only=[RUN_A], launcher="slurm", slurm=settings, runs_dir=tmp_path / "runs",
                              checkpoint_dir=tmp_path / "checkpoints", options=TrainOptions(data_dir=str(shards)))
    assert results == {RUN_A: "completed"}
    record = read_record(tmp_path / "runs", RUN_A)
    assert record["parallelism"]["world_size"] == 2
    assert abs(record["final_val_loss"] - reference["final_val_loss"]) < 1e-5


def test_slurm_without_srun_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    launcher = SlurmLauncher(SlurmSettings(folder=str(tmp_path / "slurm")))
    with pytest.raises(RuntimeError, match="--slurm-cluster local"):
        launcher.executor("tiny")
