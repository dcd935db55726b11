"""Errors for bad grid files and for `isodepth collect`: each names the file, the key and the value."""

from __future__ import annotations

import argparse
import json

import pandas as pd
import pytest

from isodepth import paths
from isodepth.collect import add_command, collect, collect_grid
from isodepth.grids import grid_path, load_grid

# The tiny grid written out in full, so a test can break one line of it.
TINY_MODEL = ("model:\n  effective_depth: 6\n  n_prelude: 1\n  n_coda: 1\n  head_dim: 8\n"
              "  width_per_size: 4\n  vocab_size: 1024\n  seq_len: 32\n")
TINY_REST = "batch: {rows: 4}\nrecurrences: [1, 2]\nbudgets:\n  2e9: [4, 6]\n"


def write_grid(folder, name, text):
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return str(path)


def full_grid(tmp_path, name="bad", model=TINY_MODEL, rest=TINY_REST):
    return write_grid(tmp_path, name, f"name: {name}\n{model}{rest}")


# ---- file and YAML errors ----------------------------------------------------------------------


def test_full_grid_helper_loads(tmp_path):
    grid = load_grid(full_grid(tmp_path, "good"))
    assert [run.run_id for run in grid.runs()][:2] == ["C2.00e09-r1-s4", "C2.00e09-r1-s6"]


def test_malformed_yaml_names_line(tmp_path):
    path = write_grid(tmp_path, "malformed", "name: malformed\nmodel:\n  seq_len: 32\n   head_dim: 8\n")
    with pytest.raises(ValueError, match=r"grid file .*malformed\.yaml is not valid YAML "
                                         r"\(line 4, column 12: mapping values are not allowed here\)"):
        load_grid(path)


def test_unclosed_yaml_list(tmp_path):
    path = write_grid(tmp_path, "unclosed", "name: unclosed\nbudgets: [1\n")
    with pytest.raises(ValueError, match=r"unclosed\.yaml is not valid YAML \(line 3, column 1: "):
        load_grid(path)


@pytest.mark.parametrize("argument", ["missing.yaml", "missing.yml", "sub/missing"])
def test_missing_grid_file(tmp_path, argument):
    path = f"{tmp_path}/{argument}"
    with pytest.raises(FileNotFoundError, match=rf"^grid file {path} does not exist$"):
        load_grid(path)


def test_relative_missing_grid_file():
    with pytest.raises(FileNotFoundError, match=r"^grid file no/such-grid does not exist$"):
        grid_path("no/such-grid")


def test_unknown_bare_name_lists_grids():
    with pytest.raises(FileNotFoundError, match=r"grid 'no-such-grid' not found in .*; known grids: .*'tiny'"):
        grid_path("no-such-grid")


def test_path_without_suffix_loads():
    assert load_grid(str(paths.GRIDS / "tiny")).name == "tiny"


def test_grid_file_not_mapping(tmp_path):
    path = write_grid(tmp_path, "list", "- name: list\n")
    with pytest.raises(ValueError, match="must contain a mapping of grid keys"):
        load_grid(path)


# ---- model, batch and recipe -------------------------------------------------------------------


def test_model_key_typo(tmp_path):
    path = full_grid(tmp_path, model=TINY_MODEL.replace("seq_len", "seq_lenn"))
    with pytest.raises(ValueError, match=r"grid file .*bad\.yaml: unknown keys \['seq_lenn'\] under model; "
                                         r"known: \['effective_depth', .*'seq_len'\]"):
        load_grid(path)


# One edit of the valid tiny grid per case: the section edited, the text replaced, its
# replacement and the expected message.
EDITED_GRIDS = [
    pytest.param("model", "  seq_len: 32\n", "",
                 r"grid file .*bad\.yaml: missing key 'seq_len' under model$", id="model-missing-key"),
    pytest.param("rest", "[1, 2]", "[1, 3]",
                 r"bad\.yaml: r = 3 does not divide the 4 recurrent layers", id="recurrent-layers-not-divisible"),
    pytest.param("model", "effective_depth: 6", "effective_depth: 2",
                 r"bad\.yaml: model effective_depth 2 leaves no recurrent layers", id="no-recurrent-layers"),
    pytest.param("rest", "[4, 6]", "[3]",
                 r"bad\.yaml: size 3 gives d_model = 12 .*not a multiple of head_dim 8", id="width-not-multiple-of-head-dim"),
    pytest.param("rest", "rows: 4", "row: 4",
                 r"bad\.yaml: unknown keys \['row'\] under batch", id="batch-key-typo"),
    pytest.param("rest", "rows: 4", "rows: 0",
                 r"bad\.yaml: batch rows = 0 must be a positive integer", id="batch-rows-zero"),
    pytest.param("rest", "2e9:", "lots:",
                 r"bad\.yaml: budget 'lots' must be a positive number of FLOPs", id="bad-budget-key"),
]


@pytest.mark.parametrize("section,old,new,message", EDITED_GRIDS)
def test_edited_grid_rejected(tmp_path, section, old, new, message):
    if section == "model":
        path = full_grid(tmp_path, model=TINY_MODEL.replace(old, new))
    else:
        path = full_grid(tmp_path, rest=TINY_REST.replace(old, new))
    with pytest.raises(ValueError, match=message):
        load_grid(path)



@pytest.mark.parametrize("line,message", [
    ("head_dim: 8", r"model head_dim = 0 must be a positive integer"),
    ("n_coda: 1", r"model n_coda = -1 must be a non-negative integer"),
    ("seq_len: 32", r"model seq_len = 'a' must be a positive integer"),
])
def test_model_bad_value(tmp_path, line, message):
    key = line.split(":")[0]
    value = {"head_dim": "0", "n_coda": "-1", "seq_len": "a"}[key]
    path = full_grid(tmp_path, model=TINY_MODEL.replace(line, f"{key}: {value}"))
    with pytest.raises(ValueError, match=rf"grid file .*bad\.yaml: {message}"):
        load_grid(path)


def test_model_not_mapping(tmp_path):
    path = full_grid(tmp_path, model="model: [6, 1, 1]\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: model must be a mapping of keys to values, not \[6, 1, 1\]"):
        load_grid(path)







def test_recipe_key_typo(tmp_path):
    path = full_grid(tmp_path, rest=TINY_REST + "recipe: {muon_rate: 0.01}\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: unknown keys \['muon_rate'\] under recipe"):
        load_grid(path)


def test_recipe_reference_zero(tmp_path):
    path = full_grid(tmp_path, rest=TINY_REST + "recipe: {d_ref: 0}\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: recipe d_ref = 0 must be a positive number"):
        load_grid(path)


def test_recipe_exponent_string_hint(tmp_path):
    path = full_grid(tmp_path, rest=TINY_REST + "recipe: {muon_lr: 1e-2}\n")
    with pytest.raises(ValueError, match=r"recipe muon_lr = '1e-2' must be a finite number "
                                         r"\(YAML reads 1e-2 as a string; write 1\.0e-2"):
        load_grid(path)


# ---- base grids --------------------------------------------------------------------------------


def test_bad_base_value_names_base_file(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "GRIDS", tmp_path)
    full_grid(tmp_path, "parent", model=TINY_MODEL.replace("head_dim: 8", "head_dim: 0"))
    child = write_grid(tmp_path, "child", "name: child\nbase: parent\nrecurrences: [1]\nbudgets: {2e9: [4]}\n")
    with pytest.raises(ValueError, match=r"grid file .*parent\.yaml: model head_dim = 0"):
        load_grid(child)


def test_child_model_typo_names_child(tmp_path):
    path = write_grid(tmp_path, "child", "name: child\nbase: tiny\nmodel: {seq_lenn: 64}\n"
                                         "recurrences: [1]\nbudgets: {2e9: [4]}\n")
    with pytest.raises(ValueError, match=r"grid file .*child\.yaml: unknown keys \['seq_lenn'\] under model"):
        load_grid(path)


def test_child_overrides_model_key(tmp_path):
    path = write_grid(tmp_path, "child", "name: child\nbase: tiny\nmodel: {seq_len: 64}\n"
                                         "recurrences: [1]\nbudgets: {2e9: [4]}\n")
    assert load_grid(path).runs()[0].model.seq_len == 64


def test_base_not_a_name(tmp_path):
    path = write_grid(tmp_path, "child", "name: child\nbase: [tiny]\nrecurrences: [1]\nbudgets: {2e9: [4]}\n")
    with pytest.raises(ValueError, match=r"child\.yaml: base must be the name of another grid, not \['tiny'\]"):
        load_grid(path)


# ---- recurrences, budgets and sizes ------------------------------------------------------------


@pytest.mark.parametrize("value,message", [
    ("[0, 2]", r"recurrences\[0\] = 0 must be a positive integer"),
    ("[1, a]", r"recurrences\[1\] = 'a' must be a positive integer"),
    ("[1, 2.5]", r"recurrences\[1\] = 2\.5 must be a positive integer"),
    ("4", r"recurrences must be a list of positive integers, not 4"),
])
def test_bad_recurrences(tmp_path, value, message):
    path = full_grid(tmp_path, rest=TINY_REST.replace("[1, 2]", value))
    with pytest.raises(ValueError, match=rf"grid file .*bad\.yaml: {message}"):
        load_grid(path)


@pytest.mark.parametrize("sizes,message", [
    ("[0, -2]", r"size 0 under budget 2e9 must be a positive integer"),
    ("[4, -2]", r"size -2 under budget 2e9 must be a positive integer"),
    ("4", r"budget 2e9 must map to a list of sizes, not 4"),
])
def test_bad_budget_sizes(tmp_path, sizes, message):
    path = full_grid(tmp_path, rest=TINY_REST.replace("[4, 6]", sizes))
    with pytest.raises(ValueError, match=rf"grid file .*bad\.yaml: {message}"):
        load_grid(path)



def test_duplicate_budget(tmp_path):
    path = full_grid(tmp_path, rest=TINY_REST + "  2.0e9: [8]\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: budgets 2e9 and 2\.0e9 are the same number"):
        load_grid(path)


def test_budgets_not_mapping(tmp_path):
    path = full_grid(tmp_path, rest="batch: {rows: 4}\nrecurrences: [1]\nbudgets: [2e9]\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: budgets must be a mapping"):
        load_grid(path)


def test_muon_lr_string_hint(tmp_path):
    path = full_grid(tmp_path, rest=TINY_REST + "muon_lrs: [0.01, 1e-3]\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: muon_lrs\[1\] = '1e-3' must be a positive number "
                                         r"\(YAML reads 1e-3 as a string; write 1\.0e-3"):
        load_grid(path)


# ---- variants, token_runs and reuse ------------------------------------------------------------


def test_unknown_injection(tmp_path):
    path = full_grid(tmp_path, rest=TINY_REST + "variants: [{name: x, injection: gated}]\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: variants\[0\] injection 'gated' is not one of"):
        load_grid(path)


def test_variant_not_mapping(tmp_path):
    path = full_grid(tmp_path, rest=TINY_REST + "variants: [tbptt]\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: variants\[0\] = 'tbptt' must be a mapping"):
        load_grid(path)


def test_token_runs_bad_size(tmp_path):
    path = full_grid(tmp_path, rest="batch: {rows: 4}\nrecurrences: [1]\n"
                                    "token_runs: [{sizes: [4, 0], tokens: 1.0e+5}]\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: token_runs\[0\] sizes\[1\] = 0 must be a positive integer"):
        load_grid(path)


def test_token_runs_bad_target(tmp_path):
    path = full_grid(tmp_path, rest="batch: {rows: 4}\nrecurrences: [1]\n"
                                    "token_runs: [{sizes: [4], tokens: many}]\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: token_runs\[0\] tokens = 'many' must be a positive number"):
        load_grid(path)


def test_reuse_bad_size(tmp_path):
    path = full_grid(tmp_path, rest=TINY_REST + "reuse: {grid: tiny, sizes: [0]}\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: reuse\[0\] sizes\[0\] = 0 must be a positive integer"):
        load_grid(path)


def test_collect_grid_checks_grid_file(tmp_path):
    path = full_grid(tmp_path, rest=TINY_REST.replace("[1, 2]", "[0, 2]"))
    with pytest.raises(ValueError, match=r"bad\.yaml: recurrences\[0\] = 0"):
        collect_grid(path, tmp_path / "runs")


# ---- isodepth collect --------------------------------------------------------------------------


def record(grid: str, run_id: str, loss=3.5) -> dict:
    return {
        "grid": grid, "run_id": run_id, "variant": "main", "status": "completed", "budget": 2e9, "r": 1,
        "size": 4, "model": {"d_model": 16, "n_prelude": 0, "n_coda": 0, "n_recur_layers": 6},
        "accounting": {"n_once": 100, "n_rec": 0, "n_total": 100, "flops_per_token": 1e5},
        "training": {"steps": 10, "tokens": 1280, "recipe": {"muon_lr": 0.01}}, "final_val_loss": loss,
        "validation_tokens": 1000, "train_time_s": 1.5,
    }


def write_record(runs_dir, rec, text=None):
    folder = runs_dir / rec["grid"] / rec["run_id"]
    folder.mkdir(parents=True)
    path = folder / "record.json"
    path.write_text(json.dumps(rec) if text is None else text)
    return path


def run_collect(argv):
    parser = argparse.ArgumentParser(prog="isodepth")
    add_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["collect", *argv])
    return args.func(args)


def test_truncated_record(tmp_path):
    rec = record("g", "a")
    path = write_record(tmp_path, rec, json.dumps(rec)[:40])
    with pytest.raises(ValueError, match=rf"^run record {path} is malformed \(invalid JSON: .*\); "
                                         r"retrain the run or delete the record$"):
        collect(["g"], tmp_path)


def test_record_loss_not_number(tmp_path):
    path = write_record(tmp_path, record("g", "a", loss="abc"))
    with pytest.raises(ValueError, match=rf"^run record {path} is malformed \(final_val_loss 'abc' is not a "
                                         r"number or null\); retrain the run or delete the record$"):
        collect(["g"], tmp_path)


def test_record_missing_key_named(tmp_path):
    rec = record("g", "a")
    del rec["training"]["steps"]
    write_record(tmp_path, rec)
    with pytest.raises(ValueError, match=r"record\.json is malformed \(missing key 'steps'\)"):
        collect(["g"], tmp_path)


def test_record_not_object(tmp_path):
    write_record(tmp_path, record("g", "a"), "[1, 2]")
    with pytest.raises(ValueError, match=r"record\.json is malformed \(a JSON list instead of an object\)"):
        collect(["g"], tmp_path)


def test_collect_grid_truncated_record(runs_dir):
    path = write_record(runs_dir, record("tiny", "C2.00e09-r1-s4"), "{")
    with pytest.raises(ValueError, match=rf"^run record {path} is malformed \(invalid JSON"):
        collect_grid("tiny", runs_dir)


def test_collect_command_unknown_grid(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"grid 'nosuchgrid' not found in .*known grids"):
        run_collect(["nosuchgrid", "--out", str(tmp_path / "runs.csv")])


def test_collect_command_folder_without_spec(runs_dir, tmp_path):
    write_record(runs_dir, record("legacy", "a"))
    out = tmp_path / "runs.csv"
    assert run_collect(["legacy", "--out", str(out)]) == 0
    assert pd.read_csv(out)["run_id"].tolist() == ["a"]


def test_collect_command_runs_dir_with_reuse(tmp_path):
    # A grid of its own that reuses a tiny run. Both records exist only in the --runs-dir folder.
    path = write_grid(tmp_path, "mine", "name: mine\nbase: tiny\nrecurrences: [2]\nbudgets: {2.0e9: [4]}\n"
                                        "reuse: {grid: tiny, recurrences: [1], budgets: [2.0e9], sizes: [4]}\n")
    other = tmp_path / "other-runs"
    write_record(other, record("mine", "C2.00e09-r2-s4"))
    write_record(other, record("tiny", "C2.00e09-r1-s4"))
    out, coverage = tmp_path / "runs.csv", tmp_path / "coverage.json"
    assert run_collect([path, "--runs-dir", str(other), "--out", str(out), "--coverage", str(coverage)]) == 0
    table = pd.read_csv(out)
    assert table[["grid", "run_id"]].values.tolist() == [["mine", "C2.00e09-r2-s4"], ["tiny", "C2.00e09-r1-s4"]]
    assert json.loads(coverage.read_text())["grids"][0]["n_collected"] == 2


def test_collect_command_default_runs_dir_empty(tmp_path):
    # Without --runs-dir the records in another folder are not read: the runs are "not trained yet".
    write_record(tmp_path / "other-runs", record("tiny", "C2.00e09-r1-s4"))
    out = tmp_path / "runs.csv"
    assert run_collect(["tiny", "--out", str(out)]) == 0
    assert pd.read_csv(out).empty


def test_collect_command_missing_runs_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"runs folder .*nowhere \(--runs-dir\) does not exist"):
        run_collect(["tiny", "--runs-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "runs.csv")])


def test_collect_help_states_defaults(capsys):
    with pytest.raises(SystemExit):
        run_collect(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "CSV table to write (default data/derived/runs.csv)" in text
    assert "--runs-dir DIR" in text
    assert "(default data/runs)" in text
