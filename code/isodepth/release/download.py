"""Verifying, resuming downloader for the artifacts listed in the manifest.

Every artifact goes through the same steps:
  1. An existing destination file is verified first. A good file means nothing is done. A bad
     one is renamed to *.corrupt and fetched again.
  2. The source is fetched into DEST.part. HTTPS sources resume an interrupted .part file with
     an HTTP Range request and retry dropped or truncated transfers. Hub sources go through
     huggingface_hub.hf_hub_download (repo type and revision from the manifest, its own cache
     and resume), then the cached file is copied to DEST.part. File sources are copied.
  3. DEST.part is checked against the manifest's size and sha256. Only a match is renamed to
     DEST. A mismatch is renamed to DEST.corrupt, never used, and raises DownloadError.

Offline use (HF_HUB_OFFLINE=1, as in tests and CI): with huggingface_hub 2.4.0,
hf_hub_download then makes no request and returns the file from the Hub cache layout
(CACHE/<type>s--<owner>--<name>/snapshots/<commit>/<path>, with refs/<branch> holding the
commit for branch revisions), or raises LocalEntryNotFoundError, which becomes a DownloadError
here. Pass hf_cache_dir (--hf-cache) to use a cache folder other than the default
(HF_HUB_CACHE, usually ~/.cache/huggingface/hub).

NOTE: no lock guards DEST.part, so two processes fetching the same artifact into the same
folder at once can interleave their writes. Verification then fails and moves the file aside,
and a rerun fetches it cleanly.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .. import paths
from .manifest import Artifact, Source, is_pinned_revision
from .verify import VerificationError, set_aside, verify_file

log = logging.getLogger(__name__)

PART_SUFFIX = ".part"
CHUNK_BYTES = 1 << 20
USER_AGENT = "isodepth-download/1"
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class DownloadError(RuntimeError):
    """An artifact could not be fetched or failed verification."""


class UnverifiedArtifactError(DownloadError):
    """The manifest pins no size or sha256 for the artifact and unverified downloads are off."""


class _TransferInterrupted(Exception):
    """A response ended early or the connection dropped; the transfer resumes from the .part file."""


@dataclass(frozen=True)
class FetchResult:
    artifact: Artifact
    path: Path
    action: str  # "present": verified existing file kept; "downloaded": fetched and verified now
    size: int  # bytes
    sha256: str


@dataclass(frozen=True)
class FetchOptions:
    allow_unverified: bool = False
    hf_cache_dir: Path | None = None  # None: huggingface_hub's default cache (HF_HUB_CACHE)
    hf_endpoint: str | None = None  # None: HF_ENDPOINT or https://huggingface.co
    retries: int = 5  # extra attempts after a dropped or truncated HTTP transfer
    backoff_s: float = 1.0  # first retry delay; doubles per retry, at most 30 s
    timeout_s: float = 60.0  # connect and read timeout per HTTP request
    progress: bool = True  # tqdm progress bars on stderr


def destination(artifact: Artifact, dest: Path) -> Path:
    return Path(dest) / artifact.file


def fetch_artifact(artifact: Artifact, dest: Path, options: FetchOptions | None = None,
                   session=None) -> FetchResult:
    """Make DEST/<artifact.file> present and verified; fetch it only when needed."""
    options = options or FetchOptions()
    if not artifact.verified and not options.allow_unverified:
        raise UnverifiedArtifactError(
            f"artifact {artifact.id!r} ({artifact.source.describe()}) has no pinned size and sha256 in the "
            "manifest, so its download cannot be verified; pass --allow-unverified to fetch it anyway and "
            "log the measured values to pin"
        )
    target = destination(artifact, dest)

    if target.exists():
        present = _check_existing(artifact, target)
        if present is not None:
            return present

    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + PART_SUFFIX)
    cached = None
    source = artifact.source
    if source.type == "url":
        _fetch_url(source.url, part, artifact.size, options, session, artifact.id)
    elif source.type == "hf":
        cached = _fetch_hf(source, options, artifact.id)
        _copy_to_part(cached, part)
    else:
        local = paths.ROOT / source.path
        if not local.is_file():
            raise DownloadError(
                f"artifact {artifact.id!r}: source file {local} not found; "
                "build it with `isodepth release` or restore it from git"
            )
        _copy_to_part(local, part)

    try:
        digest = verify_file(part, artifact.size, artifact.sha256)
    except VerificationError as error:
        corrupt = set_aside(part, target)
        if cached is not None:
            _evict_from_hf_cache(cached)
        raise DownloadError(
            f"artifact {artifact.id!r} from {source.describe()} failed verification: {error}. "
            f"The file was moved to {corrupt} and not used. Rerun to download it again; if the "
            "source changed on purpose, update size and sha256 in the manifest."
        ) from error

    os.replace(part, target)
    size = target.stat().st_size
    if not artifact.verified:
        log.warning("artifact %s is unverified: measured size %d bytes, sha256 %s; add both to the "
                    "manifest and set verified to true to pin it", artifact.id, size, digest)
    log.info("artifact %s: downloaded and verified %s (%d bytes)", artifact.id, target, size)
    return FetchResult(artifact, target, "downloaded", size, digest)


def fetch_artifacts(artifacts: list[Artifact], dest: Path, options: FetchOptions | None = None,
                    ) -> list[FetchResult]:
    """Fetch each artifact in turn; after trying all, raise DownloadError listing the ones that failed."""
    import requests

    options = options or FetchOptions()
    results, failures = [], []
    with requests.Session() as session:
        session.headers["User-Agent"] = USER_AGENT
        for artifact in artifacts:
            try:
                results.append(fetch_artifact(artifact, dest, options, session))
            except DownloadError as error:
                log.error("%s", error)
                failures.append(artifact.id)
    if failures:
        raise DownloadError(
            f"{len(failures)} of {len(artifacts)} artifacts failed: {', '.join(failures)}; "
            "see the errors logged above"
        )
    return results


def check_artifacts(artifacts: list[Artifact], dest: Path) -> dict[str, str]:
    """Verify downloaded files without fetching or moving anything.

    Returns {artifact id: "ok" | "missing" | "unpinned" | error message}. "unpinned" means
    the file exists but the manifest has no sha256 to check it against.
    """
    report = {}
    for artifact in artifacts:
        target = destination(artifact, dest)
        if not target.exists():
            report[artifact.id] = "missing"
            continue
        try:
            verify_file(target, artifact.size, artifact.sha256)
        except VerificationError as error:
            report[artifact.id] = str(error)
            continue
        report[artifact.id] = "ok" if artifact.sha256 else "unpinned"
    return report


def _check_existing(artifact: Artifact, target: Path) -> FetchResult | None:
    """Return a result for a good existing file; move a bad one aside and return None."""
    try:
        digest = verify_file(target, artifact.size, artifact.sha256)
    except VerificationError as error:
        corrupt = set_aside(target)
        log.warning("artifact %s: existing file failed verification (%s); moved it to %s and "
                    "downloading again", artifact.id, error, corrupt)
        return None
    if artifact.sha256 is None:
        log.warning("artifact %s: using existing %s unchecked, because the manifest pins no sha256",
                    artifact.id, target)
    else:
        log.info("artifact %s: %s is present and verified", artifact.id, target)
    return FetchResult(artifact, target, "present", target.stat().st_size, digest)


def _copy_to_part(source: Path, part: Path) -> None:
    tmp = part.with_name(part.name + ".copy")
    shutil.copyfile(source, tmp)
    os.replace(tmp, part)


# --- HTTPS -------------------------------------------------------------------------------


def _fetch_url(url: str, part: Path, expected_size: int | None, options: FetchOptions, session,
               artifact_id: str) -> None:
    """Download url into part, resuming from part's current length; retry dropped transfers."""
    import requests
    import urllib3

    owns_session = session is None
    if owns_session:
        session = requests.Session()
        session.headers["User-Agent"] = USER_AGENT
    failures = 0
    try:
        while True:
            try:
                _transfer(url, part, expected_size, options, session, artifact_id)
                return
            except (_TransferInterrupted, requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError, urllib3.exceptions.HTTPError) as error:
                failures += 1
                have = part.stat().st_size if part.exists() else 0
                if failures > options.retries:
                    raise DownloadError(
                        f"artifact {artifact_id!r}: download of {url} failed after {failures} attempts "
                        f"({error}); {have} bytes are kept in {part}, and rerunning resumes from there"
                    ) from error
                delay = min(options.backoff_s * 2 ** (failures - 1), 30.0)
                log.warning("artifact %s: transfer interrupted at byte %d (%s); retry %d of %d in %.1f s",
                            artifact_id, have, error, failures, options.retries, delay)
                time.sleep(delay)
    finally:
        if owns_session:
            session.close()


def _transfer(url: str, part: Path, expected_size: int | None, options: FetchOptions, session,
              artifact_id: str) -> None:
    """Send one HTTP request and append to part from its current length, or restart when that is impossible."""
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset > expected_size:
        log.warning("artifact %s: %s is longer than the expected %d bytes; restarting", artifact_id, part,
                    expected_size)
        part.unlink()
        offset = 0
    if expected_size is not None and offset == expected_size and offset > 0:
        return  # complete from an earlier run; verification follows

    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with session.get(url, headers=headers, stream=True, timeout=options.timeout_s) as response:
        status = response.status_code
        if status == 416 and offset:
            # The server has no bytes past offset, so part is complete or stale.
            total = _content_range_total(response.headers.get("Content-Range"))
            if total == offset:
                return
            log.warning("artifact %s: server rejected resuming at byte %d; restarting", artifact_id, offset)
            part.unlink()
            raise _TransferInterrupted(f"range not satisfiable at byte {offset}")
        if status in _RETRY_STATUS:
            raise _TransferInterrupted(f"HTTP {status} from {url}")
        if status >= 400:
            raise DownloadError(
                f"artifact {artifact_id!r}: HTTP {status} {response.reason} for {url}; "
                "check the source URL in the manifest"
            )

        mode = "wb"
        total = None
        if status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink(missing_ok=True)
                raise _TransferInterrupted(f"server sent bytes from {start} instead of {offset}; restarting")
            mode = "ab"
        elif offset:
            log.info("artifact %s: server ignored the Range request; downloading from the start", artifact_id)
            offset = 0
        if total is None:
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else expected_size

        _write_body(response, part, mode, offset, total, options, artifact_id)
    received = part.stat().st_size
    if total is not None and received < total:
        raise _TransferInterrupted(f"response ended after {received} of {total} bytes")


def _write_body(response, part: Path, mode: str, offset: int, total: int | None, options: FetchOptions,
                artifact_id: str) -> None:
    from tqdm import tqdm

    with open(part, mode) as handle, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                         unit_divisor=1024, desc=artifact_id, leave=False,
                                         disable=not options.progress) as bar:
        try:
            for chunk in _iter_body(response):
                handle.write(chunk)
                bar.update(len(chunk))
        finally:
            # Keep what arrived so that the retry resumes after it.
            handle.flush()
            os.fsync(handle.fileno())


def _iter_body(response):
    """Yield the body as it arrives.

    urllib3 2.x read1 returns each block as soon as it is received, so a dropped connection
    loses no byte that arrived. requests' iter_content fills a whole chunk first and drops
    the partial chunk when the connection breaks, so it is only the fallback for urllib3 1.x.
    """
    raw = response.raw
    if hasattr(raw, "read1"):
        while chunk := raw.read1(CHUNK_BYTES, decode_content=True):
            yield chunk
    else:
        yield from response.iter_content(chunk_size=CHUNK_BYTES)


def _parse_content_range(header: str | None) -> tuple[int | None, int | None]:
    match = _CONTENT_RANGE.match(header or "")
    if not match:
        return None, None
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), total


def _content_range_total(header: str | None) -> int | None:
    match = re.match(r"^bytes \*/(\d+)$", header or "")
    return int(match.group(1)) if match else None


# --- Hugging Face Hub ------------------------------------------------------------------


def _fetch_hf(source: Source, options: FetchOptions, artifact_id: str) -> Path:
    """Return the path of the file in the Hub cache, downloading it there first if needed."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    if not is_pinned_revision(source.revision):
        log.warning("artifact %s: revision %r is a branch or tag, which can move; pin a 40-hex commit "
                    "in the manifest", artifact_id, source.revision)
    cache = options.hf_cache_dir or constants.HF_HUB_CACHE
    try:
        path = hf_hub_download(repo_id=source.repo_id, filename=source.path, repo_type=source.repo_type,
                               revision=source.revision, cache_dir=options.hf_cache_dir,
                               endpoint=options.hf_endpoint)
    except LocalEntryNotFoundError as error:
        reason = "HF_HUB_OFFLINE is set" if constants.is_offline_mode() else "the Hub could not be reached"
        raise DownloadError(
            f"artifact {artifact_id!r}: {source.describe()} is not in the Hugging Face cache {cache} and "
            f"{reason}; unset HF_HUB_OFFLINE and check the network, or pass --hf-cache with a filled cache"
        ) from error
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as error:
        raise DownloadError(
            f"artifact {artifact_id!r}: {source.describe()} not found on the Hub ({type(error).__name__}); "
            "check repo_id, repo_type, revision and path in the manifest"
        ) from error
    except HfHubHTTPError as error:
        raise DownloadError(f"artifact {artifact_id!r}: Hub download of {source.describe()} failed: {error}") from error
    return Path(path)


def _evict_from_hf_cache(pointer: Path) -> None:
    """Delete a cached Hub file that failed verification, so the next run downloads it again."""
    blob = pointer.resolve()
    for path in {blob, pointer}:
        if path.exists() or path.is_symlink():
            path.unlink()
    log.warning("removed %s (blob %s) from the Hugging Face cache after a failed verification", pointer, blob)
