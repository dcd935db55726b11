"""Repository paths, resolved from the repository root so no code depends on the working directory."""

import os
from pathlib import Path


def repo_root() -> Path:
    """Return the repository root: $ISODEPTH_ROOT if set, else the folder above code/."""
    override = os.environ.get("ISODEPTH_ROOT")
    if override:
        return Path(override).resolve()
    return Path(__file__).resolve().parents[2]


ROOT = repo_root()
DATA = ROOT / "data"
CORPUS = DATA / "corpus"
GRIDS = DATA / "grids"
RUNS = DATA / "runs"
DERIVED = DATA / "derived"
REFERENCE = DATA / "reference"
FIGURES = ROOT / "figures"
PAPER = ROOT / "paper"
GENERATED = PAPER / "generated"
CHECKPOINTS = ROOT / "checkpoints"
