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

load_grid checks the keys and values that planning uses when it reads a grid: sizes and r are
positive integers, model keys are known and complete, every r divides the recurrent layers and
every width divides into heads. A bad value raises ValueError naming the file, the key and the
value, so every command that loads a grid reports it the same way. A missing file raises
FileNotFoundError. The data key is checked where the data source is built (paper_data).
The reading, base merging and checks are in isodepth.grid_spec.

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

from dataclasses import dataclass, field, replace

from .accounting import ceil_half, param_counts, run_length, train_flops_per_token
from .config import ModelConfig, iso_depth_config
from .grid_spec import (BATCH_KEYS, GRID_KEYS, INHERITED_KEYS, MERGED_KEYS, MODEL_KEYS,
                        NON_NEGATIVE_MODEL_KEYS, OPTIONAL_MODEL_KEYS, RECIPE_REFERENCE_KEYS, REUSE_KEYS,
                        TOKEN_RUN_KEYS, Reuse, TokenRuns, Variant, _check_family, _check_learning_rates,
                        _check_model_complete, _check_widths, _integer_list, _parse_budgets, _parse_reuse,
                        _parse_token_runs, _parse_variants, _read_spec, _with_base, grid_path)
from .optim import Recipe

PLAN_COLUMNS = ["run_id", "budget", "r", "size", "d_model", "n_once", "n_rec", "n_total",
                "flops_per_token", "steps", "tokens"]

# The grid-file key lists, Variant, TokenRuns, Reuse and grid_path are defined in grid_spec and
# exported from here too, so callers import every grid name from this module.
__all__ = ["BATCH_KEYS", "GRID_KEYS", "INHERITED_KEYS", "MERGED_KEYS", "MODEL_KEYS", "NON_NEGATIVE_MODEL_KEYS",
           "OPTIONAL_MODEL_KEYS", "PLAN_COLUMNS", "RECIPE_REFERENCE_KEYS", "REUSE_KEYS", "TOKEN_RUN_KEYS",
           "Grid", "PlannedRun", "Reuse", "TokenRuns", "Variant", "batch_rows", "effective_params", "grid_path",
           "load_grid", "model_config", "plan_run", "plan_token_run", "reused_plans", "reused_runs", "run_id",
           "token_run_id"]


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
