"""Downstream evaluation of isodepth checkpoints with lm-eval (lm-evaluation-harness).

Importing `isodepth.evaluate.adapter` (or calling `register()`) registers the lm-eval model
`isodepth`; after that `lm_eval.simple_evaluate(model="isodepth", model_args={"checkpoint": ...})`
works. lm-eval's own command line is available as `python -m isodepth.evaluate run ...`, which
registers the model and adds this package's task folder to --include_path. This package does
not import lm-eval until it is needed, so `isodepth` commands stay fast.
"""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "tasks"


def register() -> None:
    """Register the lm-eval model `isodepth` (idempotent)."""
    from . import adapter  # noqa: F401  (registration happens at import)
