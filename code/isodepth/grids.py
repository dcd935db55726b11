"""Grid specifications (data/grids/*.yaml) and the planner that expands them into runs.

A grid fixes the architecture family (effective depth, prelude and coda, head dimension,
vocabulary, context), the batch, the recipe and the runs to train. The planner turns each run
into a PlannedRun with its exact accounting, steps, tokens and learning rates.

Keys of a grid file:

- name: the grid's name. Records go to data/runs/<name>/<run_id>/record.json.
- base (optional): another grid whose model, batch, recipe, seed and eval_rows this grid
  starts from. Keys given here override the base key by key inside model, batch and recipe,
  and as a whole for seed and eval_rows. Setting rows or tokens in batch replaces both of
  the base's. A base may have a base of its own. Nothing else is inherited: budgets,
  recurrences, token_runs, variants, muon_lrs and reuse always come from this file.
- model: effective_depth, n_prelude, n_coda, head_dim, width_per_size (d = width_per_size * s),
  vocab_size, pad_vocab_to (default 64) and seq_len (the context T).
- batch: rows per optimiser step, or tokens per step (a multiple of seq_len), and micro_rows
  per forward pass (default: rows). Each grid sets its own batch, and every learning rate
  follows it through the recipe's batch rule (B / B_ref)^0.558.
- recurrences: the r trained at every budget, and the default for token_runs entries.
- budgets: compute budget C in FLOPs -> the sizes s trained at it for every r. Each grid has
  its own size lists, so a case study sets the widths it needs at each budget.
  steps = round(C / (F * B)) and D = steps * B, with F the training FLOPs per token.
- token_runs (optional): runs fixed by their token count instead of a budget. Each entry has
  sizes, optionally its own recurrences and muon_lrs, and exactly one of
    tokens: a token target (a number or a list of numbers), or
    tokens_per_param: a ratio or a list of ratios; the target is
      int(ratio * effective_params), with effective_params as defined below.
  steps = target // B (whole steps only, as in the study's scripts/base_train.py, so a run
  never trains past its target), D = steps * B, and the run's budget is its compute F * D.
  A grid needs budgets, token_runs or both.
- variants (optional, default one variant named "main" with linear injection): case-study
  changes applied to the looped runs. Each has a name (appended to the run id unless it is
  "main"), injection (linear, additive, passthrough or hyperconnections), truncated_bptt
  (gradients through the last k = ceil(r / 2) recurrences only) and hc_lanes (the K of
  hyperconnections, default 2). An r = 1 run has nothing to vary, so it is planned for the
  first variant only.
- muon_lrs (optional): MuonH rates at the recipe's reference configuration, one run each
  (learning-rate sweeps). A token_runs entry may set its own list.
- reuse (optional): runs of other grids that this grid's analysis takes in without training
  them again. One entry or a list of entries, each with grid and optional filters
  recurrences, budgets, sizes and variants (a missing filter selects everything). The reused
  runs keep their grid and run id, and their records stay in data/runs/<grid>/. The trainer
  ignores this key. The collector and the fits get the runs from reused_runs(grid) (grid
  names and run ids) or reused_plans(grid) (the PlannedRuns). Only the named grid's own
  runs are selected, not runs that it reuses in turn.
- recipe, seed, eval_rows: Recipe overrides, the initialisation seed, and the validation rows
  evaluated (None: the whole split).

load_grid checks the keys and values that planning uses when it reads a grid (sizes and r
positive integers, model keys known and complete, r dividing the recurrent layers, widths
dividing into heads, ...) and raises ValueError naming the file, the key and the value, so every
command that loads a grid reports a bad file the same way. A missing file raises
FileNotFoundError. The data key is checked where the data source is built (paper_data).

Run ids: C{budget:.2e}-r{r}-s{size} for budget runs, D{tokens:.2e}-r{r}-s{size} for runs with
a token target, and TPP{ratio:g}-r{r}-s{size} for runs with a tokens-per-parameter ratio,
each followed by -{variant} unless the variant is "main" and -lr{muon_lr:g} in a sweep.

Effective parameters (for tokens_per_param) count every non-embedding parameter once per use
in a forward pass: N_total + (r - 1) * (P_recur + P_inject). The shared block and the injection
layer (or the hyperconnection scalars) count r times. The prelude, the coda and the three
model-level norm scales count once. This is the study's count, because 10 times it at s = 10
gives its LR-transfer references D_ref exactly: 983,315,200 tokens for r = 1 and 1,016,083,200
for the r = 4 model (2 + 4x4 + 2, linear injection).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import yaml

from . import paths
from .accounting import ceil_half, param_counts, run_length, train_flops_per_token
from .config import INJECTION_MODES, ModelConfig, iso_depth_config
from .optim import Recipe

PLAN_COLUMNS = ["run_id", "budget", "r", "size", "d_model", "n_once", "n_rec", "n_total",
                "flops_per_token", "steps", "tokens"]

GRID_KEYS = ("name", "base", "model", "batch", "recurrences", "budgets", "token_runs", "variants",
             "muon_lrs", "reuse", "recipe", "seed", "eval_rows", "data")
INHERITED_KEYS = ("model", "batch", "recipe", "seed", "eval_rows", "data")
MERGED_KEYS = ("model", "batch", "recipe")  # merged key by key with the base's
TOKEN_RUN_KEYS = ("sizes", "recurrences", "tokens", "tokens_per_param", "muon_lrs")
REUSE_KEYS = ("grid", "recurrences", "budgets", "sizes", "variants")
MODEL_KEYS = ("effective_depth", "n_prelude", "n_coda", "head_dim", "width_per_size", "vocab_size",
              "pad_vocab_to", "seq_len")
OPTIONAL_MODEL_KEYS = ("pad_vocab_to",)
NON_NEGATIVE_MODEL_KEYS = ("n_prelude", "n_coda")  # every other model key must be positive
BATCH_KEYS = ("rows", "tokens", "micro_rows")
# Recipe values that the learning-rate rules divide by.
RECIPE_REFERENCE_KEYS = ("d_ref", "tokens_per_step_ref", "tokens_ref_looped", "tokens_ref_plain")


@dataclass(frozen=True)
class Variant:
    """A case-study variant applied to the looped runs of a grid."""

    name: str = "main"
    injection: str = "linear"
    truncated_bptt: bool = False
    hc_lanes: int = 2  # K, used only by hyperconnections


@dataclass(frozen=True)
class TokenRuns:
    """One token_runs entry: runs fixed by a token target or a tokens-per-parameter ratio."""

    sizes: tuple[int, ...]
    recurrences: tuple[int, ...]
    tokens: tuple[int, ...] = ()
    tokens_per_param: tuple[float, ...] = ()
    muon_lrs: tuple[float | None, ...] = (None,)


@dataclass(frozen=True)
class Reuse:
    """A selection of another grid's runs. A filter left at None selects every value."""

    grid: str
    recurrences: tuple[int, ...] | None = None
    budgets: tuple[float, ...] | None = None
    sizes: tuple[int, ...] | None = None
    variants: tuple[str, ...] | None = None

    def selects(self, run: PlannedRun) -> bool:
        if self.recurrences is not None and run.r not in self.recurrences:
            return False
        if self.sizes is not None and run.size not in self.sizes:
            return False
        if self.variants is not None and run.variant not in self.variants:
            return False
        if self.budgets is not None:
            return any(math.isclose(run.budget, budget, rel_tol=1e-9) for budget in self.budgets)
        return True


@dataclass(frozen=True)
class PlannedRun:
    grid: str
    run_id: str
    budget: float  # FLOPs: the grid's budget, or F * D for a token-specified run
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
    # Token target of a token-specified run (None for a budget run) and, for a ratio run, the
    # tokens-per-parameter ratio it came from.
    target_tokens: int | None = None
    tokens_per_param: float | None = None

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
    token_runs: list[TokenRuns] = field(default_factory=list)
    reuse: list[Reuse] = field(default_factory=list)

    def runs(self) -> list[PlannedRun]:
        """Plan every run of the grid: budget runs in budget order so the cheapest finish first,
        then the token_runs entries in file order."""
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
        for entry in self.token_runs:
            planned.extend(self._token_entry_runs(entry))
        _check_unique_ids(self.name, planned)
        return planned

    def _token_entry_runs(self, entry: TokenRuns) -> list[PlannedRun]:
        targets = [("tokens", value) for value in entry.tokens]
        targets += [("tokens_per_param", value) for value in entry.tokens_per_param]
        planned = []
        for kind, value in targets:
            for r in entry.recurrences:
                for size in entry.sizes:
                    for variant in self.variants:
                        if r == 1 and variant.name != self.variants[0].name:
                            continue
                        for muon_lr in entry.muon_lrs:
                            planned.append(plan_token_run(self, r, size, variant, muon_lr=muon_lr,
                                                          **{kind: value}))
        return planned

    def reused_runs(self) -> list[tuple[str, list[str]]]:
        return reused_runs(self)

    def reused_plans(self) -> list[PlannedRun]:
        return reused_plans(self)


def _check_unique_ids(grid_name: str, planned: list[PlannedRun]) -> None:
    seen, duplicates = set(), []
    for run in planned:
        if run.run_id in seen:
            duplicates.append(run.run_id)
        seen.add(run.run_id)
    if duplicates:
        raise ValueError(f"grid {grid_name!r} plans the run ids {sorted(set(duplicates))} more than "
                         "once; give the token targets, sizes or variants distinct values")


def run_id(budget: float, r: int, size: int, variant: str = "main", muon_lr: float | None = None) -> str:
    return _run_name(f"C{budget:.2e}".replace("e+", "e"), r, size, variant, muon_lr)


def token_run_id(r: int, size: int, variant: str = "main", muon_lr: float | None = None, *,
                 tokens: float | None = None, tokens_per_param: float | None = None) -> str:
    """Format the run id of a token-specified run: D{tokens:.2e}-... or TPP{ratio:g}-..."""
    if (tokens is None) == (tokens_per_param is None):
        raise ValueError("give exactly one of tokens and tokens_per_param")
    prefix = f"D{tokens:.2e}".replace("e+", "e") if tokens is not None else f"TPP{tokens_per_param:g}"
    return _run_name(prefix, r, size, variant, muon_lr)


def _run_name(prefix: str, r: int, size: int, variant: str, muon_lr: float | None) -> str:
    name = f"{prefix}-r{r}-s{size}"
    if variant != "main":
        name += f"-{variant}"
    if muon_lr is not None:
        name += f"-lr{muon_lr:g}"
    return name


def effective_params(cfg: ModelConfig) -> int:
    """Count the non-embedding parameters once per use in a forward pass, the study's count for
    token ratios: the shared block and the injection count r times, everything else once."""
    counts = param_counts(cfg)
    return counts.n_total + (cfg.recurrences - 1) * (counts.recur + counts.inject)


def model_config(grid: Grid, r: int, size: int, variant: Variant) -> ModelConfig:
    """Build the ModelConfig of one (r, size, variant) in the grid's architecture family."""
    arch = grid.spec["model"]
    return iso_depth_config(
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
        hc_lanes=variant.hc_lanes,
    )


def batch_rows(spec: dict) -> tuple[int, int]:
    """Return the rows per optimiser step and per micro-batch set by a grid's batch key."""
    batch = spec["batch"] or {}
    seq_len = spec["model"]["seq_len"]
    if "tokens" in batch:
        tokens = int(batch["tokens"])
        if tokens <= 0 or tokens % seq_len:
            raise ValueError(f"grid {spec['name']!r}: batch tokens {tokens} must be a positive "
                             f"multiple of the context length {seq_len}")
        rows = tokens // seq_len
        if "rows" in batch and int(batch["rows"]) != rows:
            raise ValueError(f"grid {spec['name']!r}: batch rows {batch['rows']} disagree with "
                             f"batch tokens {tokens} at context {seq_len}; give only one of them")
    elif "rows" in batch:
        rows = int(batch["rows"])
    else:
        raise ValueError(f"grid {spec['name']!r}: batch needs rows or tokens per optimiser step")
    return rows, int(batch.get("micro_rows", rows))


def plan_run(grid: Grid, budget: float, r: int, size: int, variant: Variant,
             muon_lr: float | None = None) -> PlannedRun:
    """Plan one budget run; muon_lr overrides the recipe's reference MuonH rate (learning-rate sweeps)."""
    cfg = model_config(grid, r, size, variant)
    rows, _ = batch_rows(grid.spec)
    flops = train_flops_per_token(cfg)
    name = run_id(budget, r, size, variant.name, muon_lr)
    try:
        length = run_length(budget, flops, rows * cfg.seq_len)
    except ValueError as err:
        raise ValueError(f"run {name} of grid {grid.name!r}: {err}") from err
    return _planned(grid, cfg, size, variant, muon_lr, budget=budget, steps=length.steps,
                    flops=flops, run_name=name)


def plan_token_run(grid: Grid, r: int, size: int, variant: Variant, muon_lr: float | None = None, *,
                   tokens: float | None = None, tokens_per_param: float | None = None) -> PlannedRun:
    """Plan one run fixed by a token target or by a tokens-per-parameter ratio (exactly one).

    The target is int(tokens) or int(tokens_per_param * effective_params), and the run takes the
    whole steps that fit in it: steps = target // B.
    """
    cfg = model_config(grid, r, size, variant)
    rows, _ = batch_rows(grid.spec)
    tokens_per_step = rows * cfg.seq_len
    if (tokens is None) == (tokens_per_param is None):
        raise ValueError("give exactly one of tokens and tokens_per_param")
    if tokens is not None:
        target = int(tokens)
    else:
        target = int(tokens_per_param * effective_params(cfg))
    steps = target // tokens_per_step
    name = token_run_id(r, size, variant.name, muon_lr, tokens=tokens, tokens_per_param=tokens_per_param)
    if steps < 1:
        raise ValueError(f"run {name} of grid {grid.name!r}: {target} tokens is less than one step "
                         f"of {tokens_per_step} tokens; raise the token target or shrink the batch")
    flops = train_flops_per_token(cfg)
    return _planned(grid, cfg, size, variant, muon_lr, budget=flops * steps * tokens_per_step,
                    steps=steps, flops=flops, run_name=name, target_tokens=target,
                    tokens_per_param=None if tokens_per_param is None else float(tokens_per_param))


def _planned(grid: Grid, cfg: ModelConfig, size: int, variant: Variant, muon_lr: float | None, *,
             budget: float, steps: int, flops: float, run_name: str, target_tokens: int | None = None,
             tokens_per_param: float | None = None) -> PlannedRun:
    spec = grid.spec
    arch = spec["model"]
    rows, micro_rows = batch_rows(spec)
    tokens_per_step = rows * cfg.seq_len
    tokens = steps * tokens_per_step
    counts = param_counts(cfg)
    recipe_values = dict(spec.get("recipe") or {})
    if muon_lr is not None:
        recipe_values["muon_lr"] = muon_lr
    recipe = Recipe.from_dict(recipe_values)
    # NOTE: the study's code applies the token rule to its token target (int(C / F) for a budget
    # run), this planner to D = steps * B. The MuonH rates differ by at most 0.012% on the
    # study's grids and 0.05% on the micro grids.
    lrs = recipe.learning_rates(cfg.d_model, tokens_per_step, tokens, cfg.looped)
    return PlannedRun(
        grid=grid.name, run_id=run_name, budget=budget, r=cfg.recurrences, size=size,
        variant=variant.name, model=cfg, tokens_per_step=tokens_per_step, batch_rows=rows,
        micro_batch_rows=micro_rows, steps=steps, tokens=tokens,
        flops_per_token=flops, n_once=counts.n_once, n_rec=counts.n_rec,
        n_total=counts.n_total, learning_rates=lrs, recipe=recipe, seed=spec.get("seed", 0),
        eval_rows=spec.get("eval_rows"),
        family={key: arch[key] for key in ("effective_depth", "n_prelude", "n_coda")},
        target_tokens=target_tokens, tokens_per_param=tokens_per_param,
    )


# ---- reuse -----------------------------------------------------------------------------------


def reused_plans(grid: Grid | str) -> list[PlannedRun]:
    """Plan the runs that a grid's reuse entries select from other grids, in entry order.

    Raises ValueError when an entry selects nothing, when a reused grid has another
    architecture, batch or transfer references, or when a reused run id is also one of the
    grid's own runs.
    """
    return [run for _, runs in _reused_by_entry(grid) for run in runs]


def reused_runs(grid: Grid | str) -> list[tuple[str, list[str]]]:
    """Return (grid name, run ids) for each reuse entry of a grid, in entry order.

    The records of these runs are data/runs/<grid name>/<run id>/record.json. Raises
    ValueError as reused_plans does.
    """
    return [(entry.grid, [run.run_id for run in runs]) for entry, runs in _reused_by_entry(grid)]


def _reused_by_entry(grid: Grid | str) -> list[tuple[Reuse, list[PlannedRun]]]:
    grid = load_grid(grid) if isinstance(grid, str) else grid
    own_ids = {run.run_id for run in grid.runs()}
    selected = []
    for entry in grid.reuse:
        source = load_grid(entry.grid)
        _check_reuse_compatible(grid, source)
        runs = [run for run in source.runs() if entry.selects(run)]
        if not runs:
            raise ValueError(f"grid {grid.name!r}: the reuse entry {entry} selects no run of grid "
                             f"{source.name!r}; list its runs with `isodepth plan {source.name}`")
        clashes = sorted(own_ids & {run.run_id for run in runs})
        if clashes:
            raise ValueError(f"grid {grid.name!r} both plans and reuses the runs {clashes}; "
                             "drop them from the grid or from the reuse entry")
        selected.append((entry, runs))
    return selected


def _normalised_model(spec: dict) -> dict:
    return {"pad_vocab_to": 64, **spec["model"]}


def _check_reuse_compatible(grid: Grid, source: Grid) -> None:
    """Raise ValueError unless the source grid has the grid's family, batch and transfer
    references. The MuonH rate itself may differ, so learning-rate sweeps can be reused."""
    problems = []
    if _normalised_model(grid.spec) != _normalised_model(source.spec):
        problems.append(f"model {_normalised_model(source.spec)} != {_normalised_model(grid.spec)}")
    own_rows, source_rows = batch_rows(grid.spec)[0], batch_rows(source.spec)[0]
    if own_rows != source_rows:
        problems.append(f"batch rows {source_rows} != {own_rows}")
    own_recipe = replace(Recipe.from_dict(grid.spec.get("recipe") or {}), muon_lr=0.0)
    source_recipe = replace(Recipe.from_dict(source.spec.get("recipe") or {}), muon_lr=0.0)
    if own_recipe != source_recipe:
        problems.append(f"recipe {source_recipe} != {own_recipe} (MuonH rate aside)")
    if problems:
        raise ValueError(f"grid {grid.name!r} cannot reuse runs of grid {source.name!r}: "
                         + "; ".join(problems))


# ---- loading ---------------------------------------------------------------------------------


def _looks_like_path(name_or_path: str) -> bool:
    return (Path(name_or_path).suffix in (".yaml", ".yml") or "/" in name_or_path
            or os.sep in name_or_path)


def grid_path(name_or_path: str) -> Path:
    """Return the file of a grid name in data/grids, or of a path to a grid file.

    An argument that ends in .yaml or .yml or contains a slash is a path, and one without a
    suffix may leave out ".yaml". Raises FileNotFoundError when the file does not exist.
    """
    name_or_path = os.fspath(name_or_path)
    if _looks_like_path(name_or_path):
        candidate = Path(name_or_path)
        if candidate.exists():
            return candidate
        with_suffix = Path(f"{name_or_path}.yaml")
        if candidate.suffix not in (".yaml", ".yml") and with_suffix.exists():
            return with_suffix
        raise FileNotFoundError(f"grid file {name_or_path} does not exist")
    path = paths.GRIDS / f"{name_or_path}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in paths.GRIDS.glob("*.yaml"))
        raise FileNotFoundError(f"grid {name_or_path!r} not found in {paths.GRIDS}; known grids: {known}")
    return path


def _yaml_problem(err: yaml.YAMLError) -> str:
    """Describe a PyYAML error as "line L, column C: problem", counting from 1 as editors do."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    if mark is None:
        return problem
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _read_spec(path: Path) -> dict:
    """Parse one grid file and check the keys it sets itself, before any base is merged in."""
    try:
        text = path.read_text()
    except UnicodeDecodeError as err:
        raise ValueError(f"grid file {path} is not UTF-8 text ({err.reason} at byte {err.start})") from err
    except OSError as err:  # a directory, or a file without read permission
        raise ValueError(f"grid file {path} cannot be read: {err.strerror or err}") from err
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"grid file {path} is not valid YAML ({_yaml_problem(err)})") from err
    if not isinstance(spec, dict):
        raise ValueError(f"grid file {path} must contain a mapping of grid keys")
    unknown = sorted(set(spec) - set(GRID_KEYS), key=str)
    if unknown:
        raise ValueError(f"grid file {path} has unknown keys {unknown}; known keys are {list(GRID_KEYS)}")
    _check_inheritable_keys(spec, path)
    return spec


def _with_base(spec: dict, path: Path, chain: tuple[str, ...] = ()) -> dict:
    """Return the spec with the inherited keys of its base grids filled in."""
    base_name = spec.get("base")
    if base_name is None:
        return spec
    if base_name in chain or base_name == spec.get("name"):
        raise ValueError(f"grid file {path}: the base chain {list(chain) + [base_name]} is circular")
    base_path = grid_path(base_name)
    base = _with_base(_read_spec(base_path), base_path, chain + (spec.get("name"),))
    merged = dict(spec)
    for key in INHERITED_KEYS:
        if key not in base:
            continue
        if key in MERGED_KEYS:
            inherited = dict(base[key] or {})
            override = dict(spec.get(key) or {})
            if key == "batch" and ({"rows", "tokens"} & set(override)):
                inherited.pop("rows", None)
                inherited.pop("tokens", None)
            merged[key] = {**inherited, **override}
        elif key not in spec:
            merged[key] = base[key]
    return merged


def load_grid(name_or_path: str) -> Grid:
    """Read, merge and check a grid file. Raises FileNotFoundError for a missing file and
    ValueError, naming the file and the key, for a malformed one."""
    path = grid_path(name_or_path)
    spec = _with_base(_read_spec(path), path)
    for key in ("name", "model", "batch", "recurrences"):
        if key not in spec:
            raise ValueError(f"grid file {path} is missing the key {key!r}")
    if "budgets" not in spec and "token_runs" not in spec:
        raise ValueError(f"grid file {path} is missing the key 'budgets' "
                         "(or 'token_runs' for runs fixed by their token count)")
    _check_model_complete(spec, path)
    batch_rows(spec)  # raises ValueError for a batch without rows or tokens, or with both disagreeing
    recurrences = _integer_list(spec["recurrences"], "recurrences", path)
    _check_learning_rates(spec.get("muon_lrs"), "muon_lrs", path)
    budgets = _parse_budgets(spec, path)
    token_runs = _parse_token_runs(spec, path)
    _check_family(spec, path, recurrences + [r for entry in token_runs for r in entry.recurrences])
    _check_widths(spec, path, [s for sizes in budgets.values() for s in sizes]
                  + [s for entry in token_runs for s in entry.sizes])
    return Grid(name=spec["name"], spec=spec, budgets=budgets,
                recurrences=recurrences,
                variants=_parse_variants(spec, path),
                token_runs=token_runs,
                reuse=_parse_reuse(spec, path))


# ---- checks of grid values -------------------------------------------------------------------
# Each check raises ValueError naming the grid file, the key and the value. A value that a base
# grid passes on is checked when the base file is read, so the message names the file to edit.


def _is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value, path: Path, subject: str, minimum: int = 1) -> int:
    """Return value if it is an integer of at least minimum (0 or 1). The error message starts with subject."""
    if not _is_integer(value) or value < minimum:
        kind = "a positive integer" if minimum > 0 else "a non-negative integer"
        raise ValueError(f"grid file {path}: {subject} must be {kind}")
    return value


def _integer_list(values, label: str, path: Path) -> list[int]:
    """Return a YAML list of positive integers. The label names the key in errors, e.g. "recurrences"."""
    if not isinstance(values, list):
        raise ValueError(f"grid file {path}: {label} must be a list of positive integers, not {values!r}")
    return [_integer(value, path, f"{label}[{index}] = {value!r}") for index, value in enumerate(values)]


def _yaml_number_hint(value) -> str:
    """Explain a number that YAML 1.1 (PyYAML) reads as a string, such as 1e-3 or 2.0e9."""
    match = isinstance(value, str) and re.fullmatch(r"([-+]?\d+)(\.\d*)?[eE]([-+]?)(\d+)", value.strip())
    if not match:
        return ""
    mantissa, fraction, sign, exponent = match.groups()
    fixed = f"{mantissa}{fraction or '.0'}e{sign or '+'}{exponent}"
    return (f" (YAML reads {value} as a string; write {fixed}, with a decimal point and a signed "
            "exponent, to get a number)")


def _section(spec: dict, key: str, path: Path) -> dict:
    """Return a mapping section of a grid file (model, batch or recipe), or {} when it is null."""
    value = spec.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"grid file {path}: {key} must be a mapping of keys to values, not {value!r}")
    return value


def _check_unknown(section: dict, key: str, known, path: Path) -> None:
    unknown = sorted(set(section) - set(known), key=str)
    if unknown:
        raise ValueError(f"grid file {path}: unknown keys {unknown} under {key}; known: {list(known)}")


def _check_inheritable_keys(spec: dict, path: Path) -> None:
    """Check the name and base, and the keys that a grid may pass on to the grids based on it."""
    name = spec.get("name")
    if "name" in spec and (not isinstance(name, str) or not name):
        raise ValueError(f"grid file {path}: name must be a non-empty string, not {name!r}")
    base = spec.get("base")
    if base is not None and (not isinstance(base, str) or not base):
        raise ValueError(f"grid file {path}: base must be the name of another grid, not {base!r}")

    model = _section(spec, "model", path)
    _check_unknown(model, "model", MODEL_KEYS, path)
    for key, value in model.items():
        minimum = 0 if key in NON_NEGATIVE_MODEL_KEYS else 1
        _integer(value, path, f"model {key} = {value!r}", minimum)

    batch = _section(spec, "batch", path)
    _check_unknown(batch, "batch", BATCH_KEYS, path)
    for key, value in batch.items():
        _integer(value, path, f"batch {key} = {value!r}")

    _check_recipe(_section(spec, "recipe", path), path)

    if "seed" in spec:
        _integer(spec["seed"], path, f"seed = {spec['seed']!r}", minimum=0)
    if spec.get("eval_rows") is not None:
        _integer(spec["eval_rows"], path, f"eval_rows = {spec['eval_rows']!r}")


def _check_recipe(recipe: dict, path: Path) -> None:
    known = [f.name for f in fields(Recipe)]
    _check_unknown(recipe, "recipe", known, path)
    for key, value in recipe.items():
        if key == "muon_lr_plain" and value is None:
            continue  # the plain model uses muon_lr
        if key == "adam_betas":
            if not (isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value)):
                raise ValueError(f"grid file {path}: recipe adam_betas = {value!r} must be a list of two numbers")
            continue
        if not _is_number(value) or not math.isfinite(value):
            raise ValueError(f"grid file {path}: recipe {key} = {value!r} must be a finite number"
                             + _yaml_number_hint(value))
        if key in RECIPE_REFERENCE_KEYS and value <= 0:
            raise ValueError(f"grid file {path}: recipe {key} = {value!r} must be a positive number")


def _check_model_complete(spec: dict, path: Path) -> None:
    """Check that the model section, after merging any base, sets every required key."""
    model = spec["model"] or {}
    for key in MODEL_KEYS:
        if key not in model and key not in OPTIONAL_MODEL_KEYS:
            raise ValueError(f"grid file {path}: missing key {key!r} under model")


def _check_family(spec: dict, path: Path, recurrences: list[int]) -> None:
    """Check that the recurrent layers (effective_depth - n_prelude - n_coda) split evenly for every r."""
    model = spec["model"]
    recur_layers = model["effective_depth"] - model["n_prelude"] - model["n_coda"]
    if recur_layers <= 0:
        raise ValueError(f"grid file {path}: model effective_depth {model['effective_depth']} leaves no "
                         f"recurrent layers after n_prelude {model['n_prelude']} and n_coda "
                         f"{model['n_coda']}; raise effective_depth")
    for r in sorted(set(recurrences)):
        if recur_layers % r:
            raise ValueError(f"grid file {path}: r = {r} does not divide the {recur_layers} recurrent layers "
                             "(effective_depth - n_prelude - n_coda); use recurrences that divide "
                             f"{recur_layers}")


def _check_widths(spec: dict, path: Path, sizes: list[int]) -> None:
    """Check that every width d = width_per_size * s splits into whole attention heads."""
    model = spec["model"]
    for size in sorted(set(sizes)):
        d_model = model["width_per_size"] * size
        if d_model % model["head_dim"]:
            raise ValueError(f"grid file {path}: size {size} gives d_model = {d_model} (width_per_size "
                             f"{model['width_per_size']} x {size}), not a multiple of head_dim "
                             f"{model['head_dim']}; use sizes whose width head_dim divides")


def _check_learning_rates(values, label: str, path: Path) -> None:
    """Check an optional muon_lrs list: MuonH rates, each a positive number."""
    if values is None:
        return
    if not isinstance(values, list):
        raise ValueError(f"grid file {path}: {label} must be a list of learning rates, not {values!r}")
    for index, value in enumerate(values):
        if not _is_number(value) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"grid file {path}: {label}[{index}] = {value!r} must be a positive number"
                             + _yaml_number_hint(value))


def _positive_budget(value, path: Path) -> float:
    try:
        budget = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        budget = math.nan
    if not math.isfinite(budget) or budget <= 0:
        raise ValueError(f"grid file {path}: budget {value!r} must be a positive number of FLOPs")
    return budget


def _positive_target(value, path: Path, subject: str) -> float:
    """Return a token target or tokens-per-parameter ratio as a float. It may be a string, because
    PyYAML reads 1e9 and 2.0e9 (no decimal point, or no exponent sign) as strings."""
    try:
        target = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        target = math.nan
    if not math.isfinite(target) or target <= 0:
        raise ValueError(f"grid file {path}: {subject} = {value!r} must be a positive number")
    return target


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _parse_budgets(spec: dict, path: Path) -> dict[float, list[int]]:
    raw = spec.get("budgets") or {}
    if not isinstance(raw, dict):
        raise ValueError(f"grid file {path}: budgets must be a mapping of a budget in FLOPs to a list of "
                         f"sizes, not {raw!r}")
    budgets, written = {}, {}
    for key, sizes in raw.items():
        budget = _positive_budget(key, path)
        if budget in budgets:
            raise ValueError(f"grid file {path}: budgets {written[budget]} and {key} are the same number; "
                             "merge their sizes under one key")
        if not isinstance(sizes, list):
            raise ValueError(f"grid file {path}: budget {key} must map to a list of sizes, not {sizes!r}")
        budgets[budget] = [_integer(size, path, f"size {size!r} under budget {key}") for size in sizes]
        written[budget] = key
    return budgets


_VARIANT_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _parse_variants(spec: dict, path: Path) -> list[Variant]:
    known = [f.name for f in fields(Variant)]
    raw = spec.get("variants") or [{"name": "main"}]
    if not isinstance(raw, list):
        raise ValueError(f"grid file {path}: variants must be a list of mappings, not {raw!r}")
    variants = []
    for index, values in enumerate(raw):
        if not isinstance(values, dict):
            raise ValueError(f"grid file {path}: variants[{index}] = {values!r} must be a mapping with the "
                             f"keys {known}")
        unknown = sorted(set(values) - set(known), key=str)
        if unknown:
            raise ValueError(f"grid file {path}: variant {values} has unknown keys {unknown}; "
                             f"known keys are {known}")
        variant = Variant(**values)
        _check_variant(variant, f"variants[{index}]", path)
        variants.append(variant)
    names = [v.name for v in variants]
    if len(names) != len(set(names)):
        raise ValueError(f"grid file {path}: variant names {names} must be distinct")
    return variants


def _check_variant(variant: Variant, label: str, path: Path) -> None:
    # The name becomes part of run ids and record folders.
    if not isinstance(variant.name, str) or not _VARIANT_NAME.fullmatch(variant.name):
        raise ValueError(f"grid file {path}: {label} name {variant.name!r} must be a non-empty string of "
                         "letters, digits, '_', '.' and '-'")
    if variant.injection not in INJECTION_MODES:
        raise ValueError(f"grid file {path}: {label} injection {variant.injection!r} is not one of "
                         f"{list(INJECTION_MODES)}")
    if not isinstance(variant.truncated_bptt, bool):
        raise ValueError(f"grid file {path}: {label} truncated_bptt {variant.truncated_bptt!r} must be "
                         "true or false")
    _integer(variant.hc_lanes, path, f"{label} hc_lanes = {variant.hc_lanes!r}")


def _parse_token_runs(spec: dict, path: Path) -> list[TokenRuns]:
    raw = spec.get("token_runs") or []
    if not isinstance(raw, list):
        raise ValueError(f"grid file {path}: token_runs must be a list of mappings, not {raw!r}")
    entries = []
    default_lrs = spec.get("muon_lrs") or [None]
    for index, values in enumerate(raw):
        if not isinstance(values, dict):
            raise ValueError(f"grid file {path}: token_runs[{index}] = {values!r} must be a mapping with "
                             f"the keys {list(TOKEN_RUN_KEYS)}")
        unknown = sorted(set(values) - set(TOKEN_RUN_KEYS), key=str)
        if unknown:
            raise ValueError(f"grid file {path}: token_runs entry {values} has unknown keys "
                             f"{unknown}; known keys are {list(TOKEN_RUN_KEYS)}")
        if "sizes" not in values:
            raise ValueError(f"grid file {path}: token_runs entry {values} is missing the key 'sizes'")
        if ("tokens" in values) == ("tokens_per_param" in values):
            raise ValueError(f"grid file {path}: token_runs entry {values} needs exactly one of "
                             "'tokens' and 'tokens_per_param'")
        label = f"token_runs[{index}]"
        tokens = tuple(_positive_target(t, path, f"{label} tokens")
                       for t in _as_list(values.get("tokens", [])))
        ratios = tuple(_positive_target(t, path, f"{label} tokens_per_param")
                       for t in _as_list(values.get("tokens_per_param", [])))
        _check_learning_rates(values.get("muon_lrs"), f"{label} muon_lrs", path)
        entries.append(TokenRuns(
            sizes=tuple(_integer_list(_as_list(values["sizes"]), f"{label} sizes", path)),
            recurrences=tuple(_integer_list(_as_list(values.get("recurrences", spec["recurrences"])),
                                            f"{label} recurrences", path)),
            tokens=tokens, tokens_per_param=ratios,
            muon_lrs=tuple(values.get("muon_lrs") or default_lrs),
        ))
    return entries


def _parse_reuse(spec: dict, path: Path) -> list[Reuse]:
    raw = spec.get("reuse") or []
    entries = []
    for index, values in enumerate(raw if isinstance(raw, list) else [raw]):
        if not isinstance(values, dict):
            raise ValueError(f"grid file {path}: reuse entry {values!r} must be a mapping with the keys "
                             f"{list(REUSE_KEYS)}")
        unknown = sorted(set(values) - set(REUSE_KEYS), key=str)
        if unknown:
            raise ValueError(f"grid file {path}: reuse entry {values} has unknown keys {unknown}; "
                             f"known keys are {list(REUSE_KEYS)}")
        if "grid" not in values:
            raise ValueError(f"grid file {path}: reuse entry {values} is missing the key 'grid'")
        label = f"reuse[{index}]"
        entries.append(Reuse(
            grid=str(values["grid"]),
            recurrences=_optional_integers(values, "recurrences", label, path),
            budgets=(None if "budgets" not in values
                     else tuple(_positive_budget(b, path) for b in _as_list(values["budgets"]))),
            sizes=_optional_integers(values, "sizes", label, path),
            variants=None if "variants" not in values else tuple(str(v) for v in _as_list(values["variants"])),
        ))
    return entries


def _optional_integers(values: dict, key: str, label: str, path: Path) -> tuple[int, ...] | None:
    """Return a reuse filter of positive integers, or None (select every value) when it is not set."""
    if key not in values:
        return None
    return tuple(_integer_list(_as_list(values[key]), f"{label} {key}", path))
