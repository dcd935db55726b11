"""Grid files: every YAML plans, and the micro grid fits the embedded corpus."""


import pytest

from isodepth import paths
from isodepth.data import TrainRows, token_stream
from isodepth.grids import grid_path, load_grid, run_id

GRID_FILES = sorted(paths.GRIDS.glob("*.yaml"))
PAPER_BUDGETS = [4.64e17, 1.00e18, 2.15e18, 4.64e18, 1.00e19, 2.15e19]


def test_grid_files_present():
    assert {path.stem for path in GRID_FILES} >= {"paper", "micro", "micro-lr", "tiny"}


@pytest.mark.parametrize("path", GRID_FILES, ids=lambda p: p.stem)
def test_grid_loads(path):
    grid = load_grid(path.stem)
    assert grid.name == path.stem
    assert len(grid.runs()) > 0


@pytest.mark.parametrize("path", GRID_FILES, ids=lambda p: p.stem)
def test_grid_run_ids_unique(path):
    ids = [run.run_id for run in load_grid(path.stem).runs()]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("path", GRID_FILES, ids=lambda p: p.stem)
def test_grid_batches_divide(path):
    uneven = [run.run_id for run in load_grid(path.stem).runs()
              if run.batch_rows % run.micro_batch_rows]
    assert uneven == []


def test_grid_by_path():
    assert load_grid(str(paths.GRIDS / "tiny.yaml")).name == "tiny"


def test_grid_unknown_name():
    with pytest.raises(FileNotFoundError, match="known grids"):
        grid_path("no-such-grid")


def test_grid_missing_key(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\nmodel: {}\nbatch: {rows: 1}\nrecurrences: [1]\n")
    with pytest.raises(ValueError, match="missing the key 'budgets'"):
        load_grid(str(path))


def test_run_id_format():
    assert run_id(4.64e17, 4, 10) == "C4.64e17-r4-s10"
    assert run_id(1e18, 2, 6, "tbptt", 0.014) == "C1.00e18-r2-s6-tbptt-lr0.014"


# ---- micro grid ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def micro_runs():
    return load_grid("micro").runs()


@pytest.fixture(scope="module")
def train_rows():
    """Training rows of the embedded corpus at the micro context (64 tokens)."""
    return TrainRows(token_stream("train"), seq_len=64)


def test_micro_run_count(micro_runs):
    assert len(micro_runs) == 116


def test_micro_runs_per_r(micro_runs):
    counts = {r: sum(run.r == r for run in micro_runs) for r in (1, 2, 4, 8)}
    assert counts == {1: 29, 2: 29, 4: 29, 8: 29}


def test_micro_sizes_per_budget():
    """Six budgets with the study's number of widths per budget: 4, 5, 5, 6, 5, 4."""
    micro = load_grid("micro")
    assert [len(sizes) for sizes in micro.budgets.values()] == [4, 5, 5, 6, 5, 4]


def test_micro_budget_spacing():
    """Consecutive budgets are a factor 10^(1/3) apart, as in the study."""
    budgets = sorted(load_grid("micro").budgets)
    ratios = [b / a for a, b in zip(budgets, budgets[1:])]
    assert ratios == pytest.approx([10 ** (1 / 3)] * 5, rel=0.01)


def test_paper_budget_spacing():
    assert sorted(load_grid("paper").budgets) == PAPER_BUDGETS


def test_micro_min_steps(micro_runs):
    short = [(run.run_id, run.steps) for run in micro_runs if run.steps < 200]
    assert short == []


def test_micro_rows_fit_corpus(micro_runs, train_rows):
    too_long = [run.run_id for run in micro_runs if run.steps * run.batch_rows > len(train_rows)]
    assert too_long == []


def test_micro_largest_tokens(micro_runs, train_rows):
    assert max(run.tokens for run in micro_runs) < train_rows.tokens


def test_micro_lr_rows_fit_corpus(train_rows):
    runs = load_grid("micro-lr").runs()
    too_long = [run.run_id for run in runs if run.steps * run.batch_rows > len(train_rows)]
    assert too_long == []


def test_micro_lr_reference():
    """The micro recipe's tokens_ref_* are the tokens of the micro-lr sweep's runs (s = 10), whose
    optimum MuonH rate the micro grid transfers."""
    spec = load_grid("micro").spec["recipe"]
    sweep = {run.r: run.tokens for run in load_grid("micro-lr").runs()}
    assert spec["tokens_ref_plain"] == sweep[1]
    assert spec["tokens_ref_looped"] == sweep[4]
