"""MuonH for the block and injection matrices, AdamW for everything else, and the LR rules.

MuonH (Muon on the hypersphere): Nesterov momentum, Polar-Express orthogonalisation, the update
rescaled to the weight's initial Frobenius norm, and after each step the weight re-projected onto
the sphere of that initial norm. The learning rate is therefore a relative step size. No weight
decay. Matrices of one shape are orthogonalised together as a batch.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn

# Polar Express quintic coefficients (Amsel et al. 2025, arXiv 2505.16932), five iterations,
# to be applied after dividing by the Frobenius norm with a 2% safety margin.
POLAR_EXPRESS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)


def polar_express(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximate the orthogonal polar factor U V^T of each matrix in a (batch, m, n) stack."""
    X = G.bfloat16() if G.is_cuda else G.float()
    transposed = X.size(-2) > X.size(-1)
    if transposed:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.02 + 1e-7)
    for a, b, c in POLAR_EXPRESS[:steps]:
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    if transposed:
        X = X.mT
    return X.to(G.dtype)


class MuonH(torch.optim.Optimizer):
    """Muon with updates and weights kept on the sphere of each matrix's initial norm."""

    def __init__(self, params, lr: float, momentum: float = 0.95, ns_steps: int = 5):
        super().__init__(params, dict(lr=lr, momentum=momentum, ns_steps=ns_steps))
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"MuonH takes 2-D matrices only, got shape {tuple(p.shape)}")
                self.state[p]["radius"] = p.detach().float().norm().item()
                self.state[p]["momentum_buffer"] = torch.zeros_like(p)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            by_shape = defaultdict(list)
            for p in group["params"]:
                if p.grad is not None:
                    by_shape[tuple(p.shape)].append(p)
            for params in by_shape.values():
                self._update_same_shape(params, group)
        return loss

    def _update_same_shape(self, params: list[torch.Tensor], group: dict) -> None:
        mu = group["momentum"]
        grads = []
        for p in params:
            buf = self.state[p]["momentum_buffer"]
            buf.mul_(mu).add_(p.grad)
            grads.append(p.grad.add(buf, alpha=mu))  # Nesterov
        ortho = polar_express(torch.stack(grads), group["ns_steps"])
        for p, update in zip(params, ortho):
            radius = self.state[p]["radius"]
            update = update * (radius / (update.norm() + 1e-12))
            p.add_(update, alpha=-group["lr"])
            p.mul_(radius / (p.norm() + 1e-12))


@dataclass(frozen=True)
class Recipe:
    """Learning rates at a reference configuration and the rules that transfer them.

    AdamW rates scale as (d / d_ref)^-0.5, every rate as (B / B_ref)^0.558, and the MuonH rate as
    (D / D_ref)^-0.32, where D_ref is the reference run's token count (one for looped models and
    one for r = 1).
    """

    muon_lr: float = 0.014
    # MuonH rate of the plain (r = 1) model at the reference; None means the same as muon_lr.
    muon_lr_plain: float | None = None
    embed_lr: float = 0.3
    head_lr: float = 0.004
    norm_lr: float = 0.005
    scalar_lr: float = 0.01  # hyperconnection scalars
    momentum: float = 0.95
    adam_betas: tuple[float, float] = (0.8, 0.95)
    adam_eps: float = 1e-10
    final_lr_fraction: float = 0.1  # linear decay from peak to this fraction, no warmup
    warmup_steps: int = 0
    d_ref: int = 640
    tokens_per_step_ref: int = 262_144
    tokens_ref_looped: int = 1_016_083_200
    tokens_ref_plain: int = 983_315_200
    width_exponent: float = -0.5
    batch_exponent: float = 0.558
    tokens_exponent: float = -0.32

    @classmethod
    def from_dict(cls, values: dict) -> "Recipe":
        values = dict(values)
        if "adam_betas" in values:
            values["adam_betas"] = tuple(values["adam_betas"])
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown recipe keys {unknown}; known keys are {sorted(known)}")
        return cls(**values)

    def learning_rates(self, d_model: int, tokens_per_step: int, tokens: int, looped: bool) -> dict:
        """Peak learning rates of each parameter group for one run."""
        width = (d_model / self.d_ref) ** self.width_exponent
        batch = (tokens_per_step / self.tokens_per_step_ref) ** self.batch_exponent
        d_ref = self.tokens_ref_looped if looped else self.tokens_ref_plain
        duration = (tokens / d_ref) ** self.tokens_exponent
        muon_ref = self.muon_lr if (looped or self.muon_lr_plain is None) else self.muon_lr_plain
        return {
            "muon": muon_ref * duration * batch,
            "embed": self.embed_lr * width * batch,
            "head": self.head_lr * width * batch,
            "norm": self.norm_lr * width * batch,
            "scalar": self.scalar_lr * width * batch,
        }


def lr_multiplier(step: int, total_steps: int, final_fraction: float, warmup_steps: int = 0) -> float:
    """Linear warmup (none by default), then linear decay so the last step runs at final_fraction."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - 1 - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return 1.0 - (1.0 - final_fraction) * progress


def parameter_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Split parameters into MuonH matrices and the AdamW groups, checking nothing is left over."""
    groups = {"muon": [], "embed": [], "head": [], "norm": [], "scalar": []}
    for name, p in model.named_parameters():
        if name.startswith("embed."):
            groups["embed"].append(p)
        elif name.startswith("lm_head."):
            groups["head"].append(p)
        elif name.startswith("hyper."):
            groups["scalar"].append(p)
        elif p.dim() == 2:
            groups["muon"].append(p)
        elif p.dim() == 1:
            groups["norm"].append(p)
        else:
            raise ValueError(f"parameter {name} of shape {tuple(p.shape)} has no optimiser group")
    return groups


@dataclass
class Optimizers:
    """MuonH and AdamW with their peak learning rates, stepped and scheduled together."""

    muon: MuonH
    adam: torch.optim.AdamW
    peak: dict = field(default_factory=dict)

    def set_lr(self, multiplier: float) -> None:
        for group in self.muon.param_groups + self.adam.param_groups:
            group["lr"] = self.peak[group["name"]] * multiplier

    def step(self) -> None:
        self.muon.step()
        self.adam.step()

    def zero_grad(self) -> None:
        self.muon.zero_grad(set_to_none=True)
        self.adam.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adam": self.adam.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.muon.load_state_dict(state["muon"])
        self.adam.load_state_dict(state["adam"])


def build_optimizers(model: nn.Module, recipe: Recipe, peak: dict) -> Optimizers:
    groups = parameter_groups(model)
    muon = MuonH([{"params": groups["muon"], "name": "muon", "lr": peak["muon"]}],
                 lr=peak["muon"], momentum=recipe.momentum)
    adam_groups = [
        {"params": groups[name], "name": name, "lr": peak[name]}
        for name in ("embed", "head", "norm", "scalar")
        if groups[name]
    ]
    adam = torch.optim.AdamW(adam_groups, betas=recipe.adam_betas, eps=recipe.adam_eps,
                             weight_decay=0.0, foreach=True)
    return Optimizers(muon=muon, adam=adam, peak=dict(peak))

