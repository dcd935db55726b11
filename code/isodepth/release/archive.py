"""Safe extraction of tar archives from untrusted sources.

Every member is checked before anything is written: absolute paths, '..' components,
symbolic or hard links that resolve outside the target folder, and device, FIFO or other
special members are rejected with UnsafeArchiveError. Extraction then also runs with the
standard library's "data" filter (Python 3.11.4 and later), which repeats the link checks
against the files already on disk. An existing file with other content is never overwritten
unless the caller asks for it.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import tarfile
from pathlib import Path

log = logging.getLogger(__name__)


class UnsafeArchiveError(ValueError):
    """An archive member would write outside the target folder or is not a plain file, folder or link."""


def check_member(member: tarfile.TarInfo, archive: str = "archive") -> str:
    """Return the member's normalised relative path; raise UnsafeArchiveError if it is unsafe."""
    name = member.name
    where = f"{archive}: member {name!r}"
    relative = _safe_relative(name, where)

    if member.issym():
        # A symlink target is relative to the folder that contains the link.
        if member.linkname.startswith("/") or _has_drive(member.linkname):
            raise UnsafeArchiveError(f"{where}: symbolic link to the absolute path {member.linkname!r}")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(relative), member.linkname))
        if resolved == ".." or resolved.startswith("../"):
            raise UnsafeArchiveError(f"{where}: symbolic link to {member.linkname!r} points outside the target")
    elif member.islnk():
        # A hard link target is relative to the archive root.
        _safe_relative(member.linkname, f"{where}: hard link target")
    elif not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"{where}: special member (device, FIFO or unknown type) rejected")
    return relative


def safe_extract(archive: Path, target: Path, *, overwrite: bool = False, skip: set[str] | None = None,
                 ) -> list[Path]:
    """Extract archive into target after checking every member; return the files written.

    Members named in skip (normalised relative paths) are not extracted. A regular file whose
    destination already contains the same bytes is left alone. Different bytes raise
    FileExistsError unless overwrite is true.
    """
    archive = Path(archive)
    target = Path(target)
    skip = skip or set()
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        chosen = []
        for member in members:
            relative = check_member(member, str(archive))
            if relative in skip:
                continue
            if member.isfile() and _same_content(tar, member, target / relative):
                continue
            destination = target / relative
            if member.isfile() and destination.exists() and not overwrite:
                raise FileExistsError(
                    f"{destination} exists with content different from {archive}:{member.name}; "
                    "move it away or pass overwrite=True (--overwrite) to replace it"
                )
            chosen.append(member)

        if not hasattr(tarfile, "data_filter"):
            raise RuntimeError("safe extraction needs the tarfile 'data' filter of Python 3.11.4 or later; "
                               "upgrade Python")
        target.mkdir(parents=True, exist_ok=True)
        try:
            tar.extractall(target, members=chosen, filter="data")
        except tarfile.FilterError as error:
            raise UnsafeArchiveError(f"{archive}: {error}") from error
    written = [target / check_member(member) for member in chosen if member.isfile()]
    log.info("extracted %d files from %s into %s", len(written), archive, target)
    return written


def _safe_relative(name: str, where: str) -> str:
    if not name or name.startswith("/") or _has_drive(name) or "\\" in name:
        raise UnsafeArchiveError(f"{where}: absolute or non-POSIX path rejected")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"{where}: '..' component rejected")
    if not parts:
        raise UnsafeArchiveError(f"{where}: empty path rejected")
    return "/".join(parts)


def _has_drive(name: str) -> bool:
    return len(name) >= 2 and name[1] == ":" and name[0].isalpha()


def _same_content(tar: tarfile.TarFile, member: tarfile.TarInfo, destination: Path) -> bool:
    if not destination.is_file() or destination.is_symlink() or destination.stat().st_size != member.size:
        return False
    archived, existing = hashlib.sha256(), hashlib.sha256()
    handle = tar.extractfile(member)
    while chunk := handle.read(1 << 20):
        archived.update(chunk)
    with open(destination, "rb") as on_disk:
        while chunk := on_disk.read(1 << 20):
            existing.update(chunk)
    return archived.digest() == existing.digest()


def iter_file_members(archive: Path):
    """Yield (relative path, bytes) for every regular member after checking all members."""
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for member in members:
            check_member(member, str(archive))
        for member in members:
            if member.isfile():
                yield check_member(member), tar.extractfile(member).read()
