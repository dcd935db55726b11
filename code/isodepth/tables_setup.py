"""Setup tables of paper/paper.tex: architecture and recipe of a grid (Table 4) and the grid itself (Table 6).

Both are built from a grid spec (data/grids/*.yaml) through the planner, the model configuration,
the recipe and the model code, so the tables show what the trainer runs. The study's values for
Table 4 are the constant STUDY_SETUP.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, replace

import pandas as pd

from .grids import Grid, PlannedRun, load_grid
from .optim import POLAR_EXPRESS
from .report import fmt_int, fmt_sci

# The study's architecture and recipe (Schwethelm, Rueckert and Kaissis 2026, arXiv 2604.21106,
# sections on the architecture and the training recipe), in the raw form setup_values returns.
# Published numbers of reference/published.json do not include these settings.
STUDY_SETUP: dict[str, object] = {
    "depth": (20, 2, 2),  # effective depth, prelude layers, coda layers
    "block": ((1, 20), (2, 8), (4, 4), (8, 2)),  # (r, layers in the shared block)
    "width": 64,  # d = 64 s
    "head_dim": 128,
    "mlp_ratio": 4,  # MLP hidden width / d
    "norms": (1e-6, 10000.0, 15.0),  # RMSNorm eps, RoPE base, logit soft-cap
    "vocab": (32001, 32064),  # Llama-2 tokens + one special token, padded head rows
    "context": 2048,
    "injection": "linear",
    "tokens_per_step": 262_144,
    "muon": (0.95, 5),  # Nesterov momentum, Polar-Express steps
    "muon_lr": (0.014, 0.014),  # MuonH rate at the reference: looped, plain (r = 1)
    "adam_lrs": (0.3, 0.004, 0.005),  # embedding, lm_head, norm scales
    "adam": (0.8, 0.95, 1e-10, 0.0),  # beta1, beta2, eps, weight decay
    "reference_shape": (640, 262_144),  # d_ref, B_ref
    "reference_tokens": (1_016_083_200, 983_315_200),  # D_ref of looped models and of r = 1
    "transfer": (-0.5, 0.558, -0.32),  # width, batch and token exponents
    "schedule": (0, 0.1),  # warmup steps, final fraction of the peak rate
    "validation_tokens": 34_560 * 2048,  # 34,560 rows of 2048 tokens
}

SAME = "same"


@dataclass(frozen=True)
class SetupRow:
    """One row of the setup table: a setting's key, section, label and raw value."""

    key: str
    group: str
    label: str
    value: object


# key -> (group, label), in table order
SETUP_ROWS = {
    "depth": ("Architecture", "depth = prelude + recurrent + coda"),
    "block": ("Architecture", "block layers $\\times$ recurrences"),
    "width": ("Architecture", "width $d$ for size $s$"),
    "head_dim": ("Architecture", "head dimension"),
    "mlp_ratio": ("Architecture", "MLP hidden width, activation"),
    "norms": ("Architecture", "RMSNorm $\\epsilon$, RoPE base, logit soft-cap"),
    "vocab": ("Architecture", "vocabulary (head rows)"),
    "context": ("Architecture", "context $T$ (tokens)"),
    "injection": ("Architecture", "input injection ($r > 1$)"),
    "tokens_per_step": ("Recipe", "batch $B$ (tokens per step)"),
    "muon": ("Recipe", "MuonH momentum, Polar-Express steps"),
    "muon_lr": ("Recipe", "MuonH rate: looped, $r = 1$"),
    "adam_lrs": ("Recipe", "AdamW rates: embedding, head, norms"),
    "adam": ("Recipe", "AdamW $\\beta_1$, $\\beta_2$, $\\epsilon$, weight decay"),
    "reference_shape": ("Recipe", "reference width $d$, batch $B$"),
    "reference_tokens": ("Recipe", "reference tokens $D$: looped, $r = 1$"),
    "transfer": ("Recipe", "transfer exponents of $d$, $B$, $D$"),
    "schedule": ("Recipe", "schedule"),
    "validation_tokens": ("Recipe", "validation tokens"),
}


def _model_settings(run: PlannedRun) -> tuple[int, float]:
    """Return the MLP hidden ratio and the AdamW weight decay, read from the model and optimiser code.

    The model is built at one head's width with a vocabulary of that size, because neither
    setting depends on the width or the vocabulary and the full-size model can be large.
    """
    import torch

    from .model import LoopedLM
    from .optim import build_optimizers

    width = run.model.head_dim
    cfg = replace(run.model, d_model=width, vocab_size=width, padded_vocab_size=width)
    torch.manual_seed(0)
    model = LoopedLM(cfg)
    hidden = next(model.layers()).mlp.up.out_features
    if hidden % width:
        raise ValueError(f"MLP hidden width {hidden} is not a multiple of d = {width}")
    optimizers = build_optimizers(model, run.recipe, run.learning_rates)
    decays = {group["weight_decay"] for group in optimizers.adam.param_groups}
    if len(decays) != 1:
        raise ValueError(f"AdamW groups use different weight decays {sorted(decays)}; Table 4 shows one")
    return hidden // width, float(decays.pop())


def setup_values(grid: Grid | str, runs: pd.DataFrame | None = None) -> dict[str, object]:
    """Return the raw value of every setup setting of a grid (keys of SETUP_ROWS).

    The validation token count comes from the run table (column validation_tokens) and is None
    without one or when no run is trained yet.
    """
    grid = load_grid(grid) if isinstance(grid, str) else grid
    planned = [run for run in grid.runs() if run.variant == grid.variants[0].name]
    if not planned:
        raise ValueError(f"grid {grid.name!r} plans no run; a setup table needs at least one")
    arch = grid.spec["model"]
    by_r = {}
    for run in planned:
        by_r.setdefault(run.r, run)
    smallest = min(planned, key=lambda run: (run.model.d_model, run.r))
    looped = next((run for run in planned if run.model.looped), None)
    cfg = smallest.model
    recipe = smallest.recipe
    mlp_ratio, weight_decay = _model_settings(smallest)
    plain_lr = recipe.muon_lr if recipe.muon_lr_plain is None else recipe.muon_lr_plain

    validation = None
    if runs is not None and "validation_tokens" in runs.columns and len(runs):
        validation = int(runs["validation_tokens"].max())
    return {
        "depth": (arch["effective_depth"], arch["n_prelude"], arch["n_coda"]),
        "block": tuple((r, by_r[r].model.n_recur_layers) for r in sorted(by_r)),
        "width": arch["width_per_size"],
        "head_dim": cfg.head_dim,
        "mlp_ratio": mlp_ratio,
        "norms": (cfg.norm_eps, cfg.rope_base, cfg.softcap),
        "vocab": (cfg.vocab_size, cfg.padded_vocab_size),
        "context": cfg.seq_len,
        "injection": looped.model.injection if looped is not None else None,
        "tokens_per_step": smallest.tokens_per_step,
        "muon": (recipe.momentum, len(POLAR_EXPRESS)),
        "muon_lr": (recipe.muon_lr, plain_lr),
        "adam_lrs": (recipe.embed_lr, recipe.head_lr, recipe.norm_lr),
        "adam": (*recipe.adam_betas, recipe.adam_eps, weight_decay),
        "reference_shape": (recipe.d_ref, recipe.tokens_per_step_ref),
        "reference_tokens": (recipe.tokens_ref_looped, recipe.tokens_ref_plain),
        "transfer": (recipe.width_exponent, recipe.batch_exponent, recipe.tokens_exponent),
        "schedule": (recipe.warmup_steps, recipe.final_lr_fraction),
        "validation_tokens": validation,
    }


def _num(value: float) -> str:
    """Format a setting in plain decimal or LaTeX scientific form, without trailing zeros."""
    if value == 0:
        return "0"
    if abs(value) < 1e-3 or abs(value) >= 1e5:
        exponent = int(math.floor(math.log10(abs(value))))
        mantissa = value / 10 ** exponent
        if math.isclose(mantissa, round(mantissa)):
            mantissa_text = "" if round(mantissa) == 1 else f"{round(mantissa)}\\times "
        else:
            mantissa_text = f"{mantissa:g}\\times "
        return f"${mantissa_text}10^{{{exponent}}}$"
    return f"${value:g}$" if value < 0 else f"{value:g}"


def render_value(key: str, value) -> str:
    """Render a raw setup value as a LaTeX table cell."""
    if value is None:
        return "not trained yet" if key == "validation_tokens" else "--"

    if key == "depth":
        depth, prelude, coda = value
        return f"{depth} = {prelude} + {depth - prelude - coda} + {coda}"
    if key == "block":
        return ", ".join(f"${layers}\\times{r}$" for r, layers in value)
    if key == "width":
        return f"$d = {value}\\,s$"
    if key == "mlp_ratio":
        # The activation is not a setting: model.MLP always applies a squared ReLU.
        return f"${value}d$, squared ReLU"

    if key in ("norms", "transfer", "adam_lrs", "muon", "adam"):
        return ", ".join(_num(v) for v in value)
    if key == "vocab":
        return f"{fmt_int(value[0])} ({fmt_int(value[1])})"
    if key in ("context", "tokens_per_step", "head_dim"):
        return fmt_int(value)
    if key == "injection":
        return f"{value}, $W [e; h]$, $W_0 = [I \\mid 0]$" if value == "linear" else str(value)

    if key == "muon_lr":
        # Three decimals, as the learning-rate macros of the text print them (0.010, not 0.01).
        looped, plain = value
        return f"{looped:.3f}" if math.isclose(looped, plain) else f"{looped:.3f}, {plain:.3f}"
    if key in ("reference_shape", "reference_tokens"):
        return ", ".join(fmt_int(v) for v in value)
    if key == "schedule":
        warmup, final = value
        start = "no warmup" if warmup == 0 else f"{warmup} warmup steps"
        return f"{start}, linear decay to {final:.0%}".replace("%", "\\%")
    if key == "validation_tokens":
        return fmt_int(value)
    raise KeyError(f"no rendering for setup key {key!r}; known keys are {list(SETUP_ROWS)}")


def same_value(a, b) -> bool:
    """Compare raw setup values, floats to a relative 1e-9."""
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0) or a == b
    return a == b


def setup_rows(grid: Grid | str, runs: pd.DataFrame | None = None) -> list[SetupRow]:
    values = setup_values(grid, runs)
    return [SetupRow(key, group, label, values[key]) for key, (group, label) in SETUP_ROWS.items()]


def setup_table(grid: Grid | str, runs: pd.DataFrame | None = None,
                study: dict[str, object] = STUDY_SETUP) -> str:
    """Render Table 4: each setting of the grid, with the study's value where it differs.

    The study column reads "same" where the values agree. A missing study value raises
    KeyError naming the key.
    """
    missing = [key for key in SETUP_ROWS if key not in study]
    if missing:
        raise KeyError(f"the study's setup lacks the keys {missing}; add them to STUDY_SETUP")
    lines = ["\\begin{tabular}{p{0.36\\linewidth}p{0.27\\linewidth}p{0.27\\linewidth}}", "\\toprule",
             "setting & this reproduction & study \\\\"]
    group = None
    for row in setup_rows(grid, runs):
        if row.group != group:
            lines += ["\\midrule", f"\\multicolumn{{3}}{{l}}{{\\textit{{{row.group}}}}} \\\\"]
            group = row.group
        theirs = study[row.key]
        study_text = SAME if same_value(row.value, theirs) else render_value(row.key, theirs)
        lines.append(f"{row.label} & {render_value(row.key, row.value)} & {study_text} \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


# ---- Table 6: the grid ------------------------------------------------------------------------


@dataclass(frozen=True)
class GridTable:
    """Unique parameters per (size, r) and tokens per (budget, size, r) of a grid's planned runs."""

    grid: str
    recurrences: tuple[int, ...]
    budgets: tuple[float, ...]
    sizes: tuple[int, ...]
    d_model: dict[int, int]  # size -> width d
    params: dict[tuple[int, int], int]  # (size, r) -> N = N_once + N_rec
    tokens: dict[tuple[float, int], dict[int, int]]  # (budget, size) -> r -> D
    run_ids: dict[tuple[float, int], tuple[str, ...]]  # (budget, size) -> planned run ids

    def missing_runs(self, trained: set[str]) -> dict[tuple[float, int], int]:
        """Number of runs of each (budget, size) cell not in `trained` (cells with none missing left out)."""
        missing = {}
        for cell, ids in self.run_ids.items():
            count = sum(run_id not in trained for run_id in ids)
            if count:
                missing[cell] = count
        return missing

    def token_spread(self) -> float:
        """Largest max/min ratio of the token counts across r within one (budget, size) cell."""
        return max(max(by_r.values()) / min(by_r.values()) for by_r in self.tokens.values())

    def params_ratio(self, r: int, reference_r: int = 1) -> dict[int, float]:
        """N(s, r) / N(s, reference_r) per size s."""
        return {s: self.params[(s, r)] / self.params[(s, reference_r)] for s in self.sizes}


def grid_table_data(grid: Grid | str) -> GridTable:
    """Collect the planned budget runs of a grid's first variant into a GridTable."""
    grid = load_grid(grid) if isinstance(grid, str) else grid
    if not grid.budgets:
        raise ValueError(f"grid {grid.name!r} has no budgets; Table 6 lists budget runs only")
    planned = [run for run in grid.runs()
               if run.variant == grid.variants[0].name and run.target_tokens is None]
    params: dict[tuple[int, int], int] = {}
    tokens: dict[tuple[float, int], dict[int, int]] = defaultdict(dict)
    run_ids: dict[tuple[float, int], list[str]] = defaultdict(list)
    d_model = {}
    for run in planned:
        params[(run.size, run.r)] = run.n_total
        tokens[(run.budget, run.size)][run.r] = run.tokens
        run_ids[(run.budget, run.size)].append(run.run_id)
        d_model[run.size] = run.model.d_model
    return GridTable(grid=grid.name, recurrences=tuple(grid.recurrences), budgets=tuple(sorted(grid.budgets)),
                     sizes=tuple(sorted(d_model)), d_model=d_model, params=params, tokens=dict(tokens),
                     run_ids={cell: tuple(ids) for cell, ids in run_ids.items()})


UNITS = ((1e9, "B"), (1e6, "M"), (1e3, "K"), (1.0, ""))


def count_unit(smallest: float, min_shown: float) -> tuple[float, str]:
    """Pick the largest unit (scale, suffix) in which `smallest` shows as at least `min_shown`."""
    for scale, suffix in UNITS:
        if smallest / scale >= min_shown:
            return scale, suffix
    return UNITS[-1]


def _token_cell(by_r: dict[int, int], scale: float) -> str:
    low, high = f"{min(by_r.values()) / scale:.2f}", f"{max(by_r.values()) / scale:.2f}"
    return low if low == high else f"{low}--{high}"


def grid_table(table: GridTable, trained: set[str] | None = None, *, params_unit: tuple[float, str] | None = None,
               tokens_unit: tuple[float, str] | None = None) -> str:
    """Render Table 6: N per size and r, and tokens (min--max over r) per size and budget.

    With `trained` (the run ids that have records), cells with untrained runs get a dagger and a
    note under the table gives the number of missing runs.
    """
    # One decimal for N and two for D, so the smallest entry keeps two significant digits.
    p_scale, p_suffix = params_unit or count_unit(min(table.params.values()), 1.0)
    t_scale, t_suffix = tokens_unit or count_unit(min(min(v.values()) for v in table.tokens.values()), 0.1)
    missing = table.missing_runs(trained) if trained is not None else {}
    n_r, n_b = len(table.recurrences), len(table.budgets)

    lines = [f"\\begin{{tabular}}{{rr{'r' * n_r}{'r' * n_b}}}", "\\toprule",
             f" & & \\multicolumn{{{n_r}}}{{c}}{{$N$ ({p_suffix})}} & "
             f"\\multicolumn{{{n_b}}}{{c}}{{tokens $D$ ({t_suffix}), min--max over $r$, per budget $C$ (FLOPs)}} \\\\",
             f"\\cmidrule(lr){{3-{2 + n_r}}}\\cmidrule(lr){{{3 + n_r}-{2 + n_r + n_b}}}",
             " & ".join(["$s$", "$d$"] + [f"$r = {r}$" for r in table.recurrences]
                        + [f"${fmt_sci(b, 2)}$" for b in table.budgets]) + " \\\\",
             "\\midrule"]
    for size in table.sizes:
        cells = [str(size), str(table.d_model[size])]
        cells += [f"{table.params[(size, r)] / p_scale:.1f}" for r in table.recurrences]
        for budget in table.budgets:
            by_r = table.tokens.get((budget, size))
            if by_r is None:
                cells.append("")
                continue
            text = _token_cell(by_r, t_scale)
            if (budget, size) in missing:
                text += "$^\\dagger$"
            cells.append(text)
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    out = "\\resizebox{\\linewidth}{!}{%\n" + "\n".join(lines) + "}\n"
    if missing:
        total = sum(len(ids) for ids in table.run_ids.values())
        out += (f"\\par\\smallskip{{\\footnotesize $^\\dagger$ Not trained yet: {sum(missing.values())} of "
                f"{total} runs, in the cells marked.}}\n")
    return out
