"""Run-table checks: every kind of bad input raises RunTableError naming the rows and the fix."""

import numpy as np
import pandas as pd
import pytest

from isodepth.fit.io import RunTableError, dumps, read_runs, validate_runs


def table(n=8):
    r = np.array([1, 2, 4, 8] * (n // 4 + 1))[:n]
    return pd.DataFrame({
        "run_id": [f"run{i}" for i in range(n)],
        "budget": [1e12] * (n // 2) + [4e12] * (n - n // 2),
        "r": r,
        "n_once": np.linspace(2e4, 2e5, n),
        "n_rec": np.linspace(3e4, 3e5, n),
        "tokens": np.linspace(1e5, 4e6, n),
        "loss": np.linspace(3.0, 5.0, n),
    })


def test_valid_table_passes_and_gets_labels():
    checked = validate_runs(table())
    assert list(checked["label"])[:2] == ["run0 (row 0)", "run1 (row 1)"]
    assert checked["r"].dtype.kind == "i"


@pytest.mark.parametrize("value", [np.nan, 0.0, -1.0])
def test_bad_loss_names_run(value):
    frame = table()
    frame.loc[3, "loss"] = value
    with pytest.raises(RunTableError, match="run3") as err:
        validate_runs(frame)
    assert "drop" in str(err.value)


def test_missing_column_is_named():
    with pytest.raises(RunTableError, match=r"missing the columns \['n_rec'\]"):
        validate_runs(table().drop(columns="n_rec"))


def test_single_r_rejected():
    frame = table()
    frame["r"] = 4
    frame["tokens"] = np.linspace(1e5, 4e6, len(frame))
    with pytest.raises(RunTableError, match="only r = \\[4\\]"):
        validate_runs(frame)


def test_fewer_than_six_runs_rejected():
    with pytest.raises(RunTableError, match="5 runs but a fit needs at least 6"):
        validate_runs(table(5))


def test_duplicated_run_id_rejected():
    frame = table()
    frame.loc[5, "run_id"] = "run2"
    with pytest.raises(RunTableError, match="run ids occur more than once: run2"):
        validate_runs(frame)


def test_duplicated_configuration_rejected():
    frame = table().drop(columns="run_id")
    columns = ["budget", "r", "n_once", "n_rec", "tokens"]
    frame.loc[6, columns] = frame.loc[1, columns].to_numpy()
    with pytest.raises(RunTableError, match="same run") as err:
        validate_runs(frame)
    assert "row 1" in str(err.value)
    assert "row 6" in str(err.value)


def test_non_integer_r_rejected():
    frame = table()
    frame["r"] = frame["r"].astype(float)
    frame.loc[2, "r"] = 2.5
    with pytest.raises(RunTableError, match="positive integer"):
        validate_runs(frame)


def test_negative_n_rec_rejected():
    frame = table()
    frame.loc[4, "n_rec"] = -5
    with pytest.raises(RunTableError, match="n_rec .* negative in run4"):
        validate_runs(frame)


def test_failed_status_rejected():
    frame = table()
    frame["status"] = "completed"
    frame.loc[1, "status"] = "diverged"
    with pytest.raises(RunTableError, match="not completed"):
        validate_runs(frame)


def test_csv_errors_give_line_numbers(tmp_path):
    frame = table()
    frame.loc[0, "loss"] = np.nan
    path = tmp_path / "runs.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(RunTableError, match=r"run0 \(line 2\)"):
        read_runs(path)


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="isodepth collect"):
        read_runs(tmp_path / "absent.csv")


def test_json_keeps_full_precision_and_nulls_nan():
    text = dumps({"x": np.float64(0.1 + 0.2), "y": float("nan"), "z": np.arange(2)})
    assert "0.30000000000000004" in text
    assert '"y": null' in text
