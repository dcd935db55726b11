"""File verification against a size in bytes and a sha256 digest, and quarantine of bad files."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
CORRUPT_SUFFIX = ".corrupt"


class VerificationError(Exception):
    """A file does not match its expected size or sha256."""

    def __init__(self, message: str, path: Path, expected, actual):
        super().__init__(message)
        self.path = Path(path)
        self.expected = expected
        self.actual = actual


class SizeMismatchError(VerificationError):
    pass


class ChecksumMismatchError(VerificationError):
    pass


def sha256_file(path: Path, chunk_bytes: int = CHUNK_BYTES) -> str:
    """Return the lowercase hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify_file(path: Path, size: int | None, sha256: str | None) -> str:
    """Check path against the expected size (bytes) and sha256; return the measured sha256.

    A None expectation is not checked. The size is compared first because it costs no read.
    Raises SizeMismatchError or ChecksumMismatchError with both values in the message.
    """
    path = Path(path)
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise SizeMismatchError(
            f"{path}: size is {actual_size} bytes, expected {size}", path, size, actual_size)
    actual = sha256_file(path)
    if sha256 is not None and actual != sha256:
        raise ChecksumMismatchError(
            f"{path}: sha256 is {actual}, expected {sha256}", path, sha256, actual)
    return actual


def set_aside(path: Path, target: Path | None = None) -> Path:
    """Rename a bad file to TARGET.corrupt (TARGET defaults to path) so that it is never used.

    An existing .corrupt file is kept: the new one gets .corrupt.1, .corrupt.2 and so on.
    Returns the new path.
    """
    path = Path(path)
    base = Path(target or path)
    candidate = base.with_name(base.name + CORRUPT_SUFFIX)
    counter = 0
    while candidate.exists() or candidate.is_symlink():
        counter += 1
        candidate = base.with_name(f"{base.name}{CORRUPT_SUFFIX}.{counter}")
    candidate.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, candidate)
    log.warning("moved %s, which failed verification, to %s", path, candidate)
    return candidate


def sha256sums_text(entries: dict[str, str]) -> str:
    """Format {relative name: sha256} in the layout `sha256sum --check` reads, sorted by name."""
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(entries.items()))


def parse_sha256sums(text: str, source: str = "SHA256SUMS") -> dict[str, str]:
    """Parse `sha256sum` output (text or binary mode marker) into {name: sha256}."""
    entries: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        digest, separator, name = line.partition(" ")
        name = name[1:] if name[:1] in (" ", "*") else name
        if not separator or len(digest) != 64 or not name:
            raise ValueError(f"{source} line {number}: {line!r} is not '<sha256>  <name>'")
        if name in entries:
            raise ValueError(f"{source} line {number}: {name!r} is listed twice")
        entries[name] = digest.lower()
    return entries
