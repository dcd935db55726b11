"""Command line: `isodepth fit RUNS.csv` (joint law, diagnostics, bootstrap) and `isodepth equivalence`."""

from __future__ import annotations

import logging
from pathlib import Path

from ..io import ensure_writable_dir
from ..options import non_negative_int, positive_int
from .conventions import CONVENTIONS, LITERAL
from .io import RunTableError, read_runs, write_json

log = logging.getLogger(__name__)

EXIT_OK, EXIT_NOT_CONVERGED, EXIT_BAD_INPUT = 0, 1, 2


def add_command(subparsers) -> None:
    """Register the `fit` and `equivalence` subcommands on an argparse subparsers object."""
    fit = subparsers.add_parser("fit", help="fit the joint iso-depth scaling law to a run table",
                                description="Fit L = E + A (N_once + r^phi N_rec)^-alpha + B D^-beta to a run table "
                                            "(CSV with at least r, n_once, n_rec, tokens, loss) by multi-start "
                                            "L-BFGS-B on the Huber loss of log L.")
    fit.add_argument("runs", help="run table CSV, e.g. data/derived/runs.csv")
    fit.add_argument("--json", dest="json_out", default=None, help="write the full results (full precision) to this JSON file")
    fit.add_argument("--starts", type=positive_int, default=500, help="random L-BFGS-B starts per fit (default 500)")
    fit.add_argument("--seed", type=int, default=0,
                     help="seed of the start set; also seeds the bootstrap cell draws (default 0)")
    fit.add_argument("--convention", choices=CONVENTIONS, default=LITERAL,
                     help="N_once/N_rec split: the columns as given (literal) or a per-width least-squares split")
    fit.add_argument("--bootstrap", type=non_negative_int, default=0, metavar="N",
                     help="block-bootstrap resamples over (budget, r) cells for 95%% intervals (default 0: none; the study used 200)")
    fit.add_argument("--extended", action="store_true",
                     help="also fit phi = 0 and phi = 1, one Chinchilla law per r, the budget stability split "
                          "and the iso-FLOPs profiles")
    fit.add_argument("--jobs", type=int, default=-1, help="joblib workers for the bootstrap (default -1: all cores)")
    fit.set_defaults(func=run_fit)

    eq = subparsers.add_parser("equivalence", help="what a looped model is worth in non-looped parameters",
                               description="Effective parameters N_eff = N_once + r^phi N_rec of a looped model, the "
                                           "non-looped model it behaves like and the r = 1 model whose training cost it pays.")
    eq.add_argument("--r", type=int, required=True, help="recurrences of the looped model")
    eq.add_argument("--size", type=float, required=True, help="size s; the width is d = width-per-size * s")
    eq.add_argument("--phi", type=float, default=0.46, help="recurrence-equivalence exponent (default 0.46)")
    eq.add_argument("--width-per-size", type=int, default=64, help="channels per unit of size (default 64)")
    eq.add_argument("--effective-depth", type=int, default=20, help="layers executed per token (default 20)")
    eq.add_argument("--prelude", type=int, default=2, help="prelude layers (default 2)")
    eq.add_argument("--coda", type=int, default=2, help="coda layers (default 2)")
    eq.add_argument("--head-dim", type=int, default=128, help="attention head dimension (default 128)")
    eq.add_argument("--vocab-size", type=int, default=32001, help="tokenizer vocabulary (default 32001)")
    eq.add_argument("--seq-len", type=int, default=2048, help="context length in tokens (default 2048)")
    eq.add_argument("--pad-vocab-to", type=int, default=64, help="lm_head rows are padded to a multiple of this (default 64)")
    eq.add_argument("--split-r", type=int, nargs="+", default=None,
                    help="recurrence counts for the least-squares N_once/N_rec split (default 1 2 4 8)")
    eq.add_argument("--json", dest="json_out", default=None, help="write the result to this JSON file")
    eq.set_defaults(func=run_equivalence)


def _format_params(params: dict) -> str:
    parts = []
    for name in ("A", "alpha", "B", "beta", "E", "phi"):
        if params.get(name) is not None:
            parts.append(f"{name} = {params[name]:.6g}")
    return ", ".join(parts)


def run_fit(args) -> int:
    """Handler of `isodepth fit`; returns 0 when the joint fit converged, 1 when not, 2 on invalid input."""
    from .bootstrap import block_bootstrap
    from .fits import joint_residuals
    from .optimize import OptimizerSettings, draw_starts

    try:
        runs = read_runs(args.runs)
        if args.json_out:
            ensure_writable_dir(Path(args.json_out).resolve().parent, "--json")
    except (RunTableError, FileNotFoundError, ValueError) as err:
        log.error("%s", err)
        return EXIT_BAD_INPUT
    try:
        starts = draw_starts(args.starts, args.seed)
    except ValueError as err:
        log.error("invalid --starts: %s", err)
        return EXIT_BAD_INPUT
    settings = OptimizerSettings()
    report = {"schema": "isodepth.fit-report/1", "source": str(args.runs), "convention": args.convention,
              "n_runs": len(runs)}
    try:
        joint = _fit_joint(runs, args.convention, starts, settings)
    except RunTableError as err:
        log.error("%s", err)
        return EXIT_BAD_INPUT
    report["joint"] = joint.to_dict()
    residuals = joint_residuals(runs, joint)
    report["residuals"] = residuals

    diag = joint.diagnostics
    print(f"joint law on {joint.n_runs} runs ({joint.n_cells or 'no budget column, so no'} cells), "
          f"N_once/N_rec convention: {args.convention}")
    print(f"  {_format_params(joint.params.to_dict())}, r2 = {joint.r2:.5f}")
    print(f"  Huber objective {joint.objective:.6g} (delta {joint.huber_delta:g}), RMSE {joint.rmse_nats:.4g} nats, "
          f"max |residual| {joint.max_abs_residual_nats:.4g} nats")
    print(f"  status {diag['status']} ({diag['optimizer_message']}), gradient norm {diag['grad_norm']:.3g}, "
          f"{diag['n_starts_at_best']} of {diag['n_starts']} starts at the best objective, start seed {joint.start_seed}, "
          f"{diag['wall_time_s']:.2f} s")
    for key, row in residuals["per_r"].items():
        print(f"  residuals {key}: n {row['n']}, mean {row['mean']:+.4f}, max |res| {row['max_abs']:.4f}, "
              f"RMSE {row['rmse']:.4f} nats")

    if args.bootstrap > 0:
        try:
            boot = block_bootstrap(runs, convention=args.convention, n_resamples=args.bootstrap, seed=args.seed,
                                   starts=starts, settings=settings, n_jobs=args.jobs, progress=True)
        except RunTableError as err:
            log.error("%s", err)
            return EXIT_BAD_INPUT
        report["bootstrap"] = boot.to_dict()
        for name, interval in boot.intervals().items():
            print(f"  {name}: {100 * interval['level']:.0f}% CI [{interval['low']:.6g}, {interval['high']:.6g}] "
                  f"({interval['n_runs']} runs, {interval['n_cells']} cells, {interval['n_resamples']} resamples)")

    if args.extended:
        report.update(_extended(runs, args.convention, starts, settings))

    if args.json_out:
        write_json(args.json_out, report)
    if joint.status != "converged":
        log.warning("the joint fit did not converge cleanly (status %s); see the diagnostics", joint.status)
        return EXIT_NOT_CONVERGED
    return EXIT_OK


def _fit_joint(runs, convention, starts, settings):
    from .fits import fit_joint

    return fit_joint(runs, convention=convention, starts=starts, settings=settings)


def _extended(runs, convention, starts, settings) -> dict:
    from .bootstrap import stability_split
    from .fits import fit_per_r, fit_restricted
    from .isoflops import isoflops_profiles

    out = {}
    restricted = fit_restricted(runs, convention=convention, starts=starts, settings=settings)
    out["restricted"] = {f"phi_{phi:g}": fit.to_dict() for phi, fit in restricted.items()}
    for phi, fit in restricted.items():
        print(f"  phi fixed at {phi:g}: {_format_params(fit.params.to_dict())}, r2 = {fit.r2:.5f}, status {fit.status}")
    try:
        per_r = fit_per_r(runs, starts=starts, settings=settings)
        out["per_r"] = {f"r{r}": fit.to_dict() for r, fit in per_r.items()}
        for r, fit in per_r.items():
            print(f"  Chinchilla r = {r}: {_format_params(fit.params.to_dict())}, "
                  f"Huber {fit.objective * 1e5:.3f}e-5, r2 = {fit.r2:.5f}, status {fit.status}")
    except RunTableError as err:
        log.warning("per-r fits skipped: %s", err)
    if "budget" in runs.columns and runs["budget"].nunique() >= 2:
        split = stability_split(runs, convention=convention, starts=starts, settings=settings)
        out["stability"] = {"k": split["k"], **{side: {"budgets": split[side]["budgets"], "n_runs": split[side]["n_runs"],
                                                       "fit": split[side]["fit"].to_dict()} for side in ("low", "high")}}
        for side in ("low", "high"):
            print(f"  {side} budgets {split[side]['budgets']}: phi = {split[side]['params']['phi']:.4f} "
                  f"({split[side]['n_runs']} runs)")
        out["isoflops"] = [cell.to_dict() for cell in isoflops_profiles(runs)]
    return out


def run_equivalence(args) -> int:
    """Handler of `isodepth equivalence`; prints the looped model's equivalents and returns 0."""
    from .equivalence import Architecture, equivalence

    arch = Architecture(width_per_size=args.width_per_size, effective_depth=args.effective_depth,
                        n_prelude=args.prelude, n_coda=args.coda, head_dim=args.head_dim, vocab_size=args.vocab_size,
                        seq_len=args.seq_len, pad_vocab_to=args.pad_vocab_to)
    try:
        result = equivalence(args.r, args.size, args.phi, arch, args.split_r)
    except ValueError as err:
        log.error("%s", err)
        return EXIT_BAD_INPUT
    looped = result["looped"]
    print(f"r = {args.r}, size {args.size:g} (d = {result['d_model']}), phi = {args.phi:g}, "
          f"effective depth {arch.effective_depth} = {arch.n_prelude} + {looped['unique_block_layers']} x {args.r} + {arch.n_coda}")
    print(f"  unique parameters: N_once {looped['n_once']:,} + N_rec {looped['n_rec']:,} = {looped['n_total']:,} "
          f"({result['unique_param_ratio']:.3f}x the r = 1 model of equal width)")
    for name, entry in result["behaves_like"].items():
        print(f"  behaves like ({name} split): N_eff {entry['n_eff']:,.0f} = {entry['ratio_to_r1_same_width']:.3f}x the r = 1 model, "
              f"a plain model of width {entry['plain_width']:.1f} (size {entry['plain_size']:.2f})")
    layers = result["layer_view"]
    print(f"  layer view: {layers['equivalent_layers']:.2f} of {arch.effective_depth} layers = {layers['ratio']:.3f}x")
    pays = result["pays_for"]
    print(f"  pays for: {pays['definition']}: N {pays['n_total']:,}, training FLOPs per token ratio "
          f"{pays['train_flops_ratio']:.4f}")
    if args.json_out:
        write_json(args.json_out, result)
    return EXIT_OK
