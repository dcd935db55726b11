"""Bad input on the command line: one line that names the value, exit status 2, nothing half-done."""

import pytest

from isodepth import cli, train

RUN = "C2.00e09-r1-s8"


def run_cli(capsys, *argv) -> tuple[int, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as stop:  # argparse rejects a value before any command runs
        code = stop.code
    return code, capsys.readouterr().err


def test_unknown_grid_is_one_line(capsys):
    code, err = run_cli(capsys, "plan", "nosuchgrid")
    assert code == 2
    assert err.startswith("isodepth: error: grid 'nosuchgrid' not found")
    assert "Traceback" not in err


def test_verbose_keeps_the_traceback():
    with pytest.raises(FileNotFoundError, match="nosuchgrid"):
        cli.main(["-v", "plan", "nosuchgrid"])


@pytest.mark.parametrize("argv, message", [
    (["--workers", "0"], "--workers: 0 is not allowed"),
    (["--threads", "-1"], "--threads: -1 is not allowed"),
    (["--max-budget", "0"], "--max-budget: 0 is not allowed"),
    (["--max-budget", "nan"], "--max-budget: nan is not allowed"),
    (["--runs"], "--runs: expected at least one argument"),
    (["--gpus", ""], "has an empty GPU id"),
    (["--gpus", "0,0"], "names GPU 0 more than once"),
    (["--gpus-per-run", "0"], "--gpus-per-run: 0 is not allowed"),
])
def test_sweep_rejects_bad_values(capsys, argv, message):
    code, err = run_cli(capsys, "sweep", "tiny", "--dry-run", *argv)
    assert code == 2
    assert message in err


def test_sweep_rejects_ignored_launcher_flags(capsys):
    code, err = run_cli(capsys, "sweep", "tiny", "--dry-run", "--gpus", "0", "--log-dir", "/tmp/x")
    assert code == 2
    assert "--launcher local ignores --gpus, --log-dir" in err


def test_sweep_dry_run_checks_the_runs_dir(capsys, tmp_path):
    not_a_folder = tmp_path / "afile"
    not_a_folder.write_text("")
    code, err = run_cli(capsys, "sweep", "tiny", "--dry-run", "--runs-dir", str(not_a_folder / "runs"))
    assert code == 2
    assert f"{not_a_folder} is a file" in err


def test_train_checks_its_folders_before_training(capsys, tmp_path):
    not_a_folder = tmp_path / "afile"
    not_a_folder.write_text("")
    code, err = run_cli(capsys, "train", "tiny", RUN, "--runs-dir", str(not_a_folder),
                        "--checkpoint-dir", str(tmp_path / "checkpoints"))
    assert code == 2
    assert f"--runs-dir {not_a_folder / 'tiny'} cannot be a folder: {not_a_folder} is a file" in err
    assert not (tmp_path / "checkpoints" / "tiny" / RUN).exists()


def test_module_entry_point_exit_status(capsys, tmp_path):
    not_a_folder = tmp_path / "afile"
    not_a_folder.write_text("")
    with pytest.raises(SystemExit) as stop:
        train.main(["--grid", "tiny", "--run-id", RUN, "--threads", "0"])
    assert stop.value.code == 2
    code = train.main(["--grid", "tiny", "--run-id", RUN, "--runs-dir", str(not_a_folder)])
    assert code == 2
    assert "python -m isodepth.train: error: --runs-dir" in capsys.readouterr().err


@pytest.mark.parametrize("limit", ["0", "-1", "inf", "abc"])
def test_eval_limit_must_be_positive(capsys, limit):
    code, err = run_cli(capsys, "eval", "grid", "tiny", "--limit", limit)
    assert code == 2
    assert "--limit" in err


def test_eval_grid_without_checkpoints(capsys, tmp_path):
    code, err = run_cli(capsys, "eval", "grid", "nosuchgrid", "--tasks", "synthetic")
    assert code == 2
    assert "grid 'nosuchgrid' has no checkpoints" in err


def test_fit_checks_the_json_folder_before_fitting(capsys, caplog, tmp_path):
    table = tmp_path / "runs.csv"
    table.write_text("r,n_once,n_rec,tokens,loss\n" + "".join(
        f"{r},{1000 * s},{2000 * s},{100000 * s},{4 - 0.1 * s - 0.01 * r}\n" for r in (1, 2, 4) for s in (1, 2, 3)))
    not_a_folder = tmp_path / "afile"
    not_a_folder.write_text("")
    code, _ = run_cli(capsys, "fit", str(table), "--starts", "2", "--json", str(not_a_folder / "fit.json"))
    assert code == 2
    assert f"--json {not_a_folder} cannot be a folder: {not_a_folder} is a file" in caplog.text
    code, err = run_cli(capsys, "fit", str(table), "--bootstrap", "-3")
    assert code == 2
    assert "--bootstrap: -3 is not allowed" in err


def test_checkpoint_interval_may_be_infinite(capsys):
    code, _ = run_cli(capsys, "sweep", "tiny", "--dry-run", "--checkpoint-every-s", "inf")
    assert code == 0
    code, err = run_cli(capsys, "sweep", "tiny", "--dry-run", "--checkpoint-every-s", "0")
    assert code == 2
    assert "--checkpoint-every-s: 0 is not allowed" in err
