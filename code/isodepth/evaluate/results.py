"""Downstream result files: per-task metrics, per-axis macro averages and provenance.

A result file (format version 1) stores the numbers and what is needed to tell two results
apart. That is the checkpoint's run id, grid, recurrence count and validation loss, the
lm-eval and isodepth versions, each task's version, shots and example count, the example
limit and the tasks that were skipped for missing data.

Metrics: `loss` is the continuation loss in nats per token (token-weighted within a task),
`acc` is the greedy exact match (cloze tasks) or multiple-choice accuracy (choice tasks),
`loss_per_byte` is nats per UTF-8 byte, and `n_tokens` is the number of gold-continuation
tokens that `loss` averages over. Axis values are unweighted means over the axis's
evaluated tasks; `macro` is the unweighted mean over the axes that have a value.
"""

from __future__ import annotations

import json
import math
import time
from importlib import metadata
from pathlib import Path

from .. import paths
from ..io import atomic_write_json
from ..provenance import git_commit, library_versions
from .sources import AXES, TASKS, TaskSpec

RESULT_FORMAT = 1
METRICS = ("loss", "acc", "loss_per_byte")


def _number(value) -> float | None:
    """Return a finite float, or None for NaN, 'N/A' and missing values (JSON has no NaN)."""
    if value is None or isinstance(value, str):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _count(value) -> int | None:
    number = _number(value)
    return None if number is None else int(round(number))


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    if not present or len(present) != len(values):
        return None
    return sum(present) / len(present)


def repo_relative(path: str | None) -> str | None:
    """Return a path inside the repository relative to its root, so result files do not name the machine."""
    if path is None:
        return None
    try:
        return str(Path(path).resolve().relative_to(paths.ROOT))
    except ValueError:
        return str(path)


def _eval_library_versions() -> dict:
    versions = {}
    for name in ("lm_eval", "datasets"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def summarize(raw: dict, specs: list[TaskSpec], skipped: dict[str, str], *, wall_time_s: float,
              limit: int | float | None) -> dict:
    """Build the result file's content from lm-eval's simple_evaluate output.

    specs are the tasks that were evaluated; skipped maps task keys to the reason.
    """
    config = raw.get("config", {})
    tasks = {}
    for spec in specs:
        row = raw["results"].get(spec.task_name)
        if row is None:
            raise KeyError(f"lm-eval returned no result for task {spec.task_name}; "
                           f"it returned {sorted(raw['results'])}")
        tasks[spec.key] = {
            "axis": spec.axis,
            "lm_eval_task": spec.task_name,
            "task_version": raw.get("versions", {}).get(spec.task_name),
            "num_fewshot": raw.get("n-shot", {}).get(spec.task_name),
            "n_examples": raw.get("n-samples", {}).get(spec.task_name, {}).get("effective"),
            "dataset": spec.dataset,
            **{metric: _number(row.get(f"{metric},none")) for metric in METRICS},
            "n_tokens": _count(row.get("n_tokens,none")),
        }

    axes = {}
    for axis in AXES:
        members = [key for key, task in tasks.items() if task["axis"] == axis]
        if not members:
            continue
        expected = [s.key for s in TASKS if s.axis == axis]
        axes[axis] = {
            **{metric: _mean([tasks[k][metric] for k in members]) for metric in ("loss", "acc")},
            "tasks": members,
            "missing": [k for k in expected if k not in members],
        }
    macro = {metric: _mean([a[metric] for a in axes.values()]) for metric in ("loss", "acc")}

    return {
        "format": RESULT_FORMAT,
        "run_id": config.get("run_id"),
        "grid": config.get("grid"),
        "recurrences": config.get("recurrences"),
        "checkpoint": repo_relative(config.get("checkpoint")),
        "final_val_loss": config.get("final_val_loss"),
        "model": {**{key: config.get(key) for key in ("effective_depth", "d_model", "seq_len", "injection")},
                  "tokenizer": repo_relative(config.get("tokenizer"))},
        "tasks": tasks,
        "axes": axes,
        "macro": {**macro, "axes": list(axes)},
        "skipped": skipped,
        "limit": limit,
        "lm_eval_version": raw.get("lm_eval_version"),
        "seeds": {key: config.get(key) for key in ("random_seed", "numpy_seed", "torch_seed", "fewshot_seed")},
        "versions": {**library_versions(), **_eval_library_versions()},
        "git_commit": git_commit(),
        "wall_time_s": round(wall_time_s, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_results(path: Path, summary: dict) -> Path:
    atomic_write_json(Path(path), summary)
    return Path(path)


def load_results(path: Path) -> dict:
    """Read a result file and check its format version."""
    data = json.loads(Path(path).read_text())
    if data.get("format") != RESULT_FORMAT:
        raise ValueError(f"{path} has result format {data.get('format')!r}, expected {RESULT_FORMAT}; "
                         "rerun `isodepth eval` to rewrite it")
    return data
