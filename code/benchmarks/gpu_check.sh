#!/usr/bin/env bash
# The GPU path in one pass, sized to end within 8 minutes on one H100-class device:
#   1. one tiny-grid run on one GPU (bf16 autocast, SDPA),
#   2. the same run under torchrun over every visible GPU (NCCL),
#   3. three tiny-grid runs through the multi-gpu launcher (one torchrun per run),
#   4. a check of the records: completed, bf16, the attention backends, MFU logged,
#   5. bench_train.py on CUDA (MFU at s = 6 to 34; the target is >= 40% at s = 20).
# Records, logs and the benchmark table go to OUTPUT_DIR (default logs/gpu-check).
#
# Usage: code/benchmarks/gpu_check.sh [OUTPUT_DIR]
# PY names the interpreter (default .venv/bin/python, else python3); the package is imported
# from code/, so an interpreter with torch, numpy, pyyaml and safetensors is enough.
# DEVICE=cpu rehearses the same steps on CPU (gloo, 2 processes, fake GPU ids, fp32, the
# benchmark at s = 4 only) to check the script itself on a machine without a GPU.
set -euo pipefail
cd "$(dirname "$0")/../.."

out=${1:-logs/gpu-check}
py=${PY:-.venv/bin/python}
[ -x "$py" ] || py=python3
export PYTHONPATH="$PWD/code${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

device=${DEVICE:-cuda}
if [ "$device" != cpu ] && [ "$device" != cuda ]; then
    echo "gpu_check: DEVICE=$device is neither cuda (the check) nor cpu (its rehearsal)" >&2
    exit 2
fi
if [ "$device" = cpu ]; then
    gpus=2
    launcher_gpus=(--device cpu --gpus 0,1 --threads 1)
    bench=(--device cpu --threads 1 --sizes 4 --micro-size 0 --repeats 1 --loss fused)
    export OMP_NUM_THREADS=1
else
    gpus=$("$py" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')
    launcher_gpus=()
    bench=(--device cuda --loss both)
fi
if [ "$gpus" -eq 0 ]; then
    echo "gpu_check: torch ($("$py" -c 'import torch; print(torch.__version__)')) sees no CUDA device;" \
         "run this on a machine with a GPU. On CPU, make test and make bench-train cover the same code." >&2
    exit 2
fi
mkdir -p "$out"
[ "$device" = cpu ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
"$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count())'

run=C2.00e09-r4-s8
started=$SECONDS
step() { echo; echo "== $1 ($((SECONDS - started)) s)"; }

step "one run on one GPU"
"$py" -m isodepth.train --grid tiny --run-id "$run" --device "$device" --no-progress \
    --runs-dir "$out/single" --checkpoint-dir "$out/checkpoints-single"

step "the same run under torchrun, $gpus process(es)"
"$py" -m torch.distributed.run --standalone --nproc_per_node "$gpus" -m isodepth.train \
    --grid tiny --run-id "$run" --device "$device" --no-progress \
    --runs-dir "$out/torchrun" --checkpoint-dir "$out/checkpoints-torchrun"

step "three runs through the multi-gpu launcher"
"$py" -m isodepth.cli sweep tiny --launcher multi-gpu "${launcher_gpus[@]}" \
    --runs C2.00e09-r1-s8 C2.00e09-r2-s8 C2.00e09-r4-s8 \
    --runs-dir "$out/launcher" --checkpoint-dir "$out/checkpoints-launcher" --log-dir "$out/launcher-logs"

step "records"
"$py" - "$out" "$run" "$device" <<'PY'
import json
import sys
from pathlib import Path

out, run, device = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
records = sorted(out.glob("*/tiny/*/record.json"))
problems = []
for path in records:
    record = json.loads(path.read_text())
    throughput = record["throughput"]
    print(f"{path.relative_to(out)}: {record['status']}, loss {record['final_val_loss']:.4f}, "
          f"{throughput['precision']}, attention {throughput['attention_backends']}, "
          f"MFU {throughput['mfu']}, {throughput['devices']} device(s)")
    if record["status"] != "completed":
        problems.append(f"{path}: status {record['status']}")
    if device == "cuda" and throughput["precision"] != "bf16 autocast":
        problems.append(f"{path}: precision {throughput['precision']}")
    if device == "cuda" and throughput["mfu"] is None:
        problems.append(f"{path}: no MFU (is the device in isodepth/hardware.py?)")
if len(records) != 5:
    problems.append(f"expected 5 records under {out}, found {len(records)}")
losses = {p.parts[-4]: json.loads(p.read_text())["final_val_loss"]
          for p in records if p.parts[-2] == run}
print("final loss of", run, "by path:", losses)
if problems:
    sys.exit("gpu_check: " + "; ".join(problems))
PY

step "bench_train.py on $device"
"$py" code/benchmarks/bench_train.py "${bench[@]}" | tee "$out/bench_train.md"

step "done"
