"""Small pre-packed parquet datasets in the authors' layout, written by the tests themselves.

train-NNNNN.parquet / val-NNNNN.parquet with a `tokens` column of uint16 lists, plus
meta_train.json and meta_val.json. The training rows are the tiny grid's rows of a synthetic
stream in TrainRows' fixed order, so a run on the shards reads exactly the rows that the same
run reads from the stream itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from isodepth.data import TrainRows, pack_rows

TINY_SEQ_LEN = 32


def markov_stream(n_tokens: int, seed: int) -> np.ndarray:
    """A learnable stream: each token is the previous one plus 1 or 2, modulo 64, offset by 100."""
    steps = np.random.default_rng(seed).integers(1, 3, n_tokens)
    return (np.cumsum(steps) % 64 + 100).astype(np.uint16)


def write_shards(folder: Path, prefix: str, rows: np.ndarray, rows_per_shard: int,
                 fixed_size: bool = False) -> list[Path]:
    """Write rows (n, row_len) as prefix-00000.parquet, ... of rows_per_shard rows each."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for index, start in enumerate(range(0, len(rows), rows_per_shard)):
        block = rows[start : start + rows_per_shard].astype(np.uint16)
        values = pa.array(block.reshape(-1), type=pa.uint16())
        if fixed_size:
            column = pa.FixedSizeListArray.from_arrays(values, block.shape[1])
        else:
            offsets = pa.array(np.arange(0, block.size + 1, block.shape[1], dtype=np.int32))
            column = pa.ListArray.from_arrays(offsets, values)
        path = folder / f"{prefix}-{index:05d}.parquet"
        pq.write_table(pa.table({"tokens": column}), path)
        files.append(path)
    return files


def write_meta(folder: Path, prefix: str, rows: np.ndarray, n_shards: int, vocab_size: int = 1024) -> None:
    meta = {"dataset": "synthetic test stream", "vocab_size": vocab_size, "bos_token_id": 1,
            "seq_len": rows.shape[1] - 1, "row_capacity": rows.shape[1], "total_rows": len(rows),
            "total_tokens": int(rows.size), "num_shards": n_shards, "split": prefix}
    (folder / f"meta_{prefix}.json").write_text(json.dumps(meta, indent=2))


def tiny_streams(n_train_rows: int = 600, n_val_rows: int = 64) -> tuple[np.ndarray, np.ndarray]:
    row = TINY_SEQ_LEN + 1
    return markov_stream(row * n_train_rows, seed=0), markov_stream(row * n_val_rows, seed=1)


def write_tiny_prepacked(folder: Path, n_train_rows: int = 600, n_val_rows: int = 64,
                         rows_per_shard: int = 128, meta: bool = True) -> Path:
    """Shards holding the rows that TrainRows reads from tiny_streams(), in the same order."""
    train_stream, val_stream = tiny_streams(n_train_rows, n_val_rows)
    ordered = TrainRows(train_stream, TINY_SEQ_LEN)
    train_rows = ordered.rows[ordered.order]
    val_rows = pack_rows(val_stream, TINY_SEQ_LEN + 1)
    train_files = write_shards(folder, "train", train_rows, rows_per_shard)
    val_files = write_shards(folder, "val", val_rows, rows_per_shard)
    if meta:
        write_meta(folder, "train", train_rows, len(train_files))
        write_meta(folder, "val", val_rows, len(val_files))
    return folder
