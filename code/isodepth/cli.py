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
    from .train import run_from_args

    return run_from_args(args)


def _sweep(args) -> int:
    from .sweep import sweep_command

    return sweep_command(args)


def build_parser() -> argparse.ArgumentParser:
    from .options import add_train_options
    from .sweep import add_sweep_arguments

    parser = argparse.ArgumentParser(prog="isodepth", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    plan = sub.add_parser("plan", help="print the runs of a grid with their exact accounting")
    plan.add_argument("grid", help="grid name in data/grids (paper, micro, tiny, ...) or a YAML path")
    plan.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    plan.set_defaults(func=_plan)

    train = sub.add_parser("train", help="train one run of a grid and write its record")
    train.add_argument("grid", help="grid name in data/grids or a YAML path")
    train.add_argument("run", help="run id, as printed by `isodepth plan GRID`")
    add_train_options(train)
    train.set_defaults(func=_train)

    sweep = sub.add_parser("sweep", help="train the unfinished runs of a grid (local, multi-GPU or SLURM)")
    add_sweep_arguments(sweep)
    sweep.set_defaults(func=_sweep)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands():
    """Subcommands defined next to the code they drive."""
    from . import collect, corpus_cli
    from .fit import cli as fit_cli
    from . import paper_data
    from .evaluate import cli as evaluate_cli
    from .release import cli as release_cli

    return [collect.add_command, corpus_cli.add_command, fit_cli.add_command, release_cli.add_command,
            evaluate_cli.add_command, paper_data.add_command]


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except BrokenPipeError:
        # The reader of our output went away (e.g. `isodepth plan paper | head`): stop quietly.
        sys.stderr.close()
        return 0
    except (ValueError, KeyError, OSError) as error:
        # Bad input: a grid, run id, path or value the commands reject with a message that
        # names it and the fix. -v keeps the traceback for debugging.
        if args.verbose:
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"isodepth: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
