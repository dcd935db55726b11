"""Data-parallel training on CPU (gloo, 2 processes) against one process at the same global batch."""

import dataclasses
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from isodepth import train
from isodepth.data import TrainRows
from isodepth.distributed import DistributedContext, init_distributed, local_device
from isodepth.grids import load_grid
from isodepth.hardware import PeakFlops, mfu, peak_flops
from prepacked_fixture import tiny_streams, write_tiny_prepacked

RUN_ID = "C2.00e09-r2-s4"  # 62 steps, 4 rows per step in micro-batches of 2
TOLERANCE = 1e-5  # fp32 on CPU: only the order of the gradient sums differs


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tiny_run(micro_batch_rows: int | None = None):
    run = {r.run_id: r for r in load_grid("tiny").runs()}[RUN_ID]
    return dataclasses.replace(run, micro_batch_rows=micro_batch_rows) if micro_batch_rows else run


def _rank_main(rank: int, world_size: int, port: int, folder: str, micro_batch_rows: int | None) -> None:
    """One rank of the spawned world: train the tiny run and write the rows it read."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    read = []
    original = TrainRows.batch

    def recording_batch(self, start_row, n_rows):
        read.append([start_row, n_rows])
        return original(self, start_row, n_rows)

    TrainRows.batch = recording_batch
    train_stream, val_stream = tiny_streams()
    run = tiny_run()
    record = train.train_run(run, runs_dir=f"{folder}/runs", checkpoint_dir=f"{folder}/checkpoints",
                             train_stream=train_stream, validation_stream=val_stream,
                             micro_batch_rows=micro_batch_rows, checkpoint_every_s=float("inf"))
    with open(f"{folder}/rank{rank}.json", "w") as handle:
        json.dump({"read": read, "record": record}, handle)


def spawn_world(folder, world_size: int = 2, micro_batch_rows: int | None = None) -> list[dict]:
    mp.spawn(_rank_main, args=(world_size, free_port(), str(folder), micro_batch_rows),
             nprocs=world_size, join=True)
    return [json.loads((folder / f"rank{rank}.json").read_text()) for rank in range(world_size)]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The run in one process: 4 rows per step, accumulated over two micro-batches of 2."""
    folder = tmp_path_factory.mktemp("single")
    train_stream, val_stream = tiny_streams()
    return train.train_run(tiny_run(), runs_dir=folder, checkpoint_dir=folder,
                           train_stream=train_stream, validation_stream=val_stream)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """2 ranks x micro-batch 2 x 1 accumulation step."""
    folder = tmp_path_factory.mktemp("two_ranks")
    return {"ranks": spawn_world(folder), "folder": folder}


@pytest.fixture(scope="module")
def two_ranks_accumulating(tmp_path_factory):
    """2 ranks x micro-batch 1 x 2 accumulation steps (DDP skips the all-reduce on the first)."""
    folder = tmp_path_factory.mktemp("accumulating")
    return {"ranks": spawn_world(folder, micro_batch_rows=1), "folder": folder}


def test_ddp_final_loss(two_ranks, single):
    loss = two_ranks["ranks"][0]["record"]["final_val_loss"]
    assert abs(loss - single["final_val_loss"]) < TOLERANCE


def test_ddp_ranks_agree(two_ranks):
    losses = [rank["record"]["final_val_loss"] for rank in two_ranks["ranks"]]
    assert losses[0] == losses[1]


def test_ddp_loss_curve(two_ranks, single):
    curve = two_ranks["ranks"][0]["record"]["loss_curve"]
    assert [s for s, _ in curve] == [s for s, _ in single["loss_curve"]]
    assert max(abs(a - b) for (_, a), (_, b) in zip(curve, single["loss_curve"])) < TOLERANCE


def test_ddp_accumulation_final_loss(two_ranks_accumulating, single):
    loss = two_ranks_accumulating["ranks"][0]["record"]["final_val_loss"]
    assert abs(loss - single["final_val_loss"]) < TOLERANCE


def test_ddp_accumulation_recorded(two_ranks_accumulating):
    assert two_ranks_accumulating["ranks"][0]["record"]["parallelism"] == {
        "world_size": 2, "micro_batch_rows": 1, "accumulation_steps": 2}


def test_ddp_ranks_read_disjoint_halves(two_ranks):
    run = tiny_run()
    for rank, result in enumerate(two_ranks["ranks"]):
        expected = [[step * run.batch_rows + rank * 2, 2] for step in range(run.steps)]
        assert result["read"] == expected


def test_ddp_record_from_rank0(two_ranks):
    run = tiny_run()
    path = two_ranks["folder"] / "runs" / run.grid / run.run_id / "record.json"
    assert json.loads(path.read_text())["parallelism"]["world_size"] == 2


def test_ddp_validation_tokens(two_ranks, single):
    """Ranks evaluate disjoint chunks; the reduced count is the whole evaluation slice."""
    assert two_ranks["ranks"][1]["record"]["validation_tokens"] == single["validation_tokens"]


def test_torchrun_cli(tmp_path, single):
    """`torchrun --nproc_per_node 2 -m isodepth.train` on parquet shards of the same rows."""
    shards = write_tiny_prepacked(tmp_path / "shards")
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               "-m", "isodepth.train", "--grid", "tiny", "--run-id", RUN_ID, "--threads", "1",
               "--data-dir", str(shards), "--runs-dir", str(tmp_path / "runs"),
               "--checkpoint-dir", str(tmp_path / "checkpoints"), "--no-progress"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "runs" / "tiny" / RUN_ID / "record.json").read_text())
    assert record["parallelism"]["world_size"] == 2
    assert abs(record["final_val_loss"] - single["final_val_loss"]) < TOLERANCE


# ---- batch split and device choice -------------------------------------------------------------


def test_split_batch_ranks_and_accumulation():
    assert train._split_batch(tiny_run(), micro_batch_rows=1, world_size=2) == (2, 2)


def test_split_batch_uneven_raises():
    with pytest.raises(ValueError, match="world size 3"):
        train._split_batch(tiny_run(), micro_batch_rows=1, world_size=3)


def test_split_batch_too_few_rows_raises():
    with pytest.raises(ValueError, match="not a multiple of micro-batch rows 2 x world size 4"):
        train._split_batch(tiny_run(), micro_batch_rows=2, world_size=4)


def test_single_process_context(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    context = init_distributed("cpu")
    assert context == DistributedContext(0, 1, 0, torch.device("cpu"))


def test_invalid_rank_raises(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ValueError, match="RANK=5 is outside"):
        init_distributed("cpu")


def test_cuda_without_gpu_raises():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match="finds no CUDA device"):
        local_device("cuda", 0, 1)


# ---- MFU ---------------------------------------------------------------------------------------


def test_peak_unknown_on_cpu(monkeypatch):
    monkeypatch.delenv("ISODEPTH_PEAK_FLOPS", raising=False)
    assert peak_flops(torch.device("cpu")) is None


def test_peak_override(monkeypatch):
    monkeypatch.setenv("ISODEPTH_PEAK_FLOPS", "1e12")
    assert peak_flops(torch.device("cpu")).flops == 1e12


@pytest.mark.parametrize("name, expected", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
    ("NVIDIA GH200 480GB", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA L4", 121e12),
    ("NVIDIA L40S", 362e12), ("NVIDIA A10", 125e12), ("NVIDIA GeForce GTX 1080", None)])
def test_peak_table(monkeypatch, name, expected):
    from isodepth import hardware

    monkeypatch.delenv("ISODEPTH_PEAK_FLOPS", raising=False)
    monkeypatch.setattr(hardware, "device_name", lambda device: name)
    peak = hardware.peak_flops(torch.device("cuda", 0))
    assert (peak.flops if peak else None) == expected


def test_mfu_over_devices():
    peak = PeakFlops("test", 1e12, "test")
    assert mfu(1e6, 1e5, peak, devices=2) == pytest.approx(0.05)


def test_mfu_none_without_peak():
    assert mfu(1e6, 1e5, None, devices=1) is None


def test_record_throughput(single):
    section = single["throughput"]
    assert section["tokens_per_s"] > 0
    assert section["devices"] == 1
    assert "math" in section["attention_backends"]


# ---- CUDA (run with -m gpu) --------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("compile_model", [False, True])
def test_cuda_bf16_run(tmp_path, compile_model):
    train_stream, val_stream = tiny_streams()
    record = train.train_run(tiny_run(), runs_dir=tmp_path, checkpoint_dir=tmp_path, device="cuda",
                             train_stream=train_stream, validation_stream=val_stream, compile_model=compile_model)
    assert record["status"] == "completed"
    assert record["throughput"]["precision"] == "bf16 autocast"
    assert record["throughput"]["compiled"] == compile_model
    assert "flash_attention" in record["throughput"]["attention_backends"]


@pytest.mark.gpu
@needs_cuda
def test_cuda_mfu_reported(tmp_path):
    if peak_flops(torch.device("cuda", 0)) is None:
        pytest.skip(f"no peak FLOP/s known for {torch.cuda.get_device_name(0)}")
    train_stream, val_stream = tiny_streams()
    record = train.train_run(tiny_run(), runs_dir=tmp_path, checkpoint_dir=tmp_path, device="cuda",
                             train_stream=train_stream, validation_stream=val_stream)
    assert 0 < record["throughput"]["mfu"] < 1


@pytest.mark.gpu
@needs_cuda
def test_nccl_two_gpus(tmp_path, single):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    shards = write_tiny_prepacked(tmp_path / "shards")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "isodepth.train", "--grid", "tiny", "--run-id", RUN_ID, "--device", "cuda",
               "--data-dir", str(shards), "--runs-dir", str(tmp_path / "runs"),
               "--checkpoint-dir", str(tmp_path / "checkpoints"), "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "runs" / "tiny" / RUN_ID / "record.json").read_text())
    assert record["parallelism"]["world_size"] == 2
    # bf16 autocast: close to the fp32 CPU run, not equal to it.
    assert abs(record["final_val_loss"] - single["final_val_loss"]) < 0.05
