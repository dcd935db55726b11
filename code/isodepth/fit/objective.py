"""Huber loss on log loss for the joint and per-architecture scaling laws, with analytic gradients.

The law is written in log space as LSE(a - alpha log N, b - beta log D, e), the log of
E + A N^-alpha + B D^-beta with a = log A, b = log B, e = log E. For the joint law
N = N_once + r^phi N_rec (the effective parameter count); a per-architecture law uses
N_rec = 0 so phi drops out. The objective is sum_i w_i Huber_delta(LSE_i - log L_i) with
L_i the validation loss in nats, and it is evaluated for a whole batch of parameter vectors
at once so that many L-BFGS-B starts share one numpy call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Order of the six law parameters in every parameter vector of this package.
PARAM_NAMES = ("a", "b", "e", "alpha", "beta", "phi")
N_PARAMS = len(PARAM_NAMES)
HUBER_DELTA = 1e-3


@dataclass(frozen=True)
class FitData:
    """Per-run inputs of the objective as float arrays of equal length.

    n_once and n_rec are the parameter counts N_once and N_rec, tokens is D and loss is
    the final validation loss in nats. weight multiplies each run's Huber term, and a
    block bootstrap resample sets it to the number of times the run was drawn.
    """

    r: np.ndarray
    n_once: np.ndarray
    n_rec: np.ndarray
    tokens: np.ndarray
    loss: np.ndarray
    weight: np.ndarray
    delta: float = HUBER_DELTA

    @classmethod
    def from_arrays(cls, r, n_once, n_rec, tokens, loss, weight=None, delta: float = HUBER_DELTA) -> "FitData":
        arrays = [np.asarray(x, dtype=float).ravel() for x in (r, n_once, n_rec, tokens, loss)]
        size = arrays[0].size
        if any(x.size != size for x in arrays):
            raise ValueError(f"r, n_once, n_rec, tokens and loss must have one value per run; got sizes {[x.size for x in arrays]}")
        weight = np.ones(size) if weight is None else np.asarray(weight, dtype=float).ravel()
        if weight.size != size:
            raise ValueError(f"weight has {weight.size} values for {size} runs")
        return cls(*arrays, weight=weight, delta=float(delta))

    @property
    def n_runs(self) -> int:
        return int(self.loss.size)

    def subset(self, mask: np.ndarray) -> "FitData":
        """Runs selected by a boolean mask or an index array."""
        return FitData(self.r[mask], self.n_once[mask], self.n_rec[mask], self.tokens[mask],
                       self.loss[mask], self.weight[mask], self.delta)

    def with_weight(self, weight: np.ndarray) -> "FitData":
        return FitData(self.r, self.n_once, self.n_rec, self.tokens, self.loss,
                       np.asarray(weight, dtype=float), self.delta)


class BatchObjective:
    """Huber-LSE objective and gradient for a batch of full parameter vectors (a, b, e, alpha, beta, phi).

    Runs with zero weight are dropped once at construction, so a bootstrap resample costs
    only its distinct runs.
    """

    def __init__(self, data: FitData):
        keep = data.weight > 0
        self.log_r = np.log(data.r[keep])
        self.n_once = data.n_once[keep]
        self.n_rec = data.n_rec[keep]
        self.log_tokens = np.log(data.tokens[keep])
        self.log_loss = np.log(data.loss[keep])
        self.weight = data.weight[keep]
        self.delta = data.delta
        self.unit_weight = bool(np.all(self.weight == 1.0))
        # dN/dphi = r^phi log(r) N_rec, so the recurrent share times log r is reused per start.
        self.n_rec_log_r = self.n_rec * self.log_r

    def log_params(self, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return log N_eff, r^phi and N_eff for each (start, run); phi has shape (k, 1)."""
        r_pow = np.exp(phi * self.log_r)
        n_eff = self.n_once + r_pow * self.n_rec
        return np.log(n_eff), r_pow, n_eff

    def residuals(self, theta: np.ndarray) -> np.ndarray:
        """Return log predicted loss minus log observed loss, shape (k, runs)."""
        theta = np.atleast_2d(theta)
        a, b, e, alpha, beta, phi = (theta[:, i:i + 1] for i in range(N_PARAMS))
        log_n, _, _ = self.log_params(phi)
        terms = np.stack([a - alpha * log_n, b - beta * self.log_tokens, np.broadcast_to(e, log_n.shape)])
        top = terms.max(axis=0)
        return top + np.log(np.exp(terms - top).sum(axis=0)) - self.log_loss

    def __call__(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return the objective (k,) and its gradient (k, 6) for parameter vectors theta (k, 6)."""
        a, b, e, alpha, beta, phi = (theta[:, i:i + 1] for i in range(N_PARAMS))
        log_n, r_pow, n_eff = self.log_params(phi)
        t_params = a - alpha * log_n
        t_tokens = b - beta * self.log_tokens

        # Log-sum-exp of the three terms relative to e. Inside the start box no exp overflows;
        # when one does (an unbounded fit far from the data), shift by the maximum instead.
        with np.errstate(over="ignore"):
            w_params = np.exp(t_params - e)
            w_tokens = np.exp(t_tokens - e)
        total = 1.0 + w_params + w_tokens
        if np.all(np.isfinite(total)):
            top = e
            w_const = 1.0
        else:
            top = np.maximum(np.maximum(t_params, t_tokens), e)
            w_params = np.exp(t_params - top)
            w_tokens = np.exp(t_tokens - top)
            w_const = np.exp(e - top)
            total = w_params + w_tokens + w_const
        res = top + np.log(total) - self.log_loss

        # Huber: psi = clip(res) is dH/dres, and H = psi (res - psi / 2) in both regimes.
        psi = np.clip(res, -self.delta, self.delta)
        huber = psi * (res - 0.5 * psi)
        if not self.unit_weight:
            huber = huber * self.weight
            psi = psi * self.weight

        # psi times the softmax weights of the three terms: d objective / d term.
        scale = psi / total
        g_params = scale * w_params
        g_tokens = scale * w_tokens
        grad = np.empty_like(theta)
        grad[:, 0] = g_params.sum(axis=1)
        grad[:, 1] = g_tokens.sum(axis=1)
        grad[:, 2] = (scale * w_const).sum(axis=1)
        grad[:, 3] = -(g_params * log_n).sum(axis=1)
        grad[:, 4] = -(g_tokens * self.log_tokens).sum(axis=1)
        grad[:, 5] = -alpha[:, 0] * (g_params * (r_pow * self.n_rec_log_r / n_eff)).sum(axis=1)
        return huber.sum(axis=1), grad


def huber(residual: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
    """Huber loss, quadratic for |residual| <= delta and linear beyond."""
    residual = np.asarray(residual, dtype=float)
    psi = np.clip(residual, -delta, delta)
    return psi * (residual - 0.5 * psi)
