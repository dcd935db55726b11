"""Model configuration shared by the model, the accounting and the trainer."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

INJECTION_MODES = ("linear", "additive", "passthrough", "hyperconnections")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a prelude-recur-coda looped transformer.

    The executed (effective) depth is n_prelude + n_recur_layers * recurrences + n_coda.
    With recurrences = 1 the model is a plain stack and has no injection layer.
    """

    d_model: int
    head_dim: int
    vocab_size: int  # tokens the tokenizer produces (embedding rows)
    padded_vocab_size: int  # lm_head rows, vocab rounded up for matmul efficiency
    seq_len: int  # context length T in tokens
    n_prelude: int
    n_recur_layers: int  # unique layers in the shared block
    n_coda: int
    recurrences: int  # r
    injection: str = "linear"
    hc_lanes: int = 2  # K, used only by hyperconnections
    grad_recurrences: int | None = None  # k: recurrences with gradient; None = all (full backprop)
    rope_base: float = 10000.0
    softcap: float = 15.0
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.d_model % self.head_dim != 0:
            raise ValueError(
                f"d_model={self.d_model} is not a multiple of head_dim={self.head_dim}; "
                "choose a width that is a multiple of the head dimension"
            )
        if self.padded_vocab_size < self.vocab_size:
            raise ValueError(
                f"padded_vocab_size={self.padded_vocab_size} is below vocab_size={self.vocab_size}"
            )
        if self.recurrences < 1:
            raise ValueError(f"recurrences={self.recurrences} must be at least 1")
        if self.injection not in INJECTION_MODES:
            raise ValueError(f"injection={self.injection!r} is not one of {INJECTION_MODES}")
        k = self.grad_recurrences
        if k is not None and not 1 <= k <= self.recurrences:
            raise ValueError(
                f"grad_recurrences={k} must lie in [1, recurrences={self.recurrences}]"
            )
        if self.injection == "hyperconnections" and k is not None and k != self.recurrences:
            raise ValueError("hyperconnections support full backprop only; drop grad_recurrences")

    @property
    def n_head(self) -> int:
        return self.d_model // self.head_dim

    @property
    def effective_depth(self) -> int:
        return self.n_prelude + self.n_recur_layers * self.recurrences + self.n_coda

    @property
    def looped(self) -> bool:
        return self.recurrences > 1

    @property
    def k_grad(self) -> int:
        """Recurrences that carry gradient (k); the other r - k run forward only."""
        return self.recurrences if self.grad_recurrences is None else self.grad_recurrences

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known keys are {sorted(known)}")
        return cls(**values)


def iso_depth_config(
    *,
    d_model: int,
    recurrences: int,
    effective_depth: int,
    n_prelude: int,
    n_coda: int,
    head_dim: int,
    vocab_size: int,
    seq_len: int,
    pad_vocab_to: int = 64,
    injection: str = "linear",
    grad_recurrences: int | None = None,
    hc_lanes: int = 2,
) -> ModelConfig:
    """Build the iso-depth configuration: the shared block has (depth - prelude - coda) / r layers.

    r = 1 is the plain model: all effective_depth layers form one block run once, with no
    prelude, coda or injection (the study's code builds its non-looped baseline the same way,
    so the recurrence norm directly precedes the final norm).
    """
    recur_total = effective_depth - n_prelude - n_coda
    if recur_total <= 0 or recur_total % recurrences != 0:
        raise ValueError(
            f"effective_depth={effective_depth} minus prelude {n_prelude} and coda {n_coda} "
            f"leaves {recur_total} recurrent layers, not a positive multiple of r={recurrences}"
        )
    if recurrences == 1:
        n_prelude, n_coda, recur_total = 0, 0, effective_depth
    padded = int(math.ceil(vocab_size / pad_vocab_to) * pad_vocab_to)
    return ModelConfig(
        d_model=d_model,
        head_dim=head_dim,
        vocab_size=vocab_size,
        padded_vocab_size=padded,
        seq_len=seq_len,
        n_prelude=n_prelude,
        n_recur_layers=recur_total // recurrences,
        n_coda=n_coda,
        recurrences=recurrences,
        injection=injection if recurrences > 1 else "linear",
        grad_recurrences=grad_recurrences,
        hc_lanes=hc_lanes,
    )
