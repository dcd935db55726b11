"""Cross-entropy of soft-capped logits with the element-wise work fused into one pass.

The plain loss runs the soft-cap, the log-softmax and their backward passes each over the whole
logits array (tokens x vocabulary floats) and keeps three such arrays for backward. At the
study's vocabulary of 32,001 a micro-batch of 512 tokens produces 65 MB of logits, twice the
32 MiB last-level cache of the CPUs we train on, so every pass goes through main memory.

Here the projection is one matmul, as before. Then a single pass over row chunks, each small
enough to stay in cache, applies the soft-cap, takes the log-sum-exp and the loss, and
overwrites the chunk's logits with their gradient. Two matmuls give the gradients of the
hidden states and of the projection. Only the one logits buffer is kept. (Chunking the
matmuls as well would re-read the whole projection matrix for every chunk, which costs more
than it saves at these widths.)

The gradient is computed during the forward pass, where the logits are at hand, and kept until
backward, which only scales it by the incoming gradient. That is exact because the loss is a
scalar at the end of the graph. With z = c tanh(l / c) and p = softmax(z):

    dLoss/dz = (p - onehot(target)) / n,   dz/dl = 1 - tanh(l / c)^2,

and the chain rule through l = h W^T gives the gradients of h and W.
"""

from __future__ import annotations

import torch

CHUNK_BYTES = 2 * 2**20  # float32 logits per chunk; the pass keeps two such arrays in cache


def chunk_rows(vocab_size: int) -> int:
    """Rows per chunk so that one chunk of float32 logits takes about CHUNK_BYTES."""
    return max(1, CHUNK_BYTES // (4 * vocab_size))


class SoftcapCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy over rows of softcap * tanh((h @ weight[:vocab].T) / softcap).

    h is (n, d), the final hidden states. weight is (padded vocabulary, d), the untied output
    projection, whose first `vocab_size` rows are real tokens; the rest get zero gradient. targets is (n,), token ids in
    [0, vocab_size).
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, vocab_size: int,
                softcap: float, rows_per_chunk: int) -> torch.Tensor:
        n = h.size(0)
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dtype = torch.promote_types(h.dtype, torch.float32)  # dtype of the logits: float32 or wider
        # The whole padded projection, as in the plain model and in the FLOPs accounting. The
        # padded columns are dropped here and get zero gradient below.
        padded = (h @ weight.t()).to(dtype)
        logits = padded[:, :vocab_size]
        total = torch.zeros((), dtype=torch.float64, device=h.device)
        for start in range(0, n, rows_per_chunk):
            chunk = logits[start:start + rows_per_chunk]
            tc = targets[start:start + rows_per_chunk, None]
            t = chunk.div_(softcap).tanh_()  # in place: the chunk now contains tanh(l / c)
            z = t * softcap
            lse = torch.logsumexp(z, dim=1, keepdim=True)
            total += (lse - z.gather(1, tc)).sum(dtype=torch.float64)
            if not (want_h or want_w):
                continue
            p = z.sub_(lse).exp_()  # softmax, in place of z
            p.scatter_add_(1, tc, torch.full_like(tc, -1.0, dtype=p.dtype))
            # The chunk becomes dLoss/dl: through the soft-cap, then the mean over rows.
            t.mul_(t).neg_().add_(1.0).mul_(p).div_(n)
        grad_h = grad_w = None
        if want_h or want_w:
            padded[:, vocab_size:] = 0.0
        if want_h:
            grad_h = (padded.to(h.dtype) @ weight).to(h.dtype)
        if want_w:
            grad_w = (padded.t() @ h.to(dtype)).to(weight.dtype)
        ctx.save_for_backward(grad_h, grad_w)
        return (total / n).to(dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return (grad_h * grad_out if grad_h is not None else None,
                grad_w * grad_out if grad_w is not None else None,
                None, None, None, None)


def softcap_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, vocab_size: int,
                          softcap: float, rows_per_chunk: int | None = None) -> torch.Tensor:
    """Mean cross-entropy in nats of the soft-capped logits of h (any leading shape) against targets."""
    d = h.size(-1)
    flat_targets = targets.reshape(-1)
    # Checked on the CPU only: on an accelerator the check would wait for the device each step.
    if flat_targets.device.type == "cpu" and flat_targets.numel() and (int(flat_targets.min()) < 0 or int(flat_targets.max()) >= vocab_size):
        raise ValueError(f"targets must be token ids in [0, {vocab_size}); got values from "
                         f"{int(flat_targets.min())} to {int(flat_targets.max())}")
    return SoftcapCrossEntropy.apply(h.reshape(-1, d), weight, flat_targets, vocab_size, float(softcap),
                                     rows_per_chunk or chunk_rows(vocab_size))
