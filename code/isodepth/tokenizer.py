"""Byte-level BPE trained with HF `tokenizers` on the training split of the embedded corpus."""

from __future__ import annotations

import logging
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from . import paths

log = logging.getLogger(__name__)

BOS = "<|bos|>"
TOKENIZER_FILE = paths.CORPUS / "tokenizer.json"


def train_tokenizer(texts, vocab_size: int, out: Path = TOKENIZER_FILE) -> Tokenizer:
    """Train a byte-level BPE with vocab_size entries, the BOS token included, and save it."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tokenizer.save(str(tmp))
    tmp.replace(out)
    log.info("trained a %d-token byte-level BPE, saved to %s", tokenizer.get_vocab_size(), out)
    return tokenizer


def load_tokenizer(path: Path = TOKENIZER_FILE) -> Tokenizer:
    if not Path(path).exists():
        raise FileNotFoundError(
            f"tokenizer {path} not found; restore it from git or run `isodepth corpus tokenizer`"
        )
    return Tokenizer.from_file(str(path))


def bos_id(tokenizer: Tokenizer) -> int:
    token_id = tokenizer.token_to_id(BOS)
    if token_id is None:
        raise ValueError(f"tokenizer has no {BOS} token; retrain it with `isodepth corpus tokenizer`")
    return token_id
