"""Exact parameter and training-FLOPs accounting of the iso-depth grid.

Conventions (as in the study):
- N excludes the embedding and the lm_head but includes every norm scale.
- N_once is what runs once per token (prelude, coda, embedding norm, final norm);
  N_rec is the shared block, its closing norm and the injection layer or hyperconnection scalars.
- Training FLOPs per token count 6 per weight for a full forward+backward pass, 2 per weight for a
  forward-only recurrence, and 12 h q T per attention layer (4 h q T forward only) with the full
  context T, not the causal half. The embedding lookup and the softmax count zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import ModelConfig


@dataclass(frozen=True)
class ParamCounts:
    """Raw parameter counts per section of the model."""

    embedding: int
    prelude: int  # layers only
    recur: int  # shared-block layers only, counted once
    coda: int
    inject: int  # linear injection matrix, or hyperconnection scalars
    model_norms: int  # embedding norm + recurrence norm + final norm
    lm_head: int  # padded vocabulary

    @property
    def n_once(self) -> int:
        return self.prelude + self.coda + 2 * (self.model_norms // 3)

    @property
    def n_rec(self) -> int:
        return self.recur + self.inject + self.model_norms // 3

    @property
    def n_total(self) -> int:
        """Non-embedding parameters N = N_once + N_rec."""
        return self.n_once + self.n_rec


def layer_params(d_model: int) -> int:
    """Count the parameters of one transformer layer: 4 d^2 attention + 8 d^2 MLP + two norm scales."""
    return 12 * d_model * d_model + 2 * d_model


def param_counts(cfg: ModelConfig) -> ParamCounts:
    d = cfg.d_model
    inject = 0
    if cfg.looped and cfg.injection == "linear":
        inject = 2 * d * d
    elif cfg.looped and cfg.injection == "hyperconnections":
        K = cfg.hc_lanes
        inject = cfg.recurrences * (K * K + 2 * K)
    return ParamCounts(
        embedding=cfg.vocab_size * d,
        prelude=cfg.n_prelude * layer_params(d),
        recur=cfg.n_recur_layers * layer_params(d),
        coda=cfg.n_coda * layer_params(d),
        inject=inject,
        model_norms=3 * d,
        lm_head=cfg.padded_vocab_size * d,
    )


def train_flops_per_token(cfg: ModelConfig) -> float:
    """Training FLOPs per token for full (k = r) or truncated (k < r) backprop through recurrence."""
    p = param_counts(cfg)
    d = cfg.d_model
    r, k = cfg.recurrences, cfg.k_grad
    f = r - k
    attention = cfg.n_head * cfg.head_dim * cfg.seq_len  # h q T

    # Section counts include each layer's norm scales; the three model-level norm scales are
    # left out, as in the study's published FLOPs per token (they change it by < 1e-4).
    once = p.prelude + p.coda + p.lm_head
    recurrent = p.recur
    flops = 6 * once + 12 * attention * (cfg.n_prelude + cfg.n_coda)
    flops += (4 * f + 12 * k) * attention * cfg.n_recur_layers
    if cfg.looped and cfg.injection == "hyperconnections":
        K = cfg.hc_lanes
        flops += 6 * r * recurrent
        flops += 6 * r * (K * K + 2 * K) * d  # lane mixing, read and write per token
    else:
        flops += (2 * f + 6 * k) * (recurrent + p.inject)
    return float(flops)


def forward_flops_per_token(cfg: ModelConfig) -> float:
    """Inference FLOPs per token (one third of a full training pass)."""
    full = cfg if cfg.grad_recurrences is None else _full_backprop(cfg)
    return train_flops_per_token(full) / 3.0


def _full_backprop(cfg: ModelConfig) -> ModelConfig:
    from dataclasses import replace

    return replace(cfg, grad_recurrences=None)


@dataclass(frozen=True)
class RunLength:
    steps: int
    tokens: int  # D = steps * tokens_per_step


def run_length(budget_flops: float, flops_per_token: float, tokens_per_step: int) -> RunLength:
    """Steps = round(C / (F * B)) and D = steps * B for a compute budget C in FLOPs."""
    if budget_flops <= 0 or flops_per_token <= 0 or tokens_per_step <= 0:
        raise ValueError(
            f"budget ({budget_flops}), FLOPs per token ({flops_per_token}) and tokens per step "
            f"({tokens_per_step}) must all be positive"
        )
    steps = int(round(budget_flops / (flops_per_token * tokens_per_step)))
    if steps < 1:
        raise ValueError(
            f"budget {budget_flops:.3g} FLOPs buys less than one step of {tokens_per_step} tokens "
            f"at {flops_per_token:.3g} FLOPs per token; raise the budget or shrink the batch"
        )
    return RunLength(steps=steps, tokens=steps * tokens_per_step)


def ceil_half(r: int) -> int:
    """Recurrences with gradient under the study's truncated BPTT: the last ceil(r / 2)."""
    return int(math.ceil(r / 2))
