"""Learning-rate optima from sweeps: the vertex of a quadratic in log(lr), regret and a shared rate.

The vertex rule: fit loss = c2 log(lr)^2 + c1 log(lr) + c0 through the best sampled rate and up
to two neighbours on each side. A convex fit gives the vertex, clipped to the rates of that
window. With fewer than three distinct rates in the window, or a concave fit, the best sampled
rate replaces the vertex.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

# Sampled rates on each side of the best one that enter the quadratic.
HALF_WINDOW = 2


@dataclass(frozen=True)
class LrOptimum:
    """Optimal learning rate of one sweep series.

    lr is the vertex, or the best sampled rate as `method` records. loss is the fitted loss there in
    nats, or the best sampled loss when no quadratic is used. bracketed is True when sampled
    rates with a higher loss lie on both sides of the optimum, so the sweep locates it. It is
    False when the optimum sits at the edge of the sampled rates and is only a bound.
    """

    lr: float
    loss: float
    bracketed: bool
    method: str  # "vertex", "vertex clipped to the sampled rates" or "best sampled rate"
    n_rates: int

    def to_dict(self) -> dict:
        return asdict(self)


def lr_optimum(lr, loss, half_window: int = HALF_WINDOW) -> LrOptimum:
    """Locate the optimal rate of one series from its (lr, final loss) pairs.

    Raises ValueError for an empty series, for a rate that is not positive and for a loss that
    is not finite, because a diverged run must be excluded before this step.
    """
    lr = np.asarray(lr, dtype=float)
    loss = np.asarray(loss, dtype=float)
    if lr.shape != loss.shape or lr.ndim != 1 or lr.size == 0:
        raise ValueError(f"lr and loss must be two 1-D arrays of one non-zero length, got shapes "
                         f"{lr.shape} and {loss.shape}")
    if not np.all(lr > 0):
        raise ValueError(f"learning rates must be positive, got {lr.tolist()}")
    if not np.all(np.isfinite(loss)):
        raise ValueError(f"losses must be finite, got {loss.tolist()}; exclude diverged runs first")

    order = np.argsort(lr, kind="stable")
    lr, loss = lr[order], loss[order]
    best = int(np.argmin(loss))
    n_rates = int(np.unique(lr).size)
    best_sampled = LrOptimum(lr=float(lr[best]), loss=float(loss[best]),
                             bracketed=0 < best < lr.size - 1, method="best sampled rate",
                             n_rates=n_rates)

    window = slice(max(best - half_window, 0), min(best + half_window + 1, lr.size))
    if np.unique(lr[window]).size < 3:
        return best_sampled
    log_lr = np.log(lr[window])
    c2, c1, c0 = np.polyfit(log_lr, loss[window], 2)
    if c2 <= 0:
        return best_sampled

    raw_vertex = -c1 / (2 * c2)
    low, high = log_lr.min(), log_lr.max()
    clipped = min(max(raw_vertex, low), high)
    inside = low < raw_vertex < high
    return LrOptimum(lr=float(math.exp(clipped)), loss=float(c2 * clipped**2 + c1 * clipped + c0),
                     bracketed=bool(inside), method="vertex" if inside else "vertex clipped to the sampled rates",
                     n_rates=n_rates)


def regret(loss) -> np.ndarray:
    """Return each loss minus the lowest loss of its series (nats, zero at the best run)."""
    loss = np.asarray(loss, dtype=float)
    return loss - loss.min()


def shared_rate(regrets: dict[str, dict[float, float]]) -> tuple[float, float] | None:
    """Pick the one rate that keeps the worst regret over all series lowest.

    regrets maps a series name to {rate: regret}. Only rates sampled in every series are
    candidates. Returns (rate, worst regret in nats), or None when no rate is sampled in
    every series.
    """
    if not regrets:
        return None
    common = set.intersection(*(set(series) for series in regrets.values()))
    if not common:
        return None
    worst = {rate: max(series[rate] for series in regrets.values()) for rate in sorted(common)}
    rate = min(worst, key=lambda candidate: (worst[candidate], candidate))
    return rate, worst[rate]
