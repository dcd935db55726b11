"""Command-line options of a training run, kept free of torch so building the CLI parser stays fast."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

EVAL_BATCH_ROWS = 32  # rows per validation forward pass


def _integer_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: give an integer of at least {minimum}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    return _integer_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer of at least 0."""
    return _integer_at_least(text, 0)


def positive_float(text: str) -> float:
    """argparse type: a finite number above 0."""
    value = _number(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not allowed: give a finite number above 0")
    return value


def positive_seconds(text: str) -> float:
    """argparse type: a number of seconds above 0, where inf means never."""
    value = _number(text)
    if math.isnan(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not allowed: give a number of seconds above 0, or inf for never")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """Options of one training run, shared by `python -m isodepth.train` and `isodepth train`."""
    parser.add_argument("--device", default="cpu",
                        help="torch device: cpu, or cuda (each torchrun rank takes the GPU of its LOCAL_RANK)")
    parser.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch")
    parser.add_argument("--compile", action="store_true", help="compile the model with torch.compile")
    parser.add_argument("--micro-batch-rows", type=positive_int, default=None,
                        help="rows per forward pass on each rank (default: the grid's batch.micro_rows)")
    parser.add_argument("--eval-batch-rows", type=positive_int, default=EVAL_BATCH_ROWS,
                        help=f"rows per validation forward pass on each rank (default {EVAL_BATCH_ROWS})")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder of pre-packed parquet shards to train on (default: the grid's data "
                             "section, else the embedded corpus)")
    parser.add_argument("--checkpoint-every-s", type=positive_seconds, default=120.0,
                        help="save a resumable checkpoint after this many seconds (default 120; inf: never)")
    parser.add_argument("--checkpoint-every-steps", type=positive_int, default=None,
                        help="also save a resumable checkpoint every this many optimiser steps")
    parser.add_argument("--keep-checkpoint", action="store_true",
                        help="keep the final weights in checkpoints/GRID/RUN/final")
    parser.add_argument("--runs-dir", type=Path, default=None, help="folder of run records (default data/runs)")
    parser.add_argument("--checkpoint-dir", type=Path, default=None, help="folder of checkpoints (default checkpoints)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="show a progress bar (default: when stderr is a terminal)")
