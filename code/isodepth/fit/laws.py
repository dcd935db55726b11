"""The scaling laws in closed form: the joint iso-depth law and the per-architecture Chinchilla law.

Joint law (loss L in nats per token, D training tokens):
    L = E + A (N_once + r^phi N_rec)^-alpha + B D^-beta
Per-architecture law (one fit per r, N = N_once + N_rec unique non-embedding parameters):
    L = E + A N^-alpha + B D^-beta
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def effective_params(n_once, n_rec, r, phi: float):
    """N_eff = N_once + r^phi N_rec: the size of a non-looped model with the same loss at the same D."""
    return np.asarray(n_once, dtype=float) + np.power(np.asarray(r, dtype=float), phi) * np.asarray(n_rec, dtype=float)


@dataclass(frozen=True)
class LawParams:
    """Parameters of the joint law (phi set) or of a per-architecture law (phi None)."""

    A: float
    alpha: float
    B: float
    beta: float
    E: float
    phi: float | None = None

    @classmethod
    def from_theta(cls, theta, joint: bool = True) -> "LawParams":
        """Build from the fit vector (a, b, e, alpha, beta, phi) with a = log A, b = log B, e = log E."""
        a, b, e, alpha, beta, phi = (float(v) for v in theta)
        return cls(A=float(np.exp(a)), alpha=alpha, B=float(np.exp(b)), beta=beta, E=float(np.exp(e)),
                   phi=phi if joint else None)

    def theta(self) -> np.ndarray:
        return np.array([np.log(self.A), np.log(self.B), np.log(self.E), self.alpha, self.beta,
                         0.0 if self.phi is None else self.phi])

    def loss(self, n_params, tokens):
        """Loss in nats for N parameters (already effective for the joint law) and D tokens."""
        n_params = np.asarray(n_params, dtype=float)
        tokens = np.asarray(tokens, dtype=float)
        return self.E + self.A * n_params ** -self.alpha + self.B * tokens ** -self.beta

    def joint_loss(self, n_once, n_rec, r, tokens):
        """Joint-law loss in nats; needs phi."""
        if self.phi is None:
            raise ValueError("these are per-architecture parameters (no phi); use loss(N, D)")
        return self.loss(effective_params(n_once, n_rec, r, self.phi), tokens)

    def to_dict(self) -> dict:
        return {"A": self.A, "alpha": self.alpha, "B": self.B, "beta": self.beta, "E": self.E, "phi": self.phi}
