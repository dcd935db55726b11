"""Case-study grids (truncated BPTT, hyperconnections, injection ablation, LR sweep and transfer,
extrapolation) at both scales, the grid keys they use, and the plans of the older grids, which
trained records depend on."""

import hashlib
import json
from dataclasses import asdict

import pytest

from isodepth.data import TrainRows, token_stream
from isodepth.grids import (Variant, effective_params, load_grid, model_config, reused_plans,
                            reused_runs, token_run_id)
from isodepth.optim import Recipe

PAPER_LOWER_BUDGETS = [4.64e17, 1.00e18, 2.15e18, 4.64e18]
MICRO_LOWER_BUDGETS = [2.80e11, 6.03e11, 1.30e12, 2.80e12]
MICRO_CASE_STUDIES = ["micro-tbptt", "micro-hyper", "micro-ablation", "micro-lr-transfer",
                      "micro-extrapolation"]


def _rounded(value):
    """Floats to 12 significant digits, so the digest ignores last-bit differences of libm."""
    if isinstance(value, float):
        return float(f"{value:.12g}")
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(item) for item in value]
    return value


def plan_digest(runs) -> str:
    """SHA-256 of every field a run record takes from its plan."""
    rows = []
    for run in runs:
        rows.append(_rounded({
            "run_id": run.run_id, "budget": run.budget, "r": run.r, "size": run.size,
            "variant": run.variant, "model": run.model.to_dict(),
            "tokens_per_step": run.tokens_per_step, "batch_rows": run.batch_rows,
            "micro_batch_rows": run.micro_batch_rows, "steps": run.steps, "tokens": run.tokens,
            "flops_per_token": run.flops_per_token, "n_once": run.n_once, "n_rec": run.n_rec,
            "n_total": run.n_total, "learning_rates": run.learning_rates,
            "recipe": asdict(run.recipe), "seed": run.seed, "eval_rows": run.eval_rows,
            "family": run.family}))
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


def runs_by_id(grid_name):
    return {run.run_id: run for run in load_grid(grid_name).runs()}


# ---- plans of the older grids ----------------------------------------------------------------

# Digests of the plans behind the committed run records (data/runs/ carries these run ids,
# steps, tokens and learning rates). A change here means the records no longer match their
# plans: retrain the affected runs, then update the digest.
EXISTING_PLANS = {
    "paper": (116, "5c69f39eea3145d8"),
    "micro": (116, "ada8b33d115e2249"),
    "micro-lr": (24, "87f749043564ad98"),
    "tiny": (18, "1e581d97bf9bfb00"),
    "tiny-lr": (6, "ead9bf83c9757d4a"),
}

# (grid, run id): steps, tokens, peak MuonH rate, peak embedding rate.
EXISTING_RUNS = {
    ("paper", "C1.00e18-r4-s10"): (3642, 954728448, 0.014281829564990725, 0.3),
    ("paper", "C2.15e19-r1-s34"): (9873, 2588147712, 0.010271484558805378, 0.16269784336399212),
    ("micro", "C6.03e11-r4-s10"): (527, 337280, 0.011214487567529343, 0.3),
    ("micro", "C1.30e13-r1-s24"): (2547, 1630080, 0.011679064275797261, 0.19364916731037082),
    ("micro-lr", "C8.62e11-r4-s10-lr0.01"): (754, 482560, 0.01, 0.3),
}


@pytest.mark.parametrize("grid_name", EXISTING_PLANS)
def test_existing_plan_count(grid_name):
    assert len(load_grid(grid_name).runs()) == EXISTING_PLANS[grid_name][0]


@pytest.mark.parametrize("grid_name", EXISTING_PLANS)
def test_existing_plan_digest(grid_name):
    assert plan_digest(load_grid(grid_name).runs())[:16] == EXISTING_PLANS[grid_name][1]


@pytest.mark.parametrize("key", EXISTING_RUNS, ids=lambda key: f"{key[0]}-{key[1]}")
def test_existing_run_fields(key):
    grid_name, run_id = key
    run = runs_by_id(grid_name)[run_id]
    steps, tokens, muon, embed = EXISTING_RUNS[key]
    assert run.steps == steps
    assert run.tokens == tokens
    assert run.learning_rates["muon"] == pytest.approx(muon, rel=1e-12)
    assert run.learning_rates["embed"] == pytest.approx(embed, rel=1e-12)
    assert run.target_tokens is None


def test_existing_grids_reuse_nothing():
    for grid_name in EXISTING_PLANS:
        assert reused_runs(grid_name) == []


# ---- effective parameters ----------------------------------------------------------------------


@pytest.mark.parametrize("r, expected", [(1, Recipe().tokens_ref_plain), (4, Recipe().tokens_ref_looped)])
def test_effective_params_give_d_ref(r, expected):
    """10 tokens per effective parameter at s = 10 are the study's D_ref exactly."""
    cfg = model_config(load_grid("paper"), r, 10, Variant())
    assert 10 * effective_params(cfg) == expected


def test_effective_params_plain_is_n_total():
    cfg = model_config(load_grid("paper"), 1, 6, Variant())
    assert effective_params(cfg) == 35_405_952


# ---- truncated BPTT and hyperconnections at full scale -----------------------------------------


def test_paper_tbptt_counts():
    runs = load_grid("paper-tbptt").runs()
    reused = reused_plans("paper-tbptt")
    assert len(runs) == 69
    assert len(reused) == 20
    assert len(runs) + len(reused) == 89


def test_paper_tbptt_runs_per_r():
    runs = load_grid("paper-tbptt").runs()
    assert {r: sum(run.r == r for run in runs) for r in (2, 4, 8)} == {2: 23, 4: 23, 8: 23}


def test_paper_tbptt_sizes():
    grid = load_grid("paper-tbptt")
    assert grid.budgets == {4.64e17: list(range(6, 13, 2)), 1.00e18: list(range(6, 17, 2)),
                            2.15e18: list(range(8, 19, 2)), 4.64e18: list(range(10, 23, 2))}


def test_paper_tbptt_gradient_recurrences():
    ks = {run.r: run.model.k_grad for run in load_grid("paper-tbptt").runs()}
    assert ks == {2: 1, 4: 2, 8: 4}


def test_paper_tbptt_run_id():
    assert "C4.64e18-r8-s22-tbptt" in runs_by_id("paper-tbptt")


def test_paper_hyper_counts():
    runs = load_grid("paper-hyper").runs()
    reused = reused_plans("paper-hyper")
    assert len(runs) == 63
    assert len(reused) == 20
    assert len(runs) + len(reused) == 83


def test_paper_hyper_sizes_extend_main():
    main = load_grid("paper").budgets
    hyper = load_grid("paper-hyper").budgets
    assert sorted(hyper) == PAPER_LOWER_BUDGETS
    extra = {budget: sorted(set(hyper[budget]) - set(main[budget])) for budget in hyper}
    assert extra == {4.64e17: [], 1.00e18: [], 2.15e18: [18], 4.64e18: []}
    assert all(set(main[budget]) <= set(hyper[budget]) for budget in hyper)


def test_paper_hyper_injection():
    models = {run.model for run in load_grid("paper-hyper").runs()}
    assert {(cfg.injection, cfg.hc_lanes, cfg.k_grad == cfg.recurrences) for cfg in models} == {
        ("hyperconnections", 2, True)}


@pytest.mark.parametrize("grid_name", ["paper-tbptt", "paper-hyper"])
def test_paper_case_study_reuses_plain_runs(grid_name):
    (source, ids), = reused_runs(grid_name)
    main = load_grid("paper").runs()
    expected = [run.run_id for run in main if run.r == 1 and run.budget in PAPER_LOWER_BUDGETS]
    assert source == "paper"
    assert ids == expected


def test_paper_case_study_shares_family():
    """A case study takes the main grid's architecture and batch through base: paper."""
    main = load_grid("paper").spec
    for grid_name in ("paper-tbptt", "paper-hyper", "paper-ablation", "paper-lr"):
        spec = load_grid(grid_name).spec
        assert spec["model"] == main["model"]
        assert spec["batch"] == main["batch"]


# ---- injection ablation ------------------------------------------------------------------------


def ablation_tokens(grid_name):
    """Tokens per injection mode over the ablation's own and reused runs."""
    runs = load_grid(grid_name).runs() + reused_plans(grid_name)
    return {run.model.injection: run.tokens for run in runs}


def test_paper_ablation_modes():
    runs = load_grid("paper-ablation").runs() + reused_plans("paper-ablation")
    assert sorted(run.model.injection for run in runs) == [
        "additive", "hyperconnections", "linear", "passthrough"]
    assert {(run.r, run.size, run.budget) for run in runs} == {(4, 10, 1e18)}


@pytest.mark.parametrize("mode, expected", [("linear", 955e6), ("additive", 973e6),
                                            ("passthrough", 973e6), ("hyperconnections", 973e6)])
def test_paper_ablation_tokens_table5(mode, expected):
    tokens = ablation_tokens("paper-ablation")[mode]
    assert float(f"{tokens:.3g}") == expected


def test_paper_ablation_reuse_sources():
    assert reused_runs("paper-ablation") == [("paper", ["C1.00e18-r4-s10"]),
                                             ("paper-hyper", ["C1.00e18-r4-s10-hyper"])]


# ---- learning-rate sweep and transfer ----------------------------------------------------------


def test_paper_lr_runs():
    runs = load_grid("paper-lr").runs()
    assert len(runs) == 16
    assert sorted({run.recipe.muon_lr for run in runs}) == [
        0.008, 0.010, 0.012, 0.014, 0.016, 0.018, 0.020, 0.024]
    assert {(run.r, run.size) for run in runs} == {(1, 10), (4, 10)}


def test_paper_lr_targets_are_d_ref():
    targets = {run.r: run.target_tokens for run in load_grid("paper-lr").runs()}
    assert targets == {1: 983_315_200, 4: 1_016_083_200}


def test_paper_lr_steps_floor():
    """Whole steps inside the target: 983,315,200 // 262,144 = 3751."""
    steps = {run.r: run.steps for run in load_grid("paper-lr").runs()}
    assert steps == {1: 3751, 4: 3876}


def test_paper_lr_rate_is_swept_rate():
    """At the reference the transfer rules leave the swept rate (up to whole-step rounding)."""
    for run in load_grid("paper-lr").runs():
        assert run.learning_rates["muon"] == pytest.approx(run.recipe.muon_lr, rel=1e-5)


def test_paper_lr_transfer_cells():
    runs = load_grid("paper-lr-transfer").runs() + reused_plans("paper-lr-transfer")
    cells = {(run.size, run.tokens_per_param) for run in runs}
    assert cells == {(8, 10.0), (10, 10.0), (14, 10.0), (10, 20.0), (10, 40.0)}
    assert {run.r for run in runs} == {1, 4}


def test_paper_lr_transfer_counts():
    assert len(load_grid("paper-lr-transfer").runs()) == 40
    assert reused_runs("paper-lr-transfer")[0][0] == "paper-lr"
    assert len(reused_plans("paper-lr-transfer")) == 16


def test_paper_lr_transfer_ratio_tokens():
    runs = runs_by_id("paper-lr-transfer")
    assert runs["TPP40-r4-s10-lr0.014"].target_tokens == 4 * 1_016_083_200


# ---- extrapolation pair ------------------------------------------------------------------------


def test_paper_extrapolation_runs():
    runs = runs_by_id("paper-extrapolation")
    assert sorted(runs) == ["D4.70e10-r1-s34", "D4.70e10-r4-s34"]
    for run in runs.values():
        assert run.tokens_per_step == 524_288
        assert run.steps == 89_645
        assert run.tokens == 46_999_797_760
        assert run.micro_batch_rows == 16


def test_paper_extrapolation_batch_rule():
    """Twice the reference batch raises every rate by 2^0.558."""
    run = runs_by_id("paper-extrapolation")["D4.70e10-r1-s34"]
    width = (34 * 64 / 640) ** -0.5
    assert run.learning_rates["embed"] == pytest.approx(0.3 * width * 2 ** 0.558)


def test_token_run_budget_is_compute():
    run = runs_by_id("paper-extrapolation")["D4.70e10-r4-s34"]
    assert run.budget == pytest.approx(run.flops_per_token * run.tokens)


# ---- micro case studies ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_rows():
    """Training rows of the embedded corpus at the micro context (64 tokens)."""
    return TrainRows(token_stream("train"), seq_len=64)


def test_micro_tbptt_counts():
    assert len(load_grid("micro-tbptt").runs()) == 69
    assert len(reused_plans("micro-tbptt")) == 20


def test_micro_hyper_counts():
    assert len(load_grid("micro-hyper").runs()) == 63
    assert len(reused_plans("micro-hyper")) == 20


@pytest.mark.parametrize("grid_name", ["micro-tbptt", "micro-hyper"])
def test_micro_case_study_reuses_plain_runs(grid_name):
    (source, ids), = reused_runs(grid_name)
    expected = [run.run_id for run in load_grid("micro").runs()
                if run.r == 1 and run.budget in MICRO_LOWER_BUDGETS]
    assert source == "micro"
    assert ids == expected


def test_micro_tbptt_sizes_follow_paper():
    """Same lower end as the main grid, and the upper end moves by what the study's does."""
    def upper_shift(main, case):
        return [max(case.budgets[b]) - max(main.budgets[b]) for b in case.budgets]

    def lower_shift(main, case):
        return [min(case.budgets[b]) - min(main.budgets[b]) for b in case.budgets]

    paper = (load_grid("paper"), load_grid("paper-tbptt"))
    micro = (load_grid("micro"), load_grid("micro-tbptt"))
    assert upper_shift(*micro) == upper_shift(*paper) == [0, 2, 2, 2]
    assert lower_shift(*micro) == lower_shift(*paper) == [0, 0, 0, 0]


def test_micro_hyper_sizes_extend_micro():
    main = load_grid("micro").budgets
    hyper = load_grid("micro-hyper").budgets
    assert sorted(hyper) == MICRO_LOWER_BUDGETS
    extra = {budget: sorted(set(hyper[budget]) - set(main[budget])) for budget in hyper}
    assert extra == {2.80e11: [], 6.03e11: [], 1.30e12: [16], 2.80e12: []}


def test_micro_ablation_modes():
    runs = load_grid("micro-ablation").runs() + reused_plans("micro-ablation")
    assert sorted(run.model.injection for run in runs) == [
        "additive", "hyperconnections", "linear", "passthrough"]
    assert {(run.r, run.size, run.budget) for run in runs} == {(4, 10, 6.03e11)}


def test_micro_ablation_budget_matches_paper():
    """The ablation budget holds the place of 1e18 in the study's grid: the second one."""
    micro_budgets = sorted(load_grid("micro").budgets)
    paper_budgets = sorted(load_grid("paper").budgets)
    assert list(load_grid("micro-ablation").budgets) == [micro_budgets[1]]
    assert list(load_grid("paper-ablation").budgets) == [paper_budgets[1]]


def test_micro_lr_transfer_cells():
    runs = load_grid("micro-lr-transfer").runs()
    assert len(runs) == 50
    cells = {(run.size, run.tokens_per_param) for run in runs}
    assert cells == {(6, 10.0), (8, 10.0), (10, 10.0), (6, 20.0), (6, 40.0)}


def test_micro_extrapolation_runs():
    runs = runs_by_id("micro-extrapolation")
    assert sorted(runs) == ["D7.68e06-r1-s24", "D7.68e06-r4-s24"]
    assert {run.tokens for run in runs.values()} == {7_680_000}
    assert {run.tokens_per_step for run in runs.values()} == {1280}


def test_micro_extrapolation_widest_width():
    widest = max(size for sizes in load_grid("micro").budgets.values() for size in sizes)
    assert {run.size for run in load_grid("micro-extrapolation").runs()} == {widest}


@pytest.mark.parametrize("grid_name", MICRO_CASE_STUDIES)
def test_micro_case_study_min_steps(grid_name):
    short = [(run.run_id, run.steps) for run in load_grid(grid_name).runs() if run.steps < 200]
    assert short == []


@pytest.mark.parametrize("grid_name", MICRO_CASE_STUDIES)
def test_micro_case_study_rows_fit_corpus(grid_name, train_rows):
    too_long = [run.run_id for run in load_grid(grid_name).runs()
                if run.steps * run.batch_rows > len(train_rows)]
    assert too_long == []


@pytest.mark.parametrize("grid_name", MICRO_CASE_STUDIES)
def test_micro_case_study_tokens_fit_corpus(grid_name, train_rows):
    assert max(run.tokens for run in load_grid(grid_name).runs()) <= train_rows.tokens


@pytest.mark.parametrize("grid_name", MICRO_CASE_STUDIES)
def test_micro_case_study_family(grid_name):
    spec = load_grid(grid_name).spec
    assert spec["model"] == load_grid("micro").spec["model"]
    recipe = dict(load_grid("micro").spec["recipe"])
    if grid_name == "micro-lr-transfer":
        recipe["muon_lr_plain"] = None  # the sweep sets the r = 1 rate itself
    assert spec["recipe"] == recipe


def test_lr_transfer_sweeps_the_plain_rate_too():
    # Every r = 1 run of a series trains at its own peak rate, five rates around 0.017.
    runs = [run for run in load_grid("micro-lr-transfer").runs() if run.r == 1]
    assert len(runs) == 25
    series = {}
    for run in runs:
        series.setdefault(run.run_id.rsplit("-lr", 1)[0], set()).add(round(run.learning_rates["muon"], 8))
    assert len(series) == 5 and all(len(rates) == 5 for rates in series.values())


# ---- grid keys and their errors ----------------------------------------------------------------


def write_grid(tmp_path, name, text):
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return str(path)


def test_token_run_id_format():
    assert token_run_id(1, 34, tokens=47e9) == "D4.70e10-r1-s34"
    assert token_run_id(4, 10, "tbptt", 0.014, tokens_per_param=10) == "TPP10-r4-s10-tbptt-lr0.014"


def test_token_run_id_needs_one_target():
    with pytest.raises(ValueError, match="exactly one"):
        token_run_id(1, 10, tokens=1e9, tokens_per_param=10)


def test_batch_tokens_key(tmp_path):
    path = write_grid(tmp_path, "wide", "name: wide\nbase: tiny\nbatch: {tokens: 256}\n"
                                        "recurrences: [1]\nbudgets: {2.0e9: [4]}\n")
    run, = load_grid(path).runs()
    assert run.batch_rows == 8
    assert run.micro_batch_rows == 2  # inherited from tiny


def test_batch_tokens_not_multiple(tmp_path):
    path = write_grid(tmp_path, "odd", "name: odd\nbase: tiny\nbatch: {tokens: 100}\n"
                                       "recurrences: [1]\nbudgets: {2.0e9: [4]}\n")
    with pytest.raises(ValueError, match="multiple of the context length 32"):
        load_grid(path).runs()


def test_unknown_grid_key(tmp_path):
    path = write_grid(tmp_path, "typo", "name: typo\nbase: tiny\nrecurrences: [1]\n"
                                        "budget: {2.0e9: [4]}\n")
    with pytest.raises(ValueError, match=r"unknown keys \['budget'\]"):
        load_grid(path)


def test_missing_budgets_and_token_runs(tmp_path):
    path = write_grid(tmp_path, "empty", "name: empty\nbase: tiny\nrecurrences: [1]\n")
    with pytest.raises(ValueError, match="missing the key 'budgets'"):
        load_grid(path)


def test_token_runs_both_targets(tmp_path):
    path = write_grid(tmp_path, "both", "name: both\nbase: tiny\nrecurrences: [1]\n"
                                        "token_runs: [{sizes: [4], tokens: 1e5, tokens_per_param: 2}]\n")
    with pytest.raises(ValueError, match="exactly one of 'tokens' and 'tokens_per_param'"):
        load_grid(path)


def test_token_runs_below_one_step(tmp_path):
    path = write_grid(tmp_path, "short", "name: short\nbase: tiny\nrecurrences: [1]\n"
                                         "token_runs: [{sizes: [4], tokens: 100}]\n")
    with pytest.raises(ValueError, match="less than one step of 128 tokens"):
        load_grid(path).runs()


def test_token_runs_duplicate_ids(tmp_path):
    path = write_grid(tmp_path, "dup", "name: dup\nbase: tiny\nrecurrences: [1]\n"
                                       "token_runs: [{sizes: [4], tokens: [100000, 100001]}]\n")
    with pytest.raises(ValueError, match="more than once"):
        load_grid(path).runs()


def test_token_runs_entry_recurrences(tmp_path):
    path = write_grid(tmp_path, "own", "name: own\nbase: tiny\nrecurrences: [1, 2]\n"
                                       "token_runs: [{sizes: [4], recurrences: [2], tokens: 1e5}]\n")
    run, = load_grid(path).runs()
    assert run.r == 2
    assert run.steps == 100_000 // 128
    assert run.tokens == run.steps * 128


def test_unknown_variant_key(tmp_path):
    path = write_grid(tmp_path, "variant", "name: variant\nbase: tiny\nrecurrences: [2]\n"
                                           "budgets: {2.0e9: [4]}\nvariants: [{name: x, bptt: true}]\n")
    with pytest.raises(ValueError, match=r"unknown keys \['bptt'\]"):
        load_grid(path)


def test_circular_base(tmp_path, monkeypatch):
    from isodepth import paths

    monkeypatch.setattr(paths, "GRIDS", tmp_path)
    write_grid(tmp_path, "a", "name: a\nbase: b\nrecurrences: [1]\nbudgets: {1e9: [4]}\n")
    write_grid(tmp_path, "b", "name: b\nbase: a\nrecurrences: [1]\nbudgets: {1e9: [4]}\n")
    with pytest.raises(ValueError, match="circular"):
        load_grid("a")


def test_reuse_selects_nothing(tmp_path):
    path = write_grid(tmp_path, "none", "name: none\nbase: tiny\nrecurrences: [2]\n"
                                        "budgets: {2.0e9: [4]}\nreuse: {grid: tiny, sizes: [99]}\n")
    with pytest.raises(ValueError, match="selects no run of grid 'tiny'"):
        reused_runs(path)


def test_reuse_clash(tmp_path):
    path = write_grid(tmp_path, "clash", "name: clash\nbase: tiny\nrecurrences: [1]\n"
                                         "budgets: {2.0e9: [4]}\nreuse: {grid: tiny, recurrences: [1]}\n")
    with pytest.raises(ValueError, match="both plans and reuses"):
        reused_runs(path)


def test_reuse_other_family(tmp_path):
    path = write_grid(tmp_path, "other", "name: other\nbase: tiny\nrecurrences: [2]\n"
                                         "budgets: {2.0e9: [4]}\nreuse: {grid: micro, recurrences: [1]}\n")
    with pytest.raises(ValueError, match="cannot reuse runs of grid 'micro'"):
        reused_runs(path)


def test_reused_plans_keep_source_grid():
    assert {run.grid for run in reused_plans("micro-tbptt")} == {"micro"}
