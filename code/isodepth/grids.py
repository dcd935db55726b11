"""Grid specifications (data/grids/*.yaml) and the planner that expands them into runs.

A grid fixes the architecture family (effective depth, prelude and coda, head dimension,
vocabulary, context), the batch, the recipe and, per compute budget, the sizes s (width
d = width_per_size * s) trained for every recurrence count r. The planner turns each
(budget, r, size) into a run with its exact accounting, steps, tokens and learning rates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import paths
from .accounting import ceil_half, param_counts, run_length, train_flops_per_token
from .config import ModelConfig, iso_depth_config
from .optim import Recipe

PLAN_COLUMNS = ["run_id", "budget", "r", "size", "d_model", "n_once", "n_rec", "n_total",
                "flops_per_token", "steps", "tokens"]


@dataclass(frozen=True)
class Variant:
    """A case-study variant applied to the looped runs of a grid."""

    name: str = "main"
    injection: str = "linear"
    truncated_bptt: bool = False


@dataclass(frozen=True)
class PlannedRun:
    grid: str
    run_id: str
    budget: float
    r: int
    size: int
    variant: str
    model: ModelConfig
    tokens_per_step: int
    batch_rows: int
    micro_batch_rows: int
    steps: int
    tokens: int
    flops_per_token: float
    n_once: int
    n_rec: int
    n_total: int
    learning_rates: dict
    recipe: Recipe
    seed: int
    eval_rows: int | None = None  # validation rows to evaluate; None = the whole split
    # The looped family's layout (effective depth, prelude, coda), also for r = 1 runs whose
    # own config puts every layer in one block.
    family: dict | None = None

    def plan_row(self) -> dict:
        return {
            "run_id": self.run_id, "budget": self.budget, "r": self.r, "size": self.size,
            "d_model": self.model.d_model, "n_once": self.n_once, "n_rec": self.n_rec,
            "n_total": self.n_total, "flops_per_token": self.flops_per_token,
            "steps": self.steps, "tokens": self.tokens,
        }


@dataclass(frozen=True)
class Grid:
    name: str
    spec: dict
    budgets: dict[float, list[int]]
    recurrences: list[int]
    variants: list[Variant] = field(default_factory=lambda: [Variant()])

    def runs(self) -> list[PlannedRun]:
        """Every run of the grid, in budget order so the cheapest finish first."""
        planned = []
        muon_lrs = self.spec.get("muon_lrs") or [None]
        for budget, sizes in self.budgets.items():
            for r in self.recurrences:
                for size in sizes:
                    for variant in self.variants:
                        if r == 1 and variant.name != self.variants[0].name:
                            continue  # r = 1 has no recurrence to vary; its runs are shared
                        for muon_lr in muon_lrs:
                            planned.append(plan_run(self, budget, r, size, variant, muon_lr))
        return planned


def run_id(budget: float, r: int, size: int, variant: str = "main", muon_lr: float | None = None) -> str:
    name = f"C{budget:.2e}-r{r}-s{size}".replace("e+", "e")
    if variant != "main":
        name += f"-{variant}"
    if muon_lr is not None:
        name += f"-lr{muon_lr:g}"
    return name


def plan_run(grid: Grid, budget: float, r: int, size: int, variant: Variant,
             muon_lr: float | None = None) -> PlannedRun:
    """Plan one run; muon_lr overrides the recipe's reference MuonH rate (learning-rate sweeps)."""
    spec = grid.spec
    arch = spec["model"]
    cfg = iso_depth_config(
        d_model=arch["width_per_size"] * size,
        recurrences=r,
        effective_depth=arch["effective_depth"],
        n_prelude=arch["n_prelude"],
        n_coda=arch["n_coda"],
        head_dim=arch["head_dim"],
        vocab_size=arch["vocab_size"],
        seq_len=arch["seq_len"],
        pad_vocab_to=arch.get("pad_vocab_to", 64),
        injection=variant.injection,
        grad_recurrences=ceil_half(r) if (variant.truncated_bptt and r > 1) else None,
    )
    batch = spec["batch"]
    tokens_per_step = batch["rows"] * arch["seq_len"]
    flops = train_flops_per_token(cfg)
    length = run_length(budget, flops, tokens_per_step)
    counts = param_counts(cfg)
    recipe_values = dict(spec.get("recipe", {}))
    if muon_lr is not None:
        recipe_values["muon_lr"] = muon_lr
    recipe = Recipe.from_dict(recipe_values)
    lrs = recipe.learning_rates(cfg.d_model, tokens_per_step, length.tokens, cfg.looped)
    return PlannedRun(
        grid=grid.name, run_id=run_id(budget, r, size, variant.name, muon_lr), budget=budget, r=r,
        size=size, variant=variant.name, model=cfg, tokens_per_step=tokens_per_step,
        batch_rows=batch["rows"], micro_batch_rows=batch.get("micro_rows", batch["rows"]),
        steps=length.steps, tokens=length.tokens, flops_per_token=flops,
        n_once=counts.n_once, n_rec=counts.n_rec, n_total=counts.n_total,
        learning_rates=lrs, recipe=recipe, seed=spec.get("seed", 0),
        eval_rows=spec.get("eval_rows"),
        family={key: arch[key] for key in ("effective_depth", "n_prelude", "n_coda")},
    )


def grid_path(name_or_path: str) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") and candidate.exists():
        return candidate
    path = paths.GRIDS / f"{name_or_path}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in paths.GRIDS.glob("*.yaml"))
        raise FileNotFoundError(f"grid {name_or_path!r} not found in {paths.GRIDS}; known grids: {known}")
    return path


def load_grid(name_or_path: str) -> Grid:
    path = grid_path(name_or_path)
    spec = yaml.safe_load(path.read_text())
    for key in ("name", "model", "batch", "budgets", "recurrences"):
        if key not in spec:
            raise ValueError(f"grid file {path} is missing the key {key!r}")
    budgets = {}
    for budget, sizes in spec["budgets"].items():
        value = float(budget)
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"grid file {path}: budget {budget!r} must be a positive number of FLOPs")
        budgets[value] = [int(s) for s in sizes]
    variants = [Variant(**v) for v in spec.get("variants", [{"name": "main"}])]
    return Grid(name=spec["name"], spec=spec, budgets=budgets,
                recurrences=[int(r) for r in spec["recurrences"]], variants=variants)
