"""The prepared GPU check (code/benchmarks/gpu_check.sh), rehearsed on CPU so the script cannot rot unseen."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from isodepth import paths

SCRIPT = paths.ROOT / "code" / "benchmarks" / "gpu_check.sh"


def run_check(out: Path, device: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DEVICE=device, PY=sys.executable)
    return subprocess.run(["bash", str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=900)


def test_unknown_device_rejected(tmp_path):
    result = run_check(tmp_path, "tpu")
    assert result.returncode == 2
    assert "DEVICE=tpu is neither cuda" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_without_cuda_exits_with_reason(tmp_path):
    result = run_check(tmp_path, "cuda")
    assert result.returncode == 2
    assert "sees no CUDA device" in result.stderr
    assert not any(tmp_path.glob("*/tiny"))


def test_cpu_rehearsal_runs_every_step(tmp_path):
    result = run_check(tmp_path, "cpu")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = {p.relative_to(tmp_path).parts[0] + "/" + p.parent.name: json.loads(p.read_text())
               for p in tmp_path.glob("*/tiny/*/record.json")}
    assert sorted(records) == ["launcher/C2.00e09-r1-s8", "launcher/C2.00e09-r2-s8", "launcher/C2.00e09-r4-s8",
                               "single/C2.00e09-r4-s8", "torchrun/C2.00e09-r4-s8"]
    assert records["torchrun/C2.00e09-r4-s8"]["throughput"]["devices"] == 2
    # One process, two gloo ranks and a launcher-started run see the same global batch.
    losses = {key: r["final_val_loss"] for key, r in records.items() if key.endswith("r4-s8")}
    assert len(set(losses.values())) == 1, losses
    assert len(list((tmp_path / "launcher-logs").glob("*.log"))) == 3
    assert "| paper s=4 | fused | 256 |" in (tmp_path / "bench_train.md").read_text()
