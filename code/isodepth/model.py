"""The prelude-recur-coda looped transformer (after Huginn) and its plain r = 1 counterpart.

Layout: embedding -> RMSNorm -> prelude layers -> r iterations of a shared block with input
injection, each closed by an RMSNorm -> coda layers -> RMSNorm -> untied lm_head with a logit
soft-cap. With r = 1 every layer sits in the block, run once without injection. Pre-norm blocks,
RoPE followed by parameter-free QK-norm, squared-ReLU MLP, no biases, no dropout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .loss import softcap_cross_entropy


class RMSNorm(nn.Module):
    """RMSNorm with a learnable scale initialised to 1."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)


def rope_tables(seq_len: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine tables of shape (seq_len, head_dim / 2) for rotary embeddings."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of each head of x (batch, heads, T, head_dim)."""
    x1, x2 = x.chunk(2, dim=-1)
    cos = cos.to(x.dtype)
    sin = sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.n_head = cfg.n_head
        self.head_dim = cfg.head_dim
        self.eps = cfg.norm_eps
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(d, d, bias=False)
        self.v = nn.Linear(d, d, bias=False)
        self.out = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, T, d = x.shape
        shape = (batch, T, self.n_head, self.head_dim)
        q = self.q(x).view(shape).transpose(1, 2)
        k = self.k(x).view(shape).transpose(1, 2)
        v = self.v(x).view(shape).transpose(1, 2)
        q = F.rms_norm(apply_rope(q, cos, sin), (self.head_dim,), eps=self.eps)
        k = F.rms_norm(apply_rope(k, cos, sin), (self.head_dim,), eps=self.eps)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(batch, T, d))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.up = nn.Linear(cfg.d_model, 4 * cfg.d_model, bias=False)
        self.down = nn.Linear(4 * cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.relu(self.up(x)).square())


class Layer(nn.Module):
    """Pre-norm transformer layer: 12 d^2 matrix weights plus two d-vectors of norm scales."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm_attn = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm_mlp = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm_attn(x), cos, sin)
        return x + self.mlp(self.norm_mlp(x))


class HyperConnections(nn.Module):
    """Per-iteration read, lane-mixing and write scalars for K residual lanes."""

    def __init__(self, recurrences: int, lanes: int):
        super().__init__()
        read = torch.zeros(recurrences, lanes)
        read[torch.arange(recurrences), torch.arange(recurrences) % lanes] = 1.0
        self.read = nn.Parameter(read)  # alpha_i, cyclic one-hot
        self.mix = nn.Parameter(torch.eye(lanes).repeat(recurrences, 1, 1))  # M_i = I
        self.write = nn.Parameter(torch.ones(recurrences, lanes))  # beta_i = 1


class LoopedLM(nn.Module):
    """Looped language model; returns logits or, given targets, the mean cross-entropy in nats."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.embed = nn.Embedding(cfg.vocab_size, d)
        self.norm_embed = RMSNorm(d, cfg.norm_eps)
        self.prelude = nn.ModuleList(Layer(cfg) for _ in range(cfg.n_prelude))
        self.recur = nn.ModuleList(Layer(cfg) for _ in range(cfg.n_recur_layers))
        self.norm_recur = RMSNorm(d, cfg.norm_eps)
        self.coda = nn.ModuleList(Layer(cfg) for _ in range(cfg.n_coda))
        self.norm_final = RMSNorm(d, cfg.norm_eps)
        self.lm_head = nn.Linear(d, cfg.padded_vocab_size, bias=False)
        # Given targets, compute the loss with the chunked, fused projection + soft-cap +
        # cross-entropy of isodepth.loss; False selects the plain PyTorch ops (for torch.compile).
        self.fused_loss = True

        self.inject = None
        self.hyper = None
        if cfg.looped and cfg.injection == "linear":
            self.inject = nn.Linear(2 * d, d, bias=False)
        if cfg.looped and cfg.injection == "hyperconnections":
            self.hyper = HyperConnections(cfg.recurrences, cfg.hc_lanes)

        cos, sin = rope_tables(cfg.seq_len, cfg.head_dim, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise as the study does: N(0,1) embedding, N(0,1e-3) head, uniform blocks."""
        d = self.cfg.d_model
        bound = math.sqrt(3.0 / d)
        bound_down = math.sqrt(3.0 / (4 * d))
        nn.init.normal_(self.embed.weight, mean=0.0, std=1.0)
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=1e-3)
        for layer in self.layers():
            for lin in (layer.attn.q, layer.attn.k, layer.attn.v, layer.attn.out, layer.mlp.up):
                nn.init.uniform_(lin.weight, -bound, bound)
            nn.init.uniform_(layer.mlp.down.weight, -bound_down, bound_down)
        for module in self.modules():
            if isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        if self.inject is not None:
            # [I | 0]: at initialisation the injection passes the prelude output e through.
            self.inject.weight.zero_()
            self.inject.weight[:, :d].copy_(torch.eye(d))

    def layers(self):
        yield from self.prelude
        yield from self.recur
        yield from self.coda

    def _run(self, layers, x: torch.Tensor, T: int) -> torch.Tensor:
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        for layer in layers:
            x = layer(x, cos, sin)
        return x

    def _iterate(self, e: torch.Tensor, T: int) -> torch.Tensor:
        """Run the shared block r times; the first r - k iterations carry no gradient."""
        cfg = self.cfg
        r, k = cfg.recurrences, cfg.k_grad
        mode = cfg.injection if cfg.looped else "passthrough"

        if mode == "hyperconnections":
            lanes = e.unsqueeze(0).expand(cfg.hc_lanes, *e.shape)
            for i in range(r):
                u = torch.einsum("k,k...->...", self.hyper.read[i], lanes)
                s = self.norm_recur(self._run(self.recur, u, T))
                lanes = torch.einsum("jk,k...->j...", self.hyper.mix[i], lanes)
                lanes = lanes + self.hyper.write[i].view(-1, *([1] * e.dim())) * s
            return lanes.sum(0)

        h = torch.zeros_like(e) if mode == "additive" else e
        for i in range(r):
            with torch.set_grad_enabled(torch.is_grad_enabled() and i >= r - k):
                if mode == "linear":
                    u = self.inject(torch.cat((e, h), dim=-1))
                elif mode == "additive":
                    u = h + e
                else:
                    u = h
                h = self.norm_recur(self._run(self.recur, u, T))
        return h

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        T = idx.size(1)
        if T > self.cfg.seq_len:
            raise ValueError(f"sequence of {T} tokens exceeds the context of {self.cfg.seq_len}")
        x = self.norm_embed(self.embed(idx))
        e = self._run(self.prelude, x, T)
        h = self._iterate(e, T)
        h = self._run(self.coda, h, T)
        h = self.norm_final(h)

        if targets is not None and self.fused_loss:
            return softcap_cross_entropy(h, self.lm_head.weight, targets, self.cfg.vocab_size, self.cfg.softcap)
        logits = self.lm_head(h)[..., : self.cfg.vocab_size].float()
        logits = self.cfg.softcap * torch.tanh(logits / self.cfg.softcap)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
