"""Time the output projection + soft-cap + cross-entropy, forward and backward, fused against plain.

Three variants run alternately in one process, so a change in machine load shifts them alike.
They are the plain PyTorch ops (`LoopedLM.fused_loss = False`), the fused loss of
isodepth.loss, and the three projection matmuls alone (forward, input gradient and weight
gradient), which neither variant can avoid. The time beyond the matmuls is the element-wise
work each variant adds. Defaults follow the study's head: vocabulary 32,001 padded to 32,064.

    python code/benchmarks/bench_loss.py --widths 256 384 512 --tokens 512
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from isodepth.loss import softcap_cross_entropy

CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def plain_loss(h, weight, targets, vocab_size, softcap):
    logits = (h @ weight.t())[:, :vocab_size].float()
    logits = softcap * torch.tanh(logits / softcap)
    return F.cross_entropy(logits, targets)


def bench_width(d: int, tokens: int, vocab: int, padded: int, repeats: int, clock) -> dict:
    torch.manual_seed(0)
    h = torch.randn(tokens, d, requires_grad=True)
    weight = (0.02 * torch.randn(padded, d)).requires_grad_()
    targets = torch.randint(0, vocab, (tokens,))

    def plain():
        plain_loss(h, weight, targets, vocab, 15.0).backward()

    def fused():
        softcap_cross_entropy(h, weight, targets, vocab, 15.0).backward()

    def matmuls():
        with torch.no_grad():
            logits = h @ weight.t()
            logits @ weight
            logits.t() @ h

    variants = {"plain": plain, "fused": fused, "matmuls": matmuls}
    for run in variants.values():
        run()  # warm-up
    seconds = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            h.grad = weight.grad = None
            started = clock()
            run()
            seconds[name].append(clock() - started)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    return {"d": d, **median}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 384, 512], help="hidden widths d")
    parser.add_argument("--tokens", type=int, default=512, help="tokens per micro-batch (default 512)")
    parser.add_argument("--vocab", type=int, default=32_001, help="vocabulary size (default 32,001)")
    parser.add_argument("--padded-vocab", type=int, default=32_064, help="rows of the projection (default 32,064)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per variant; the median counts")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: OMP_NUM_THREADS)")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="cpu",
                        help="cpu: this process's CPU time (default); wall: elapsed time")
    args = parser.parse_args()
    if args.padded_vocab < args.vocab:
        parser.error(f"--padded-vocab {args.padded_vocab} is smaller than --vocab {args.vocab}")
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.tokens} tokens, "
          f"vocabulary {args.vocab:,} padded to {args.padded_vocab:,}, clock: {args.clock}\n")
    print("| d | plain ms | fused ms | matmuls alone ms | plain / fused | element-wise plain ms | element-wise fused ms |")
    print("|---|---|---|---|---|---|---|")
    for d in args.widths:
        row = bench_width(d, args.tokens, args.vocab, args.padded_vocab, args.repeats, CLOCKS[args.clock])
        print(f"| {d} | {1e3 * row['plain']:.0f} | {1e3 * row['fused']:.0f} | {1e3 * row['matmuls']:.0f} "
              f"| {row['plain'] / row['fused']:.2f} | {1e3 * (row['plain'] - row['matmuls']):.0f} "
              f"| {1e3 * (row['fused'] - row['matmuls']):.0f} |")


if __name__ == "__main__":
    main()
