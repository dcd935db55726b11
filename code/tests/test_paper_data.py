"""Pre-packed parquet shards: row order across shards, format checks, grid data sections, fetching."""

import json
import shutil
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pytest
import torch

from isodepth import paper_data, paths, train
from isodepth.data import TrainRows, pack_rows
from isodepth.grids import load_grid
from isodepth.paper_data import ParquetRows, PrepackedData, data_source_from_spec, fetch_prepacked
from prepacked_fixture import TINY_SEQ_LEN, tiny_streams, write_meta, write_shards, write_tiny_prepacked

ROW = TINY_SEQ_LEN + 1


def numbered_rows(n_rows: int, row_len: int = ROW) -> np.ndarray:
    """Row i contains the ids i, i + 1, ..., so any row can be recognised by its first id."""
    return (np.arange(n_rows)[:, None] + np.arange(row_len)[None, :]).astype(np.uint16)


@pytest.fixture
def numbered(tmp_path):
    rows = numbered_rows(25)
    files = write_shards(tmp_path, "train", rows, rows_per_shard=10)
    return rows, files


# ---- ParquetRows -------------------------------------------------------------------------------


def test_rows_length(numbered):
    rows, files = numbered
    assert len(ParquetRows(files, ROW)) == 25


def test_rows_span_shards(numbered):
    rows, files = numbered
    block = ParquetRows(files, ROW).rows(7, 23)
    assert block.dtype == torch.int64
    assert np.array_equal(block.numpy(), rows[7:23])


def test_rows_cache_evicts(numbered):
    rows, files = numbered
    source = ParquetRows(files, ROW, cache_shards=1)
    for start in (0, 12, 3, 21):
        assert np.array_equal(source.rows(start, start + 2).numpy(), rows[start : start + 2])
    assert len(source._cache) == 1


def test_batch_shifted_targets(numbered):
    rows, files = numbered
    inputs, targets = ParquetRows(files, ROW).batch(8, 4)
    assert inputs.shape == targets.shape == (4, TINY_SEQ_LEN)
    assert np.array_equal(inputs.numpy(), rows[8:12, :-1])
    assert np.array_equal(targets.numpy(), rows[8:12, 1:])


def test_batch_past_end_raises(numbered):
    _, files = numbered
    with pytest.raises(ValueError, match="rows are never repeated"):
        ParquetRows(files, ROW).batch(20, 6)


def test_slice_like_tensor(numbered):
    rows, files = numbered
    source = ParquetRows(files, ROW)
    assert np.array_equal(source[3:9].numpy(), rows[3:9])
    assert np.array_equal(source[20:100].numpy(), rows[20:25])


def test_slice_with_step_rejected(numbered):
    _, files = numbered
    with pytest.raises(TypeError, match="contiguous slices"):
        ParquetRows(files, ROW)[0:10:2]


def test_fixed_size_lists_read(tmp_path):
    rows = numbered_rows(12)
    files = write_shards(tmp_path, "train", rows, rows_per_shard=5, fixed_size=True)
    assert np.array_equal(ParquetRows(files, ROW).rows(0, 12).numpy(), rows)


def test_row_length_mismatch_raises(numbered):
    _, files = numbered
    with pytest.raises(ValueError, match="expected 17"):
        ParquetRows(files, 17).rows(0, 1)


def test_ragged_rows_raise(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "train-00000.parquet"
    pq.write_table(pa.table({"tokens": pa.array([[1, 2, 3], [1, 2]], type=pa.list_(pa.uint16()))}), path)
    with pytest.raises(ValueError, match="row 1 has 2 tokens"):
        ParquetRows([path], 3).rows(0, 2)


def test_missing_column_raises(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "train-00000.parquet"
    pq.write_table(pa.table({"ids": pa.array([[1, 2, 3]], type=pa.list_(pa.uint16()))}), path)
    with pytest.raises(ValueError, match="no column 'tokens'"):
        ParquetRows([path], 3).rows(0, 1)


def test_token_outside_vocab_raises(numbered):
    _, files = numbered
    with pytest.raises(ValueError, match="outside the model's vocabulary of 30"):
        ParquetRows(files, ROW, vocab_size=30).rows(0, 2)


# ---- PrepackedData -----------------------------------------------------------------------------


def test_prepacked_splits(tmp_path):
    write_tiny_prepacked(tmp_path, n_train_rows=300, n_val_rows=40, rows_per_shard=64)
    data = PrepackedData(tmp_path)
    assert len(data.train_rows(TINY_SEQ_LEN, 1024)) == 300
    assert len(data.validation_rows(TINY_SEQ_LEN, 1024)) == 40


def test_prepacked_train_order_matches_stream(tmp_path):
    """The fixture's shards hold TrainRows' fixed order, so both sources give the same batches."""
    write_tiny_prepacked(tmp_path, n_train_rows=300, n_val_rows=40, rows_per_shard=64)
    stream, _ = tiny_streams(300, 40)
    expected = TrainRows(stream, TINY_SEQ_LEN).batch(60, 16)
    got = PrepackedData(tmp_path).train_rows(TINY_SEQ_LEN).batch(60, 16)
    assert torch.equal(got[0], expected[0])
    assert torch.equal(got[1], expected[1])


def test_prepacked_without_meta(tmp_path):
    write_tiny_prepacked(tmp_path, n_train_rows=100, n_val_rows=20, meta=False)
    assert len(PrepackedData(tmp_path).train_rows(TINY_SEQ_LEN)) == 100


def test_prepacked_wrong_context_raises(tmp_path):
    write_tiny_prepacked(tmp_path, n_train_rows=100, n_val_rows=20)
    with pytest.raises(ValueError, match="needs rows of 65"):
        PrepackedData(tmp_path).train_rows(64)


def test_prepacked_vocab_too_small_raises(tmp_path):
    write_tiny_prepacked(tmp_path, n_train_rows=100, n_val_rows=20)
    with pytest.raises(ValueError, match="vocabulary of 1024 ids"):
        PrepackedData(tmp_path).train_rows(TINY_SEQ_LEN, vocab_size=512)


def test_prepacked_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="paper_data fetch"):
        PrepackedData(tmp_path / "absent")


def test_prepacked_missing_split_raises(tmp_path):
    write_shards(tmp_path, "train", numbered_rows(10), rows_per_shard=10)
    with pytest.raises(FileNotFoundError, match="no val-"):
        PrepackedData(tmp_path).validation_rows(TINY_SEQ_LEN)


# ---- training on shards ------------------------------------------------------------------------


def test_training_matches_stream(tmp_path):
    """A run trained on the shards ends with the loss of the same run on the stream, bit for bit."""
    run = {r.run_id: r for r in load_grid("tiny").runs()}["C2.00e09-r2-s4"]
    folder = write_tiny_prepacked(tmp_path / "shards")
    train_stream, val_stream = tiny_streams()
    from_shards = train.train_run(run, runs_dir=tmp_path / "a", checkpoint_dir=tmp_path / "a",
                                  data=PrepackedData(folder))
    from_stream = train.train_run(run, runs_dir=tmp_path / "b", checkpoint_dir=tmp_path / "b",
                                  train_stream=train_stream, validation_stream=val_stream)
    assert from_shards["final_val_loss"] == from_stream["final_val_loss"]
    assert from_shards["loss_curve"] == from_stream["loss_curve"]
    assert from_shards["data"]["kind"] == "parquet"


# ---- grid data sections ------------------------------------------------------------------------


def test_spec_none_is_corpus():
    assert data_source_from_spec(None) is None


def test_spec_parquet_relative_path(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "ROOT", tmp_path)
    (tmp_path / "shards").mkdir()
    source = data_source_from_spec({"kind": "parquet", "path": "shards"})
    assert source.folder == tmp_path / "shards"


def test_spec_default_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "ROOT", tmp_path)
    paper_data.default_folder().mkdir(parents=True)
    source = data_source_from_spec({"kind": "parquet"})
    assert source.folder == tmp_path / "downloads" / paper_data.DEFAULT_FOLDER_NAME


def test_spec_folder_override(tmp_path):
    source = data_source_from_spec(None, tmp_path)
    assert isinstance(source, PrepackedData)
    assert source.folder == tmp_path


def test_spec_unknown_kind_raises():
    with pytest.raises(ValueError, match="data kind 'hdf5' is unknown"):
        data_source_from_spec({"kind": "hdf5"})


def test_spec_unknown_key_raises(tmp_path):
    with pytest.raises(ValueError, match="unknown keys \\['shards'\\]"):
        data_source_from_spec({"kind": "parquet", "path": str(tmp_path), "shards": 3})


# ---- fetching ----------------------------------------------------------------------------------


@pytest.fixture
def remote(tmp_path):
    """A local stand-in for the dataset repository: 5 training shards of 10 rows, 2 validation shards."""
    folder = tmp_path / "remote"
    train_rows, val_rows = numbered_rows(45), numbered_rows(12)
    write_shards(folder, "train", train_rows, rows_per_shard=10)
    write_shards(folder, "val", val_rows, rows_per_shard=6)
    write_meta(folder, "train", train_rows, 5)
    write_meta(folder, "val", val_rows, 2)
    return folder


@pytest.fixture
def fake_hub(remote, monkeypatch):
    """Replace snapshot_download by a copy from `remote` that honours allow_patterns, and log the calls."""
    import huggingface_hub

    calls = []

    def snapshot_download(repo_id, *, repo_type, revision=None, local_dir, allow_patterns):
        calls.append({"repo_id": repo_id, "repo_type": repo_type, "patterns": list(allow_patterns)})
        for source in remote.iterdir():
            if any(fnmatch(source.name, p) for p in allow_patterns):
                shutil.copy(source, Path(local_dir) / source.name)
        return local_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_fetch_only_needed_shards(tmp_path, fake_hub):
    folder = fetch_prepacked(tmp_path / "local", train_rows=25)
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["meta_train.json", "meta_val.json", "train-00000.parquet", "train-00001.parquet",
                     "train-00002.parquet", "val-00000.parquet", "val-00001.parquet"]


def test_fetch_dataset_repo(tmp_path, fake_hub):
    fetch_prepacked(tmp_path / "local", train_rows=5)
    assert {c["repo_id"] for c in fake_hub} == {paper_data.PREPACKED_REPO_ID}
    assert {c["repo_type"] for c in fake_hub} == {"dataset"}


def test_fetch_all_shards(tmp_path, fake_hub):
    folder = fetch_prepacked(tmp_path / "local")
    assert len(list(folder.glob("train-*.parquet"))) == 5


def test_fetch_too_many_rows_raises(tmp_path, fake_hub):
    with pytest.raises(ValueError, match="46 training rows requested but"):
        fetch_prepacked(tmp_path / "local", train_rows=46)


def test_fetch_without_meta_takes_all(tmp_path, remote, fake_hub):
    (remote / "meta_train.json").unlink()
    folder = fetch_prepacked(tmp_path / "local", train_rows=5)
    assert len(list(folder.glob("train-*.parquet"))) == 5


def test_fetch_short_shards_fetches_more(tmp_path, remote, fake_hub):
    """A meta that overstates rows per shard makes the first estimate short; fetching continues."""
    meta = json.loads((remote / "meta_train.json").read_text())
    meta["num_shards"] = 3  # 45 rows / 3 shards suggests 15 rows per shard, but each has 10
    (remote / "meta_train.json").write_text(json.dumps(meta))
    folder = fetch_prepacked(tmp_path / "local", train_rows=25)
    # The first round fetches 2 shards (20 rows), the second adds one more.
    assert len(list(folder.glob("train-*.parquet"))) == 3


def test_rows_needed_tiny():
    runs = load_grid("tiny").runs()
    assert paper_data.rows_needed("tiny") == max(r.steps * r.batch_rows for r in runs)


def test_validation_rows_match_stream(tmp_path):
    write_tiny_prepacked(tmp_path, n_train_rows=100, n_val_rows=20)
    _, val_stream = tiny_streams(100, 20)
    got = PrepackedData(tmp_path).validation_rows(TINY_SEQ_LEN)[0:20]
    assert torch.equal(got, torch.from_numpy(pack_rows(val_stream, ROW).astype(np.int64)))
