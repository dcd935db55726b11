"""Token streams of the embedded corpus, packed into fixed-length rows with BOS at document starts.

Every document is prefixed with BOS and the documents are concatenated, then cut into disjoint
rows of seq_len + 1 tokens (inputs and shifted targets). Training rows are put in one fixed
shuffled order, so every run reads the same stream and a run of n steps reads its first
n * batch rows. No run reads a training token twice.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch

from . import paths
from .corpus import CORPUS_FILE, read_documents
from .tokenizer import TOKENIZER_FILE, bos_id, load_tokenizer

log = logging.getLogger(__name__)

ROW_ORDER_SEED = 1234


def _cache_key(corpus: Path, tokenizer_file: Path, split: str) -> str:
    digest = hashlib.sha256()
    for path in (corpus, tokenizer_file):
        stat = Path(path).stat()
        digest.update(f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(split.encode())
    return digest.hexdigest()[:16]


def token_stream(split: str, corpus: Path = CORPUS_FILE, tokenizer_file: Path = TOKENIZER_FILE,
                 cache_dir: Path | None = None) -> np.ndarray:
    """Return the BOS-separated token ids of one split as uint16, cached under data/derived."""
    if split not in ("train", "validation"):
        raise ValueError(f"split={split!r} must be 'train' or 'validation'")
    cache_dir = Path(cache_dir or paths.DERIVED / "tokens")
    cache = cache_dir / f"{split}-{_cache_key(corpus, tokenizer_file, split)}.npy"
    if cache.exists():
        return np.load(cache, mmap_mode="r")

    tokenizer = load_tokenizer(tokenizer_file)
    if tokenizer.get_vocab_size() > np.iinfo(np.uint16).max:
        raise ValueError(f"vocabulary of {tokenizer.get_vocab_size()} does not fit uint16")
    bos = bos_id(tokenizer)
    docs = read_documents(corpus, split)
    encoded = tokenizer.encode_batch([d["text"] for d in docs])
    pieces = []
    for enc in encoded:
        pieces.append(np.array([bos] + enc.ids, dtype=np.uint16))
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint16)

    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".tmp.npy")
    np.save(tmp, stream)
    tmp.replace(cache)
    log.info("tokenized %s split: %d documents, %d tokens -> %s", split, len(docs), len(stream), cache)
    return stream


def pack_rows(stream: np.ndarray, row_len: int) -> np.ndarray:
    """Cut a token stream into disjoint rows of row_len tokens; the incomplete tail is dropped."""
    n_rows = len(stream) // row_len
    return np.asarray(stream[: n_rows * row_len]).reshape(n_rows, row_len)


class TrainRows:
    """Training rows in the fixed shuffled order that every run reads from the start."""

    def __init__(self, stream: np.ndarray, seq_len: int, seed: int = ROW_ORDER_SEED):
        self.rows = pack_rows(stream, seq_len + 1)
        self.order = np.random.default_rng(seed).permutation(len(self.rows))
        self.seq_len = seq_len

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def tokens(self) -> int:
        return len(self.rows) * self.seq_len

    def batch(self, start_row: int, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows [start_row, start_row + n_rows) of the fixed order as (inputs, targets)."""
        end = start_row + n_rows
        if end > len(self.rows):
            raise ValueError(
                f"the run needs training row {end - 1} but the corpus packs only {len(self.rows)} "
                f"rows of {self.seq_len + 1} tokens; shorten the run or add training text, "
                "because rows are never repeated"
            )
        chunk = torch.from_numpy(self.rows[self.order[start_row:end]].astype(np.int64))
        return chunk[:, :-1], chunk[:, 1:]


def validation_rows(stream: np.ndarray, seq_len: int) -> torch.Tensor:
    """Return all validation rows in corpus order, shape (n_rows, seq_len + 1)."""
    return torch.from_numpy(pack_rows(stream, seq_len + 1).astype(np.int64))
