"""Reading and checking grid files (data/grids/*.yaml), before the planner in grids expands them.

This module finds a grid file by name or path, parses its YAML, merges in its base grids and
checks every key and value that planning uses. Each check raises ValueError naming the file, the
key and the value. It also defines the grid-file key lists and the entry types that the parsers
build (Variant, TokenRuns, Reuse). The key reference is in the docstring of isodepth.grids.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from . import paths
from .config import INJECTION_MODES
from .optim import Recipe

if TYPE_CHECKING:
    from .grids import PlannedRun

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


# ---- reading grid files ----------------------------------------------------------------------


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


def _float_or_nan(value) -> float:
    """Convert value with float(), or return NaN for a bool or a value that float() rejects."""
    try:
        return float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        return math.nan


def _positive_budget(value, path: Path) -> float:
    budget = _float_or_nan(value)
    if not math.isfinite(budget) or budget <= 0:
        raise ValueError(f"grid file {path}: budget {value!r} must be a positive number of FLOPs")
    return budget


def _positive_target(value, path: Path, subject: str) -> float:
    """Return a token target or tokens-per-parameter ratio as a float. It may be a string, because
    PyYAML reads 1e9 and 2.0e9 (no decimal point, or no exponent sign) as strings."""
    target = _float_or_nan(value)
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


def _check_entry_keys(values, known, path: Path, subject: str, kind: str,
                      required: str | None = None) -> None:
    """Check that one list entry (a variant, token_runs or reuse entry) is a mapping of known keys.

    subject names the entry when it is not a mapping, and kind names it in the other errors.
    """
    if not isinstance(values, dict):
        raise ValueError(f"grid file {path}: {subject} must be a mapping with the keys {list(known)}")
    unknown = sorted(set(values) - set(known), key=str)
    if unknown:
        raise ValueError(f"grid file {path}: {kind} {values} has unknown keys {unknown}; "
                         f"known keys are {list(known)}")
    if required is not None and required not in values:
        raise ValueError(f"grid file {path}: {kind} {values} is missing the key {required!r}")


_VARIANT_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _parse_variants(spec: dict, path: Path) -> list[Variant]:
    known = [f.name for f in fields(Variant)]
    raw = spec.get("variants") or [{"name": "main"}]
    if not isinstance(raw, list):
        raise ValueError(f"grid file {path}: variants must be a list of mappings, not {raw!r}")
    variants = []
    for index, values in enumerate(raw):
        _check_entry_keys(values, known, path, f"variants[{index}] = {values!r}", "variant")
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
        _check_entry_keys(values, TOKEN_RUN_KEYS, path, f"token_runs[{index}] = {values!r}",
                          "token_runs entry", required="sizes")
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
        _check_entry_keys(values, REUSE_KEYS, path, f"reuse entry {values!r}", "reuse entry", required="grid")
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
