"""Tokenised streams, row packing and the fixed training-row order."""

import json
import lzma

import numpy as np
import pytest
import torch

from isodepth.data import ROW_ORDER_SEED, TrainRows, pack_rows, token_stream, validation_rows
from isodepth.tokenizer import TOKENIZER_FILE, bos_id, load_tokenizer

DOCUMENTS = [
    {"id": "a", "source": "test", "split": "train", "text": "In the beginning was the word."},
    {"id": "b", "source": "test", "split": "validation", "text": "A held-out sentence."},
    {"id": "c", "source": "test", "split": "train", "text": "def f(x):\n    return x + 1\n"},
    {"id": "d", "source": "test", "split": "train", "text": "To be, or not to be."},
]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "documents.jsonl.xz"
    lines = "".join(json.dumps(doc) + "\n" for doc in DOCUMENTS)
    path.write_bytes(lzma.compress(lines.encode("utf-8")))
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TOKENIZER_FILE)


def split_at_bos(stream: np.ndarray, bos: int) -> list[list[int]]:
    starts = np.flatnonzero(stream == bos).tolist() + [len(stream)]
    return [stream[a + 1 : b].tolist() for a, b in zip(starts, starts[1:])]


def test_stream_starts_with_bos(corpus, tmp_path, tokenizer):
    stream = token_stream("train", corpus=corpus, cache_dir=tmp_path / "cache")
    assert stream[0] == bos_id(tokenizer)


def test_stream_bos_per_document(corpus, tmp_path, tokenizer):
    stream = token_stream("train", corpus=corpus, cache_dir=tmp_path / "cache")
    assert int((stream == bos_id(tokenizer)).sum()) == 3


def test_stream_documents_in_order(corpus, tmp_path, tokenizer):
    stream = token_stream("train", corpus=corpus, cache_dir=tmp_path / "cache")
    texts = [tokenizer.decode(ids) for ids in split_at_bos(np.asarray(stream), bos_id(tokenizer))]
    assert texts == [doc["text"] for doc in DOCUMENTS if doc["split"] == "train"]


def test_stream_validation_split(corpus, tmp_path, tokenizer):
    stream = token_stream("validation", corpus=corpus, cache_dir=tmp_path / "cache")
    texts = [tokenizer.decode(ids) for ids in split_at_bos(np.asarray(stream), bos_id(tokenizer))]
    assert texts == ["A held-out sentence."]


def test_stream_cached(corpus, tmp_path):
    cache = tmp_path / "cache"
    first = np.asarray(token_stream("train", corpus=corpus, cache_dir=cache))
    assert len(list(cache.glob("train-*.npy"))) == 1
    second = np.asarray(token_stream("train", corpus=corpus, cache_dir=cache))
    assert np.array_equal(first, second)


def test_stream_uint16(corpus, tmp_path):
    assert token_stream("train", corpus=corpus, cache_dir=tmp_path / "cache").dtype == np.uint16


def test_stream_rejects_split(corpus, tmp_path):
    with pytest.raises(ValueError, match="must be 'train' or 'validation'"):
        token_stream("test", corpus=corpus, cache_dir=tmp_path / "cache")


# ---- packing -----------------------------------------------------------------------------------


def test_pack_rows_shape():
    assert pack_rows(np.arange(23), 5).shape == (4, 5)


def test_pack_rows_disjoint():
    """Rows are consecutive, non-overlapping slices of the stream; the tail is dropped."""
    stream = np.arange(23)
    rows = pack_rows(stream, 5)
    assert np.array_equal(rows.reshape(-1), stream[:20])


def test_pack_rows_short_stream():
    assert pack_rows(np.arange(3), 5).shape == (0, 5)


def test_validation_rows_order():
    stream = np.arange(50, dtype=np.uint16)
    rows = validation_rows(stream, seq_len=9)
    assert rows.dtype == torch.int64
    assert torch.equal(rows, torch.arange(50).reshape(5, 10))


# ---- training-row order ------------------------------------------------------------------------


def stream_of(n_tokens: int) -> np.ndarray:
    return np.arange(n_tokens, dtype=np.int64) % 60_000


def test_rows_order_fixed():
    a = TrainRows(stream_of(33 * 50), seq_len=32)
    b = TrainRows(stream_of(33 * 50), seq_len=32)
    assert np.array_equal(a.order, b.order)


def test_rows_order_default_seed():
    rows = TrainRows(stream_of(33 * 50), seq_len=32)
    expected = np.random.default_rng(ROW_ORDER_SEED).permutation(50)
    assert np.array_equal(rows.order, expected)


def test_rows_order_depends_on_seed():
    a = TrainRows(stream_of(33 * 50), seq_len=32, seed=1)
    b = TrainRows(stream_of(33 * 50), seq_len=32, seed=2)
    assert not np.array_equal(a.order, b.order)


def test_rows_order_shuffled():
    rows = TrainRows(stream_of(33 * 50), seq_len=32)
    assert sorted(rows.order.tolist()) == list(range(50))
    assert rows.order.tolist() != list(range(50))


def test_rows_batch_reads_order():
    rows = TrainRows(stream_of(33 * 50), seq_len=32)
    inputs, targets = rows.batch(4, 3)
    packed = torch.from_numpy(pack_rows(stream_of(33 * 50), 33))
    expected = packed[torch.from_numpy(rows.order[4:7])]
    assert torch.equal(inputs, expected[:, :-1])
    assert torch.equal(targets, expected[:, 1:])


def test_rows_batch_dtype():
    inputs, targets = TrainRows(stream_of(33 * 10), seq_len=32).batch(0, 2)
    assert inputs.dtype == torch.int64
    assert targets.dtype == torch.int64


def test_rows_consecutive_batches():
    """n steps of b rows read exactly rows [0, n b) of the fixed order, each once."""
    rows = TrainRows(stream_of(33 * 50), seq_len=32)
    steps, batch = 6, 4
    seen = torch.cat([rows.batch(step * batch, batch)[0][:, 0] for step in range(steps)])
    packed = pack_rows(stream_of(33 * 50), 33)
    assert seen.tolist() == packed[rows.order[: steps * batch], 0].tolist()


def test_rows_tokens():
    rows = TrainRows(stream_of(33 * 50 + 7), seq_len=32)
    assert len(rows) == 50
    assert rows.tokens == 50 * 32


def test_rows_exhausted_raises():
    rows = TrainRows(stream_of(33 * 10), seq_len=32)
    with pytest.raises(ValueError, match="corpus packs only 10 rows of 33 tokens"):
        rows.batch(8, 3)


def test_rows_last_batch_allowed():
    rows = TrainRows(stream_of(33 * 10), seq_len=32)
    assert rows.batch(7, 3)[0].shape == (3, 32)
