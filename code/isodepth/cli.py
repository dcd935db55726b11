"""Command line: `isodepth plan | train | sweep | collect | fit | equivalence | corpus | download | export | release | convert | eval`."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys

log = logging.getLogger("isodepth")


def _plan(args) -> int:
    from .grids import PLAN_COLUMNS, load_grid

    runs = load_grid(args.grid).runs()
    if args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=PLAN_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for run in runs:
            row = run.plan_row()
            row["flops_per_token"] = f"{row['flops_per_token']:.0f}"
            row["budget"] = f"{row['budget']:.3g}"
            writer.writerow(row)
    else:
        for run in runs:
            print(json.dumps({**run.plan_row(), "learning_rates": run.learning_rates}))
    return 0


def _train(args) -> int:
    import torch

    from .grids import load_grid
    from .train import train_run

    if args.threads:
        torch.set_num_threads(args.threads)
    runs = {r.run_id: r for r in load_grid(args.grid).runs()}
    if args.run not in runs:
        raise SystemExit(f"run {args.run!r} is not in grid {args.grid!r}; "
                         f"list the runs with `isodepth plan {args.grid}`")
    record = train_run(runs[args.run], device=args.device, progress=True,
                       keep_checkpoint=args.keep_checkpoint)
    print(json.dumps({k: record[k] for k in ("run_id", "status", "final_val_loss", "wall_time_s")}))
    return 0 if record["status"] == "completed" else 1


def _sweep(args) -> int:
    from .sweep import run_sweep

    results = run_sweep(args.grid, workers=args.workers, threads_per_worker=args.threads,
                        only=args.runs, max_budget=args.max_budget, device=args.device,
                        dry_run=args.dry_run)
    if args.dry_run:
        for run_id in results:
            print(run_id)
        return 0
    failed = [k for k, v in results.items() if v == "failed"]
    if failed:
        log.error("%d runs failed: %s; rerun the sweep to retry them", len(failed), ", ".join(failed))
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="isodepth", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    plan = sub.add_parser("plan", help="print the runs of a grid with their exact accounting")
    plan.add_argument("grid", help="grid name in data/grids (paper, micro, tiny, ...) or a YAML path")
    plan.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    plan.set_defaults(func=_plan)

    train = sub.add_parser("train", help="train one run of a grid and write its record")
    train.add_argument("grid")
    train.add_argument("run", help="run id, as printed by `isodepth plan GRID`")
    train.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    train.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    train.add_argument("--keep-checkpoint", action="store_true",
                       help="keep the final weights in checkpoints/GRID/RUN/model.pt")
    train.set_defaults(func=_train)

    sweep = sub.add_parser("sweep", help="train the unfinished runs of a grid in parallel")
    sweep.add_argument("grid")
    sweep.add_argument("--workers", type=int, default=2, help="runs trained at once")
    sweep.add_argument("--threads", type=int, default=None, help="CPU threads per worker")
    sweep.add_argument("--runs", nargs="*", default=None, help="only these run ids")
    sweep.add_argument("--max-budget", type=float, default=None, help="only budgets up to this many FLOPs")
    sweep.add_argument("--device", default="cpu")
    sweep.add_argument("--dry-run", action="store_true", help="print the runs that would be trained")
    sweep.set_defaults(func=_sweep)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands():
    """Subcommands defined next to the code they drive."""
    from . import collect, corpus_cli, fit_cli
    from .evaluate import cli as evaluate_cli
    from .release import cli as release_cli

    return [collect.add_command, corpus_cli.add_command, fit_cli.add_command, release_cli.add_command,
            evaluate_cli.add_command]


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
