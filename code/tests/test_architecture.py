"""Figure 5 (architecture schematic), Table 4 (architecture and recipe), Table 6 (the grid) and
the notebook that writes them."""

from __future__ import annotations

import re

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from isodepth import paths
from isodepth.collect import collect, write_csv
from isodepth.grids import load_grid
from isodepth.notebooks import run_notebook
from isodepth.schematic import (GID_BLOCK, GID_BLOCK_FRAME, GID_CODA, GID_EMBEDDING, GID_HEAD, GID_INJECTION,
                                GID_PRELUDE, Layout, count_drawn, draw_layout, draw_schematic, grid_layouts)
from isodepth.tables_setup import (SAME, SETUP_ROWS, STUDY_SETUP, count_unit, grid_table, grid_table_data,
                                   render_value, same_value, setup_table, setup_values)
from test_accounting import TABLE6  # (size, r, N in millions) of the study's published grid table


@pytest.fixture(scope="module")
def micro():
    return load_grid("micro")


@pytest.fixture(scope="module")
def paper_table():
    return grid_table_data("paper")


def expected_layers(grid, r: int) -> tuple[int, int, int]:
    """(prelude, block, coda) layers from a grid spec: r = 1 puts the whole depth in one block."""
    model = grid.spec["model"]
    depth, prelude, coda = model["effective_depth"], model["n_prelude"], model["n_coda"]
    if r == 1:
        return 0, depth, 0
    return prelude, (depth - prelude - coda) // r, coda


# ---- Figure 5: the schematic --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["micro", "paper"])
def test_layouts_follow_grid_spec(name):
    grid = load_grid(name)
    layouts = grid_layouts(grid)
    assert [layout.r for layout in layouts] == grid.recurrences
    for layout in layouts:
        assert (layout.n_prelude, layout.n_block, layout.n_coda) == expected_layers(grid, layout.r)
        assert layout.effective_depth == grid.spec["model"]["effective_depth"]


def test_micro_layouts_literal(micro):
    """The micro grid's iso-depth 10 = 1 + 8 + 1 spelled out, as drawn in Figure 5."""
    layouts = {layout.r: layout for layout in grid_layouts(micro)}
    assert {r: (l.n_prelude, l.n_block, l.n_coda) for r, l in layouts.items()} == {
        1: (0, 10, 0), 2: (1, 4, 1), 4: (1, 2, 1), 8: (1, 1, 1)}
    assert [layouts[r].unique_layers for r in (1, 2, 4, 8)] == [10, 6, 4, 3]


@pytest.mark.parametrize("name", ["micro", "paper"])
def test_drawn_layer_counts_per_r(name):
    grid = load_grid(name)
    layouts = grid_layouts(grid)
    fig = draw_schematic(layouts)
    try:
        assert len(fig.axes) == len(layouts)
        for ax, layout in zip(fig.axes, layouts):
            prelude, block, coda = expected_layers(grid, layout.r)
            drawn = count_drawn(ax)
            assert drawn[GID_PRELUDE] == prelude
            assert drawn[GID_BLOCK] == block
            assert drawn[GID_CODA] == coda
            assert drawn[GID_INJECTION] == (1 if layout.r > 1 else 0)
            assert drawn[GID_BLOCK_FRAME] == 1
            assert drawn[GID_EMBEDDING] == 1
            assert drawn[GID_HEAD] == 1
            assert ax.get_title() == f"r = {layout.r}"
    finally:
        plt.close(fig)


def test_draw_layout_returns_counts():
    fig, ax = plt.subplots()
    try:
        counts = draw_layout(ax, Layout(r=3, n_prelude=2, n_block=5, n_coda=0, injection="additive"))
        assert counts[GID_PRELUDE] == 2
        assert counts[GID_BLOCK] == 5
        assert counts[GID_CODA] == 0
        assert counts[GID_INJECTION] == 1
        assert ax.texts, "the panel has no labels"
    finally:
        plt.close(fig)


def test_depth_formula():
    assert Layout(r=4, n_prelude=1, n_block=2, n_coda=1, injection="linear").depth_formula() == "1 + 2\u00d74 + 1 = 10"
    assert Layout(r=1, n_prelude=0, n_block=10, n_coda=0, injection=None).depth_formula() == "10 layers, run once"


@pytest.mark.parametrize("values", [
    dict(r=2, n_prelude=1, n_block=4, n_coda=1, injection=None),  # looped without injection
    dict(r=1, n_prelude=0, n_block=10, n_coda=0, injection="linear"),  # plain with injection
    dict(r=0, n_prelude=1, n_block=4, n_coda=1, injection=None),
    dict(r=2, n_prelude=1, n_block=0, n_coda=1, injection="linear"),
])
def test_layout_rejects_invalid(values):
    with pytest.raises(ValueError, match="invalid layout"):
        Layout(**values)


def test_schematic_needs_layouts():
    with pytest.raises(ValueError, match="at least one layout"):
        draw_schematic([])


# ---- Table 4: architecture and recipe -----------------------------------------------------------


@pytest.fixture(scope="module")
def paper_setup():
    return setup_values("paper")


@pytest.mark.parametrize("key", [k for k in SETUP_ROWS if k != "validation_tokens"])
def test_study_setup_matches_paper_grid(paper_setup, key):
    """data/grids/paper.yaml, planned by this package, has the study's architecture and recipe."""
    assert same_value(paper_setup[key], STUDY_SETUP[key]), (key, paper_setup[key], STUDY_SETUP[key])


def test_setup_values_follow_micro_spec(micro):
    values = setup_values(micro)
    model, recipe = micro.spec["model"], micro.spec["recipe"]
    assert values["depth"] == (model["effective_depth"], model["n_prelude"], model["n_coda"])
    assert values["head_dim"] == model["head_dim"]
    assert values["context"] == model["seq_len"]
    assert values["width"] == model["width_per_size"]
    assert values["muon_lr"] == (recipe["muon_lr"], recipe["muon_lr_plain"])
    assert values["reference_tokens"] == (recipe["tokens_ref_looped"], recipe["tokens_ref_plain"])
    assert values["mlp_ratio"] == 4
    assert values["validation_tokens"] is None


def test_setup_table_same_and_different(micro):
    runs = pd.DataFrame({"run_id": ["a", "b"], "validation_tokens": [1000, 4096]})
    text = setup_table(micro, runs)
    rows = {line.split(" & ")[0]: line for line in text.splitlines() if " & " in line}
    assert rows[SETUP_ROWS["mlp_ratio"][1]].endswith(f"& {SAME} \\\\")
    assert rows[SETUP_ROWS["context"][1]] == f"{SETUP_ROWS['context'][1]} & 64 & 2\\,048 \\\\"
    assert "& 4\\,096 &" in rows[SETUP_ROWS["validation_tokens"][1]]
    assert len(rows) == len(SETUP_ROWS) + 1  # plus the header


def test_setup_table_without_runs(micro):
    text = setup_table(micro)
    assert "not trained yet" in text


def test_setup_table_rejects_incomplete_study(micro):
    study = {k: v for k, v in STUDY_SETUP.items() if k != "context"}
    with pytest.raises(KeyError, match="context"):
        setup_table(micro, study=study)


def test_render_value_unknown_key():
    with pytest.raises(KeyError, match="no rendering"):
        render_value("colour", 1)


def test_same_value_compares_floats():
    assert same_value((0.1 + 0.2, 3), (0.3, 3))
    assert not same_value((0.014, 0.014), (0.010, 0.017))
    assert not same_value((1, 2), (1, 2, 3))


# ---- Table 6: the grid ----------------------------------------------------------------------------


@pytest.mark.parametrize("size,r,millions", TABLE6)
def test_grid_table_data_matches_published(paper_table, size, r, millions):
    assert f"{paper_table.params[(size, r)] / 1e6:.1f}" == f"{millions:.1f}"


def test_grid_table_renders_published_params(paper_table):
    text = grid_table(paper_table)
    published = {}
    for size, r, millions in TABLE6:
        published.setdefault(size, {})[r] = f"{millions:.1f}"
    rendered = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.removesuffix("\\\\").split("&")]
        if cells[0].isdigit():
            rendered[int(cells[0])] = dict(zip(paper_table.recurrences, cells[2:2 + len(paper_table.recurrences)]))
    assert rendered == published
    assert "$N$ (M)" in text


def test_grid_table_micro_tokens(micro):
    table = grid_table_data(micro)
    planned = [run for run in micro.runs()]
    assert sum(len(ids) for ids in table.run_ids.values()) == len(planned)
    for run in planned:
        assert table.tokens[(run.budget, run.size)][run.r] == run.tokens
        assert table.params[(run.size, run.r)] == run.n_once + run.n_rec
    text = grid_table(table)
    row = next(line for line in text.splitlines() if line.startswith("10 & 40 &"))
    low, high = min(table.tokens[(2.8e11, 10)].values()), max(table.tokens[(2.8e11, 10)].values())
    assert f"{low / 1e6:.2f}--{high / 1e6:.2f}" in row
    assert "$N$ (K)" in text
    assert "tokens $D$ (M)" in text
    assert "dagger" not in text


def test_grid_table_marks_untrained(micro):
    table = grid_table_data(micro)
    every_id = {run_id for ids in table.run_ids.values() for run_id in ids}
    left_out = sorted(every_id)[0]
    text = grid_table(table, every_id - {left_out})
    assert text.count("$^\\dagger$ Not trained yet") == 1
    assert len(re.findall(r"\$\^\\dagger\$", text)) == 2  # one cell and the note
    assert f"1 of {len(every_id)} runs" in text
    assert "dagger" not in grid_table(table, every_id)
    nothing = grid_table(table, set())
    assert f"{len(every_id)} of {len(every_id)} runs" in nothing


def test_token_spread_and_ratio(micro):
    table = grid_table_data(micro)
    assert 1.0 < table.token_spread() < 1.5
    ratios = table.params_ratio(8)
    assert all(0.0 < value < 1.0 for value in ratios.values())


@pytest.mark.parametrize("smallest,min_shown,suffix", [
    (10.9e6, 1.0, "M"), (9872, 1.0, "K"), (150_400, 0.1, "M"), (3.2e8, 0.1, "B"), (5, 1.0, "")])
def test_count_unit(smallest, min_shown, suffix):
    assert count_unit(smallest, min_shown)[1] == suffix


# ---- the notebook ---------------------------------------------------------------------------------


def test_architecture_notebook_on_committed_runs(tmp_path, micro):
    rows, _ = collect(["micro"], paths.ROOT / "data" / "runs")
    runs_csv = tmp_path / "runs.csv"
    write_csv(rows, runs_csv)
    outputs = {name: tmp_path / name for name in ("architecture.pdf", "setup.tex", "grid.tex", "numbers.tex")}
    run_notebook(paths.ROOT / "notebooks" / "architecture.ipynb",
                 {"grid": "micro", "runs_csv": str(runs_csv), "figure_pdf": str(outputs["architecture.pdf"]),
                  "setup_tex": str(outputs["setup.tex"]), "grid_tex": str(outputs["grid.tex"]),
                  "numbers_tex": str(outputs["numbers.tex"])},
                 list(outputs.values()))

    assert outputs["architecture.pdf"].read_bytes().startswith(b"%PDF")
    setup = outputs["setup.tex"].read_text()
    assert setup.count(" & ") >= 2 * len(SETUP_ROWS)
    assert SAME in setup
    grid = outputs["grid.tex"].read_text()
    sizes = sorted({size for sizes in micro.budgets.values() for size in sizes})
    assert len([line for line in grid.splitlines() if re.match(r"^\d+ & ", line)]) == len(sizes)

    numbers = dict(re.findall(r"\\newcommand\{\\(\w+)\}\{(.*)\}", outputs["numbers.tex"].read_text()))
    planned = len(micro.runs())
    trained = len({row["run_id"] for row in rows})
    assert numbers["archPlannedRuns"] == str(planned)
    assert numbers["archMissingRuns"] == str(planned - trained)
    assert numbers["archDepth"] == str(micro.spec["model"]["effective_depth"])
    assert numbers["archStudyUniqueRatio"] == "0.31"  # 350.4 / 1136.5 in the study's grid table
