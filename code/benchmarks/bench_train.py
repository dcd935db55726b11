"""Benchmark training throughput (tokens/s, MFU) of the looped model at a micro width and paper widths.

For each width it times forward + backward of one micro-batch (bf16 autocast on CUDA, fp32 on
CPU) and one MuonH + AdamW optimiser step, and reports:

- tokens/s of forward + backward, and the model FLOP/s they imply with the study's accounting
  (training FLOPs per token, attention included);
- the dense-matmul FLOP/s of this machine on the model's own matmul shapes, measured with
  torch.mm in the same run, and the model's share of it. The shapes are the forward,
  input-gradient and weight-gradient products of every nn.Linear call of one forward pass,
  each shape timed once and weighted by its call count;
- MFU against the device's peak dense bf16 FLOP/s (CUDA devices in isodepth.hardware only);
- the projected tokens/s of a whole optimiser step at the grid's tokens per step (262,144 for
  the paper widths, 640 for the micro width): micro-batches accumulated to the step, then one
  optimiser step, whose cost does not depend on how many tokens the step holds.

Model timings and matmul timings alternate and each figure is a median, so load from other
processes shifts both alike; the ratios are the figures to compare across machines. On CPU
the clock is by default the process's CPU time (time.process_time), which leaves out the time
the process waits while other processes run; with more than one torch thread it sums the
threads' CPU time, so pass --clock wall there.

Defaults on CPU use a reduced context (256 instead of 2048) and micro-batches of 2 rows so the
whole benchmark ends in about 3 minutes on 2 cores; on CUDA the study's context of 2048 and
16 rows per micro-batch.

Run: nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python code/benchmarks/bench_train.py [--device cuda --compile]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time
from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

from isodepth.accounting import train_flops_per_token
from isodepth.config import ModelConfig, iso_depth_config
from isodepth.hardware import device_name, mfu, peak_flops, usable_attention_backends
from isodepth.model import LoopedLM
from isodepth.optim import Recipe, build_optimizers

PAPER_TOKENS_PER_STEP = 262_144
MICRO_TOKENS_PER_STEP = 640  # data/grids/micro.yaml: 10 rows of 64 tokens


@dataclass(frozen=True)
class Case:
    """One benchmarked model: its label, configuration and micro-batch rows."""

    label: str
    cfg: ModelConfig
    rows: int
    tokens_per_step: int  # of the grid the model comes from: the optimiser step is amortised over these


def paper_case(size: int, seq_len: int, rows: int, recurrences: int) -> Case:
    cfg = iso_depth_config(d_model=64 * size, recurrences=recurrences, effective_depth=20, n_prelude=2, n_coda=2,
                           head_dim=128, vocab_size=32001, seq_len=seq_len)
    return Case(f"paper s={size}", cfg, rows, PAPER_TOKENS_PER_STEP)


def micro_case(size: int, recurrences: int) -> Case:
    """Build a model of the micro grid's family (data/grids/micro.yaml): depth 10, head dim 8, 1,024-token vocabulary."""
    cfg = iso_depth_config(d_model=4 * size, recurrences=recurrences, effective_depth=10, n_prelude=1, n_coda=1,
                           head_dim=8, vocab_size=1024, seq_len=64)
    return Case(f"micro s={size}", cfg, 10, MICRO_TOKENS_PER_STEP)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def timed(function, device: torch.device) -> float:
    synchronize(device)
    start = clock()
    function()
    synchronize(device)
    return clock() - start


def linear_calls(model: nn.Module, idx: torch.Tensor) -> Counter:
    """(in_features, out_features) of every nn.Linear call in one forward pass, with call counts."""
    calls: Counter = Counter()
    hooks = [m.register_forward_hook(lambda module, args, out: calls.update([(module.in_features, module.out_features)]))
             for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        model(idx)
    for hook in hooks:
        hook.remove()
    return calls


class MatmulReference:
    """Dense-matmul throughput on the model's forward and backward matmul shapes for M tokens."""

    def __init__(self, calls: Counter, tokens: int, device: torch.device, dtype: torch.dtype):
        self.calls, self.tokens = calls, tokens
        generator = torch.Generator(device="cpu").manual_seed(0)
        self.operands = {}
        for k, n in calls:
            x = torch.randn(tokens, k, generator=generator).to(device, dtype)
            w = torch.randn(n, k, generator=generator).to(device, dtype)
            dy = torch.randn(tokens, n, generator=generator).to(device, dtype)
            self.operands[(k, n)] = (x, w, dy)
        self.device = device

    def flops(self) -> float:
        return sum(count * 3 * 2 * self.tokens * k * n for (k, n), count in self.calls.items())

    def seconds(self) -> float:
        """Time of all matmuls of one forward + backward, each shape timed once and scaled by its count."""
        total = 0.0
        for (k, n), count in self.calls.items():
            x, w, dy = self.operands[(k, n)]

            def products():
                torch.mm(x, w.t())  # forward
                torch.mm(dy, w)  # gradient of the input
                torch.mm(dy.t(), x)  # gradient of the weight

            total += count * timed(products, self.device)
        return total


def bench_case(case: Case, device: torch.device, repeats: int, compile_model: bool, loss: str = "fused") -> dict:
    torch.manual_seed(0)
    model = LoopedLM(case.cfg).to(device)
    model.fused_loss = loss == "fused" and not compile_model
    optimizers = build_optimizers(model, Recipe(), Recipe().learning_rates(case.cfg.d_model, case.tokens_per_step,
                                                                           10**9, case.cfg.looped))
    forward = torch.compile(model) if compile_model else model
    rows = torch.randint(0, case.cfg.vocab_size, (case.rows, case.cfg.seq_len + 1), device=device)
    inputs, targets = rows[:, :-1], rows[:, 1:]
    tokens = inputs.numel()
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())
    reference = MatmulReference(linear_calls(model, inputs), tokens, device,
                                torch.bfloat16 if device.type == "cuda" else torch.float32)

    def micro_step():
        with autocast:
            loss = forward(inputs, targets)
        loss.backward()

    micro_step()  # warm-up: allocation, kernel selection, compilation
    if device.type == "cuda":
        optimizers.step()  # warm-up of the optimiser's kernels; on CPU its first step costs no extra
        optimizers.zero_grad()
    reference.seconds()

    # Model and matmul timings alternate, and the share of matmul throughput is the median of
    # per-repeat ratios, so a change in the load of other processes shifts both sides alike.
    flops_per_token = train_flops_per_token(case.cfg)
    model_seconds, matmul_flops, shares = [], [], []
    for _ in range(repeats):
        model_seconds.append(timed(micro_step, device))
        matmul_flops.append(reference.flops() / reference.seconds())
        shares.append(flops_per_token * tokens / model_seconds[-1] / matmul_flops[-1])
    optimizer_seconds = timed(optimizers.step, device)
    optimizers.zero_grad()

    t_model = statistics.median(model_seconds)
    tokens_per_s = tokens / t_model
    share = statistics.median(shares)
    accumulation = case.tokens_per_step / tokens
    step_tokens_per_s = case.tokens_per_step / (accumulation * t_model + optimizer_seconds)
    peak = peak_flops(device)
    return {
        "label": case.label, "loss": "fused" if model.fused_loss else "plain", "d_model": case.cfg.d_model, "recurrences": case.cfg.recurrences,
        "seq_len": case.cfg.seq_len, "rows": case.rows, "tokens_per_step": case.tokens_per_step,
        "flops_per_token": flops_per_token,
        "tokens_per_s": tokens_per_s, "model_tflops": flops_per_token * tokens_per_s / 1e12,
        "matmul_tflops": statistics.median(matmul_flops) / 1e12,
        "of_matmul": share,
        "mfu": mfu(flops_per_token, tokens_per_s, peak, 1),
        "optimizer_s": optimizer_seconds, "step_tokens_per_s": step_tokens_per_s,
        "step_of_matmul": share * step_tokens_per_s / tokens_per_s,
    }


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def print_table(results: list[dict]) -> None:
    print("| model | loss | d | r | context x rows | tokens/s (fwd+bwd) | model TFLOP/s | matmul TFLOP/s "
          "| of matmul | MFU | optimiser step s | tokens per step | tokens/s per whole step | of matmul per whole step |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['label']} | {r['loss']} | {r['d_model']} | {r['recurrences']} | {r['seq_len']} x {r['rows']} "
              f"| {r['tokens_per_s']:,.0f} | {r['model_tflops']:.4f} | {r['matmul_tflops']:.4f} "
              f"| {percent(r['of_matmul'])} | {percent(r['mfu'])} | {r['optimizer_s']:.2f} "
              f"| {r['tokens_per_step']:,} | {r['step_tokens_per_s']:,.0f} | {percent(r['step_of_matmul'])} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--sizes", type=int, nargs="*", default=None,
                        help="paper sizes s (d = 64 s); default 4 6 8 on CPU, 6 10 16 20 24 34 on CUDA; "
                             "the flag with no sizes skips the paper widths")
    parser.add_argument("--micro-size", type=int, default=12, help="micro grid size s (d = 4 s); 0 skips it")
    parser.add_argument("--recurrences", type=int, default=4, help="r of the benchmarked models (default 4)")
    parser.add_argument("--seq-len", type=int, default=None, help="context (default 256 on CPU, 2048 on CUDA)")
    parser.add_argument("--rows", type=int, default=None, help="rows per micro-batch (default 2 on CPU, 16 on CUDA)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed micro-batches per width, of which the median counts (default 3 on CPU, 5 on CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: OMP_NUM_THREADS)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--loss", choices=("fused", "plain", "both"), default="fused",
                        help="fused: one projection matmul, then soft-cap + cross-entropy in one pass over row "
                             "chunks (isodepth.loss, the trainer's default); plain: the unfused PyTorch ops; both: one row each, in one run")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default=None,
                        help="wall: elapsed time; cpu: this process's CPU time (default cpu on CPU, wall on CUDA)")
    args = parser.parse_args()

    global clock

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    sizes = args.sizes if args.sizes is not None else ([6, 10, 16, 20, 24, 34] if cuda else [4, 6, 8])
    seq_len = args.seq_len or (2048 if cuda else 256)
    rows = args.rows or (16 if cuda else 2)
    repeats = args.repeats or (5 if cuda else 3)
    clock_name = args.clock or ("wall" if cuda else "cpu")
    clock = CLOCKS[clock_name]

    cases = [micro_case(args.micro_size, args.recurrences)] if args.micro_size else []
    cases += [paper_case(s, seq_len, rows, args.recurrences) for s in sizes]
    peak = peak_flops(device)
    print(f"device: {device_name(device)} ({platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads)")
    print(f"peak dense bf16: {f'{peak.flops / 1e12:.0f} TFLOP/s ({peak.source})' if peak else 'unknown, MFU n/a'}")
    print(f"attention backends usable: "
          f"{', '.join(usable_attention_backends(device, 128, torch.bfloat16 if cuda else torch.float32))}")
    print(f"precision: {'bf16 autocast' if cuda else 'fp32'}, compile: {args.compile}, clock: {clock_name}, "
          f"repeats: {repeats}\n")

    started = time.perf_counter()
    losses = ("fused", "plain") if args.loss == "both" else (args.loss,)
    results = [bench_case(case, device, repeats, args.compile, loss) for case in cases for loss in losses]
    print_table(results)
    print(f"\ntotal time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
