"""Benchmark the joint-law fit and its block bootstrap on 116 synthetic runs shaped like the study's grid.

Prints wall times of four things: the 500-start fit (lockstep engine), the same starts
through scipy.optimize.minimize with the analytic gradient, and a 200-resample block
bootstrap. The fourth is a plain scipy L-BFGS-B fit with finite-difference gradients,
timed per start on a subset of the starts because the full set takes minutes. Targets on
2 cores: fit <= 15 s, bootstrap <= 2 min.

Run: nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python code/benchmarks/bench_fit.py [--jobs 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time

import numpy as np
import scipy
import scipy.optimize

from isodepth.fit import OptimizerSettings, block_bootstrap, draw_starts, fit_joint, validate_runs
from isodepth.fit.fits import joint_data
from isodepth.fit.objective import PARAM_NAMES, huber
from isodepth.fit.optimize import run_multistart
from isodepth.fit.synthetic import synthetic_runs


def plain_objective(data):
    """Build the scalar Huber-LSE objective without a gradient, as a straightforward scipy fit would write it."""
    log_r, log_d, log_l = np.log(data.r), np.log(data.tokens), np.log(data.loss)

    def objective(theta):
        a, b, e, alpha, beta, phi = theta
        log_n = np.log(data.n_once + np.exp(phi * log_r) * data.n_rec)
        terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
        return float(huber(scipy.special.logsumexp(terms, axis=0) - log_l, data.delta).sum())

    return objective


def time_plain(data, starts, settings) -> tuple[float, float]:
    """Time L-BFGS-B with 2-point finite-difference gradients from each start; return (seconds, best objective)."""
    objective = plain_objective(data)
    bounds = [tuple(starts.box[name]) for name in PARAM_NAMES]
    began = time.perf_counter()
    best = np.inf
    for start in starts.points:
        out = scipy.optimize.minimize(objective, start, method="L-BFGS-B", bounds=bounds,
                                      options={"maxiter": settings.max_iter, "ftol": settings.ftol, "gtol": settings.gtol})
        best = min(best, out.fun)
    return time.perf_counter() - began, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=500, help="random L-BFGS-B starts per fit (default 500)")
    parser.add_argument("--resamples", type=int, default=200, help="block-bootstrap resamples over (budget, r) cells (default 200)")
    parser.add_argument("--jobs", type=int, default=2, help="joblib workers for the bootstrap (default 2)")
    parser.add_argument("--plain-starts", type=int, default=25,
                        help="starts timed for the finite-difference baseline (default 25)")
    parser.add_argument("--serial-resamples", type=int, default=10,
                        help="resamples timed in CPU seconds on one worker (default 10)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    runs = validate_runs(synthetic_runs(noise_nats=0.01, seed=0))
    data, _ = joint_data(runs)
    starts = draw_starts(args.starts, seed=0)
    settings = OptimizerSettings()
    print(f"python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(f"data: {len(runs)} synthetic runs (paper grid, published joint law, 0.01 nats noise)")

    began = time.perf_counter()
    cpu_began = time.process_time()
    fit = fit_joint(runs, starts=starts, settings=settings)
    fit_s = time.perf_counter() - began
    fit_cpu = time.process_time() - cpu_began
    print(f"joint fit, {args.starts} starts, lockstep engine: {fit_s:.2f} s wall, {fit_cpu:.2f} s CPU "
          f"(objective {fit.objective:.9g}, phi {fit.params.phi:.4f}, status {fit.status})")

    began = time.perf_counter()
    reference = run_multistart(data, starts, settings=OptimizerSettings(engine="minimize"))
    minimize_s = time.perf_counter() - began
    print(f"same starts, scipy.optimize.minimize per start with the analytic gradient: {minimize_s:.2f} s "
          f"(best objective {reference.objective[reference.best_index]:.9g})")

    subset = type(starts)(points=starts.points[:args.plain_starts], seed=starts.seed, box=starts.box)
    plain_s, plain_best = time_plain(data, subset, settings)
    per_start_plain = plain_s / args.plain_starts
    per_start_fit = fit_s / args.starts
    print(f"plain scipy L-BFGS-B with finite-difference gradients: {plain_s:.2f} s for the first {args.plain_starts} "
          f"starts = {1e3 * per_start_plain:.1f} ms per start (best objective of those {plain_best:.9g})")
    print(f"time per start: lockstep {1e3 * per_start_fit:.2f} ms, minimize + analytic gradient "
          f"{1e3 * minimize_s / args.starts:.2f} ms, finite differences {1e3 * per_start_plain:.1f} ms; "
          f"finite differences / lockstep = {per_start_plain / per_start_fit:.0f}x "
          f"(projected {per_start_plain * args.starts:.0f} s for {args.starts} starts)")

    # CPU seconds per resample in this process, so a loaded machine can still project the
    # wall time on idle cores (resamples are independent and split evenly over workers).
    cpu_began = time.process_time()
    block_bootstrap(runs, n_resamples=args.serial_resamples, starts=starts, settings=settings, n_jobs=1)
    cpu_per_resample = (time.process_time() - cpu_began) / args.serial_resamples
    print(f"bootstrap CPU time: {cpu_per_resample:.2f} s per resample ({args.serial_resamples} resamples, 1 worker); "
          f"estimate for {args.resamples} resamples on 2 idle cores: {cpu_per_resample * args.resamples / 2:.0f} s")

    began = time.perf_counter()
    boot = block_bootstrap(runs, n_resamples=args.resamples, starts=starts, settings=settings, n_jobs=args.jobs)
    boot_s = time.perf_counter() - began
    phi = boot.intervals()["phi"]
    print(f"block bootstrap, {args.resamples} resamples x {args.starts} starts, {args.jobs} workers: {boot_s:.1f} s "
          f"(phi 95% CI [{phi['low']:.3f}, {phi['high']:.3f}], {phi['n_runs']} runs, {phi['n_cells']} cells)")
    print(f"targets on 2 cores: fit <= 15 s ({'met' if fit_s <= 15 else 'missed'}), "
          f"bootstrap <= 120 s ({'met' if boot_s <= 120 else 'missed'})")


if __name__ == "__main__":
    main()
