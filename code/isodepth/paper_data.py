"""The study's training data: the authors' pre-packed FineWeb-Edu parquet shards, read with pyarrow.

The dataset (Hugging Face dataset PREPACKED_REPO_ID) contains shards train-00000.parquet, ...
and val-00000.parquet, ... with one column `tokens`: each row is a BOS-aligned, best-fit
packed sequence of seq_len + 1 = 2049 Llama-2 token ids stored as uint16. Each shard's rows
were shuffled when it was written, and meta_train.json / meta_val.json record the row length
(`row_capacity`), the vocabulary and the row and shard counts.

A run reads the training rows in file order (shards sorted by name, rows in stored order),
so a run of n steps reads rows [0, n * batch_rows), the same stream for every run, and never
repeats a row. ParquetRows presents the interface of isodepth.data.TrainRows, and
PrepackedData the `train_rows` / `validation_rows` interface that train_run takes as `data=`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from . import paths

log = logging.getLogger(__name__)

PREPACKED_REPO_ID = "KristianS7/prepacked-fineweb-edu-llama2-32K-T2048"
DEFAULT_FOLDER_NAME = "prepacked-fineweb-edu-llama2-32K-T2048"
TOKENS_COLUMN = "tokens"
# File-name prefix of each split in the authors' dataset.
SPLIT_PREFIX = {"train": "train", "validation": "val"}


def default_folder() -> Path:
    """Return the folder for the shards when neither the grid nor a flag names one (git ignores downloads/)."""
    return paths.ROOT / "downloads" / DEFAULT_FOLDER_NAME


def shard_files(folder: Path, split: str) -> list[Path]:
    """Parquet shards of one split ('train' or 'validation'), sorted by name."""
    if split not in SPLIT_PREFIX:
        raise ValueError(f"split={split!r} must be 'train' or 'validation'")
    return sorted(Path(folder).glob(f"{SPLIT_PREFIX[split]}-*.parquet"))


def read_meta(folder: Path, split: str) -> dict | None:
    """Read the split's meta_<prefix>.json; return None when the folder has none."""
    path = Path(folder) / f"meta_{SPLIT_PREFIX[split]}.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete it and fetch the dataset again") from err


def read_tokens(path: Path, row_group: int | None = None) -> np.ndarray:
    """Read the `tokens` column of one shard (or one of its row groups) as an (n_rows, row_len) array."""
    shard = pq.ParquetFile(path)
    names = shard.schema_arrow.names
    if TOKENS_COLUMN not in names:
        raise ValueError(f"{path} has no column {TOKENS_COLUMN!r} (columns: {names}); "
                         "expected the pre-packed format with one list of token ids per row")
    if row_group is None:
        table = shard.read(columns=[TOKENS_COLUMN])
    else:
        table = shard.read_row_group(row_group, columns=[TOKENS_COLUMN])
    return _token_matrix(table, path)


def _token_matrix(table: pa.Table, path: Path) -> np.ndarray:
    column = table.column(TOKENS_COLUMN).combine_chunks()
    kind = column.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)):
        raise ValueError(f"{path}: column {TOKENS_COLUMN!r} has type {kind}, expected a list of integers")
    if not pa.types.is_integer(kind.value_type):
        raise ValueError(f"{path}: column {TOKENS_COLUMN!r} has values of type {kind.value_type}, expected integer token ids")
    n_rows = len(column)
    if n_rows == 0:
        return np.zeros((0, 0), dtype=np.uint16)
    if column.null_count:
        raise ValueError(f"{path}: {column.null_count} rows of {TOKENS_COLUMN!r} are null")
    if pa.types.is_fixed_size_list(kind):
        row_len = kind.list_size
    else:
        offsets = column.offsets.to_numpy()
        lengths = np.diff(offsets)
        row_len = int(lengths[0])
        if not np.all(lengths == row_len):
            bad = int(np.argmax(lengths != row_len))
            raise ValueError(f"{path}: row {bad} has {int(lengths[bad])} tokens but row 0 has {row_len}; "
                             "every row of a pre-packed shard must have the same length")
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(n_rows, row_len)


class ParquetRows:
    """Rows of one split across its shards in file order, addressed by a global row index.

    Shards are read whole when first touched and the `cache_shards` most recently used are kept
    in memory (about 61 MB each for the authors' 15,000-row shards).
    """

    def __init__(self, files: list[Path], row_len: int, vocab_size: int | None = None,
                 cache_shards: int = 2):
        if not files:
            raise ValueError("no parquet shards given")
        self.files = [Path(f) for f in files]
        self.row_len = row_len
        self.seq_len = row_len - 1
        self.vocab_size = vocab_size
        counts = [pq.ParquetFile(f).metadata.num_rows for f in self.files]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_shards = max(1, cache_shards)

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def tokens(self) -> int:
        return len(self) * self.seq_len

    def _shard(self, index: int) -> np.ndarray:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        path = self.files[index]
        matrix = read_tokens(path)
        expected = int(self.starts[index + 1] - self.starts[index])
        if matrix.shape[0] != expected:
            raise ValueError(f"{path} has {matrix.shape[0]} rows but its parquet metadata records {expected}")
        if matrix.shape[0] and matrix.shape[1] != self.row_len:
            raise ValueError(f"{path} has rows of {matrix.shape[1]} tokens, expected {self.row_len} "
                             f"(seq_len {self.seq_len} + 1); use shards packed for this context length")
        self._cache[index] = matrix
        while len(self._cache) > self._cache_shards:
            self._cache.popitem(last=False)
        return matrix

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Return rows [start, stop) as an int64 tensor of shape (stop - start, row_len)."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"rows [{start}, {stop}) are outside the {len(self)} rows of these shards")
        pieces = []
        position = start
        while position < stop:
            shard = int(np.searchsorted(self.starts, position, side="right") - 1)
            local = position - int(self.starts[shard])
            take = min(stop, int(self.starts[shard + 1])) - position
            pieces.append(self._shard(shard)[local : local + take])
            position += take
        block = np.concatenate(pieces) if pieces else np.zeros((0, self.row_len), dtype=np.int64)
        out = torch.from_numpy(block.astype(np.int64))
        if self.vocab_size is not None and out.numel() and int(out.max()) >= self.vocab_size:
            raise ValueError(f"rows [{start}, {stop}) contain token id {int(out.max())}, outside the model's "
                             f"vocabulary of {self.vocab_size}; the shards were packed for another tokenizer")
        return out

    def __getitem__(self, index: slice) -> torch.Tensor:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("ParquetRows supports contiguous slices only, e.g. rows[0:32]")
        start, stop, _ = index.indices(len(self))
        return self.rows(start, max(start, stop))

    def batch(self, start_row: int, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return rows [start_row, start_row + n_rows) as (inputs, targets), like TrainRows.batch."""
        end = start_row + n_rows
        if end > len(self):
            raise ValueError(
                f"the run needs training row {end - 1} but the shards hold only {len(self)} rows of "
                f"{self.row_len} tokens; fetch more shards or shorten the run, because rows are never repeated")
        chunk = self.rows(start_row, end)
        return chunk[:, :-1], chunk[:, 1:]


class PrepackedData:
    """The pre-packed dataset in a local folder: training and validation rows for train_run."""

    def __init__(self, folder: Path | str, repo_id: str | None = PREPACKED_REPO_ID):
        self.folder = Path(folder)
        self.repo_id = repo_id
        if not self.folder.is_dir():
            raise FileNotFoundError(
                f"pre-packed data folder {self.folder} not found; fetch it with "
                f"`python -m isodepth.paper_data fetch --dir {self.folder}`")

    def _rows(self, split: str, seq_len: int, vocab_size: int | None) -> ParquetRows:
        files = shard_files(self.folder, split)
        if not files:
            raise FileNotFoundError(
                f"no {SPLIT_PREFIX[split]}-*.parquet shards in {self.folder}; fetch them with "
                f"`python -m isodepth.paper_data fetch --dir {self.folder}`")
        meta = read_meta(self.folder, split) or {}
        row_len = meta.get("row_capacity")
        if row_len is None:
            first = read_tokens(files[0], row_group=0)
            row_len = first.shape[1]
        if row_len != seq_len + 1:
            raise ValueError(
                f"{self.folder}: {split} rows have {row_len} tokens but the model's context of {seq_len} "
                f"needs rows of {seq_len + 1}; use shards packed for seq_len {seq_len}")
        meta_vocab = meta.get("vocab_size")
        if vocab_size is not None and meta_vocab is not None and meta_vocab > vocab_size:
            raise ValueError(f"{self.folder}: the shards use a vocabulary of {meta_vocab} ids but the "
                             f"model has {vocab_size}; use a grid whose vocab_size covers the tokenizer")
        return ParquetRows(files, row_len, vocab_size)

    def train_rows(self, seq_len: int, vocab_size: int | None = None) -> ParquetRows:
        return self._rows("train", seq_len, vocab_size)

    def validation_rows(self, seq_len: int, vocab_size: int | None = None) -> ParquetRows:
        return self._rows("validation", seq_len, vocab_size)

    def describe(self) -> dict:
        """Provenance of the data for the run record."""
        return {"kind": "parquet", "path": str(self.folder), "repo_id": self.repo_id,
                "tokenizer": f"Llama-2 32K, as packed in {self.repo_id or self.folder}",
                "train_shards": len(shard_files(self.folder, "train")),
                "validation_shards": len(shard_files(self.folder, "validation"))}


def data_spec_folder(spec: dict) -> Path:
    """Folder of a grid's `data:` section: `path`, relative to the repository root, or the default."""
    folder = spec.get("path")
    if folder is None:
        return default_folder()
    folder = Path(folder)
    return folder if folder.is_absolute() else paths.ROOT / folder


def data_source_from_spec(spec: dict | None, folder: Path | str | None = None):
    """Return the data source that a grid's optional `data:` section names, or None for the embedded corpus.

    `data: {kind: parquet, path: PATH, repo_id: ID}` selects pre-packed shards (path relative to
    the repository root; both keys optional). `folder` overrides the path and selects the parquet
    source even when the grid has no `data:` section.
    """
    spec = dict(spec or {})
    kind = spec.get("kind", "parquet" if folder is not None else "corpus")
    if kind == "corpus":
        return None
    if kind != "parquet":
        raise ValueError(f"data kind {kind!r} is unknown; use 'corpus' (the embedded corpus) or 'parquet'")
    unknown = sorted(set(spec) - {"kind", "path", "repo_id"})
    if unknown:
        raise ValueError(f"unknown keys {unknown} in the grid's data section; known keys are kind, path, repo_id")
    return PrepackedData(Path(folder) if folder is not None else data_spec_folder(spec),
                         repo_id=spec.get("repo_id", PREPACKED_REPO_ID))


# ---- fetching ----------------------------------------------------------------------------------


def _count_rows(files: list[Path]) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def fetch_prepacked(folder: Path | str | None = None, *, repo_id: str = PREPACKED_REPO_ID,
                    train_rows: int | None = None, revision: str | None = None) -> Path:
    """Download the metadata, the validation shards and enough training shards into `folder`.

    With `train_rows` (the rows a grid's longest run reads), only the first training shards
    that contain that many rows are fetched. Without it, every training shard is fetched.
    Files already in the folder are kept, because snapshot_download skips what is present.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    folder = Path(folder) if folder is not None else default_folder()

    def download(patterns: list[str]) -> None:
        log.info("fetching %s from %s into %s", ", ".join(patterns[:4]) + (" ..." if len(patterns) > 4 else ""),
                 repo_id, folder)
        try:
            snapshot_download(repo_id=repo_id, repo_type="dataset", revision=revision,
                              local_dir=str(folder), allow_patterns=patterns)
        except (LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
            raise RuntimeError(f"could not fetch {patterns} of {repo_id} ({err}); unset HF_HUB_OFFLINE "
                               f"and check the network, or copy the shards into {folder}") from err

    folder.mkdir(parents=True, exist_ok=True)
    download(["meta_*.json", "val-*.parquet"])
    if train_rows is None:
        download(["train-*.parquet"])
        return folder

    meta = read_meta(folder, "train")
    if not meta or not meta.get("num_shards") or not meta.get("total_rows"):
        log.warning("%s has no meta_train.json with row and shard counts; fetching every training shard", repo_id)
        download(["train-*.parquet"])
        return folder
    if train_rows > meta["total_rows"]:
        raise ValueError(f"{train_rows} training rows requested but {repo_id} has only {meta['total_rows']}")
    # Every shard but the last has the same number of rows, so this estimate is at most the
    # true count per shard and the shard count below can only err towards fetching more.
    rows_per_shard = math.ceil(meta["total_rows"] / meta["num_shards"])
    n_shards = min(meta["num_shards"], math.ceil(train_rows / rows_per_shard))
    while True:
        download([f"train-{i:05d}.parquet" for i in range(n_shards)])
        have = _count_rows(shard_files(folder, "train")[:n_shards])
        if have >= train_rows or n_shards >= meta["num_shards"]:
            break
        n_shards = min(meta["num_shards"], n_shards + math.ceil((train_rows - have) / rows_per_shard))
    log.info("%s: %d training shards hold the %d rows needed", folder, n_shards, train_rows)
    return folder


def rows_needed(grid_name: str) -> int:
    """Training rows read by the longest run of a grid (steps x batch rows)."""
    from .grids import load_grid

    return max(run.steps * run.batch_rows for run in load_grid(grid_name).runs())


# ---- command line ------------------------------------------------------------------------------


def _fetch_command(args) -> int:
    train_rows = None if args.all else rows_needed(args.grid)
    folder = fetch_prepacked(args.dir, repo_id=args.repo_id, train_rows=train_rows, revision=args.revision)
    print(folder)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grid", default="paper", help="fetch the training rows that this grid's longest run reads")
    parser.add_argument("--all", action="store_true", help="fetch every training shard (about 100B tokens)")
    parser.add_argument("--dir", type=Path, default=None,
                        help=f"destination folder (default downloads/{DEFAULT_FOLDER_NAME})")
    parser.add_argument("--repo-id", default=PREPACKED_REPO_ID, help="Hugging Face dataset id")
    parser.add_argument("--revision", default=None, help="dataset revision (commit or branch) to fetch")
    parser.set_defaults(func=_fetch_command)


def add_command(sub) -> None:
    """Register `fetch-data` on the isodepth command line."""
    parser = sub.add_parser("fetch-data", help="download the pre-packed FineWeb-Edu shards for a grid")
    add_arguments(parser)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m isodepth.paper_data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download the pre-packed FineWeb-Edu shards for a grid")
    add_arguments(fetch)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
