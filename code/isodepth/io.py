"""Atomic file writes: a temporary file in the target folder, fsync, then rename."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def ensure_writable_dir(path: Path, option: str) -> Path:
    """Create folder `path` if it is missing and check that files can be written there.

    Called before long work (a training run, a fit) so that a bad output path fails in a
    second instead of after hours. `option` is the flag named in the error, e.g. "--runs-dir".
    """
    path = Path(path)
    check_output_dir(path, option)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"{option} {path} cannot be created as a folder ({error.strerror}); "
                         "pass a folder path that can be written") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path} is not writable; pass a folder path that can be written")
    return path


def check_output_dir(path: Path | None, option: str) -> None:
    """Check, without creating anything, that `path` is None, a folder, or missing below folders."""
    if path is None:
        return
    path = Path(path)
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                raise ValueError(f"{option} {path} cannot be a folder: {part} is a file; pass a folder path")
            return
