"""Equivalence calculator: what one looped model is worth in non-looped parameters.

For a looped model (r recurrences, width d = width_per_size * size) and an exponent phi:
- behaves like: the non-looped model with N = N_eff = N_once + r^phi N_rec, i.e. the same
  loss at the same training tokens. It is given as a parameter count, as a ratio to the
  r = 1 model of equal width, and as the width of a plain model of the same effective depth.
- pays for: the r = 1 model of equal width and effective depth. It executes the same layers
  per token, so its training FLOPs per token are equal up to the injection layer (the ratio
  is reported). Its N is the count a looped model would need to match at no extra compute.
- layer view: (n_prelude + n_coda + r^phi * unique block layers) / effective_depth, the
  ratio in units of layers that ignores norms and the injection layer; at the study's
  scale and r = 4 this is (4 + 4 * 4^0.46) / 20 = 0.578.
Parameter counts and FLOPs come from isodepth.accounting for the iso-depth configuration.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import scipy.optimize

from ..accounting import forward_flops_per_token, layer_params, param_counts, train_flops_per_token
from ..config import iso_depth_config
from .conventions import fit_block_split
from .laws import effective_params

DEFAULT_PHI = 0.46  # the study's phi = 0.459, rounded as in its worked example


@dataclass(frozen=True)
class Architecture:
    """Iso-depth family; defaults are the study's: d = 64 s, depth 20 = 2 + 16 + 2, head dim 128, Llama-2 vocabulary."""

    width_per_size: int = 64
    effective_depth: int = 20
    n_prelude: int = 2
    n_coda: int = 2
    head_dim: int = 128
    vocab_size: int = 32001
    seq_len: int = 2048
    pad_vocab_to: int = 64
    injection: str = "linear"

    @property
    def recurrent_layers(self) -> int:
        """Layers executed inside the recurrence per token (unique block layers x r)."""
        return self.effective_depth - self.n_prelude - self.n_coda

    def config(self, r: int, size: float):
        d_model = int(round(self.width_per_size * size))
        return iso_depth_config(d_model=d_model, recurrences=r, effective_depth=self.effective_depth,
                                n_prelude=self.n_prelude, n_coda=self.n_coda, head_dim=self.head_dim,
                                vocab_size=self.vocab_size, seq_len=self.seq_len, pad_vocab_to=self.pad_vocab_to,
                                injection=self.injection)

    def default_split_recurrences(self) -> tuple[int, ...]:
        """Return the study's r in {1, 2, 4, 8} that divide the recurrent layers."""
        return tuple(r for r in (1, 2, 4, 8) if self.recurrent_layers % r == 0)


def plain_params(d_model: float, effective_depth: int) -> float:
    """N of a non-looped model (r = 1) of a real-valued width: depth layers plus three model norm scales."""
    return effective_depth * layer_params(d_model) + 3.0 * d_model


def plain_width_for(n_params: float, effective_depth: int) -> float:
    """Width d (real-valued) of the non-looped model of this effective depth with N = n_params."""
    return float(scipy.optimize.brentq(lambda d: plain_params(d, effective_depth) - n_params, 1e-6, 1e7, xtol=1e-9))


def _counts(arch: Architecture, r: int, size: float) -> dict:
    cfg = arch.config(r, size)
    counts = param_counts(cfg)
    # Unique layers of the shared block in the looped family. An r = 1 config is a plain
    # stack of all layers, but the study's split counts its block as the recurrent 16 only.
    return {"r": r, "d_model": cfg.d_model, "n_once": counts.n_once, "n_rec": counts.n_rec,
            "n_total": counts.n_total, "unique_block_layers": arch.recurrent_layers // r,
            "train_flops_per_token": train_flops_per_token(cfg), "forward_flops_per_token": forward_flops_per_token(cfg)}


def least_squares_split_at(arch: Architecture, size: float, recurrences) -> dict:
    """Fitted N_once(s) and n_block(s) across the given r at one width."""
    rows = [_counts(arch, r, size) for r in recurrences]
    layers = np.array([row["unique_block_layers"] for row in rows], dtype=float)
    totals = np.array([row["n_total"] for row in rows], dtype=float)
    n_once, n_block = fit_block_split(layers, totals)
    return {"n_once": n_once, "n_block": n_block, "recurrences": list(recurrences)}


def equivalence(r: int, size: float, phi: float = DEFAULT_PHI, arch: Architecture | None = None,
                split_recurrences=None) -> dict:
    """Everything one looped model is worth and costs at phi, under both N_once/N_rec conventions."""
    arch = arch or Architecture()
    if r < 1:
        raise ValueError(f"r={r} must be a positive integer")
    looped = _counts(arch, r, size)
    plain = _counts(arch, 1, size)
    split_r = tuple(sorted(set(split_recurrences or arch.default_split_recurrences()) | {1, r}))
    fitted = least_squares_split_at(arch, size, split_r)

    literal_eff = float(effective_params(looped["n_once"], looped["n_rec"], r, phi))
    ls_rec = looped["unique_block_layers"] * fitted["n_block"]
    ls_eff = float(effective_params(fitted["n_once"], ls_rec, r, phi))
    ls_plain = fitted["n_once"] + plain["unique_block_layers"] * fitted["n_block"]
    block_layers = looped["unique_block_layers"]
    equivalent_layers = arch.n_prelude + arch.n_coda + r ** phi * block_layers

    def behaves_like(n_eff: float, reference: float) -> dict:
        width = plain_width_for(n_eff, arch.effective_depth)
        return {"n_eff": n_eff, "ratio_to_r1_same_width": n_eff / reference, "plain_width": width,
                "plain_size": width / arch.width_per_size}

    return {
        "r": r, "size": size, "d_model": looped["d_model"], "phi": phi, "architecture": asdict(arch),
        "looped": looped,
        "unique_param_ratio": looped["n_total"] / plain["n_total"],
        "behaves_like": {
            "literal": behaves_like(literal_eff, plain["n_total"]),
            "least-squares": {**behaves_like(ls_eff, ls_plain), "n_once_fit": fitted["n_once"],
                              "n_rec_fit": ls_rec, "n_block_fit": fitted["n_block"],
                              "split_recurrences": list(split_r)},
        },
        "layer_view": {"equivalent_layers": equivalent_layers, "ratio": equivalent_layers / arch.effective_depth,
                       "unique_layer_ratio": (arch.n_prelude + arch.n_coda + block_layers) / arch.effective_depth},
        "pays_for": {
            "definition": "the r = 1 model of equal width and effective depth (same layers executed per token)",
            "n_total": plain["n_total"], "train_flops_per_token": plain["train_flops_per_token"],
            "train_flops_ratio": looped["train_flops_per_token"] / plain["train_flops_per_token"],
            "forward_flops_ratio": looped["forward_flops_per_token"] / plain["forward_flops_per_token"],
        },
    }


def figure1_ratios(phi: float = DEFAULT_PHI, size: float = 6, recurrences=(2, 4, 8),
                   arch: Architecture | None = None) -> dict:
    """Ratios to r = 1 at one width: unique params, and effective params under both conventions."""
    out = {"unique_params": {}, "literal": {}, "least-squares": {}, "forward_flops": {}}
    for r in recurrences:
        result = equivalence(r, size, phi, arch)
        key = f"r{r}"
        out["unique_params"][key] = result["unique_param_ratio"]
        out["literal"][key] = result["behaves_like"]["literal"]["ratio_to_r1_same_width"]
        out["least-squares"][key] = result["behaves_like"]["least-squares"]["ratio_to_r1_same_width"]
        out["forward_flops"][key] = result["pays_for"]["forward_flops_ratio"]
    return out
