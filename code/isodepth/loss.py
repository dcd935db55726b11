"""Cross-entropy of soft-capped logits, fused with the output projection and computed in row chunks.

The unfused loss materialises the logits of every token (tokens x vocabulary floats), then runs
the soft-cap, the log-softmax and their backward passes over that whole array, each one a pass
through main memory. At the study's vocabulary of 32,001 a micro-batch of 512 tokens produces
65 MB of logits, twice the 32 MiB last-level cache of the CPUs we train on. Here the projection, the
soft-cap, the log-sum-exp and the gradient run on a few rows at a time, so each chunk of logits
stays in cache from its matmul to its gradient, and the full logits array never exists.

The gradient is computed during the forward pass, where the chunk's logits are at hand, and
kept until backward, which only scales it by the incoming gradient. That is exact because the
loss is a scalar at the end of the graph. With z = c tanh(l / c) and p = softmax(z):

    dLoss/dz = (p - onehot(target)) / n,   dz/dl = 1 - tanh(l / c)^2,

and the chain rule through l = h W^T gives the gradients of h and W.
"""

from __future__ import annotations

import torch

CHUNK_BYTES = 4 * 2**20  # float32 logits per chunk: small enough to stay in a core's cache share


def chunk_rows(vocab_size: int) -> int:
    """Rows per chunk so that one chunk of float32 logits takes about CHUNK_BYTES."""
    return max(1, CHUNK_BYTES // (4 * vocab_size))


class SoftcapCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy over rows of softcap * tanh((h @ weight[:vocab].T) / softcap).

    h is (n, d), the final hidden states. weight is (padded vocabulary, d), the untied output
    projection, whose first `vocab_size` rows are real tokens. targets is (n,), token ids in
    [0, vocab_size).
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, vocab_size: int,
                softcap: float, rows_per_chunk: int) -> torch.Tensor:
        n = h.size(0)
        w = weight[:vocab_size]
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h) if want_h else None
        dtype = torch.promote_types(h.dtype, torch.float32)  # dtype of the logits: float32 or wider
        grad_w = torch.zeros_like(weight, dtype=dtype) if want_w else None
        total = torch.zeros((), dtype=torch.float64, device=h.device)
        for start in range(0, n, rows_per_chunk):
            stop = min(start + rows_per_chunk, n)
            hc, tc = h[start:stop], targets[start:stop, None]
            t = (hc @ w.t()).to(dtype).div_(softcap).tanh_()
            z = t * softcap
            lse = torch.logsumexp(z, dim=1, keepdim=True)
            total += (lse - z.gather(1, tc)).sum(dtype=torch.float64)
            if not (want_h or want_w):
                continue
            g = z.sub_(lse).exp_()  # softmax, in place of z
            g.scatter_add_(1, tc, torch.full_like(tc, -1.0, dtype=g.dtype))
            g.mul_(t.mul_(t).neg_().add_(1.0)).div_(n)  # chain rule through the soft-cap, then the mean over rows
            g = g.to(h.dtype)
            if want_h:
                grad_h[start:stop] = g @ w
            if want_w:
                grad_w[:vocab_size] += g.t().to(dtype) @ hc.to(dtype)
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype) if want_w else None)
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
