"""Checksummed, reproducible bundles of a grid's run records for upload to the Hub or Zenodo.

`build_run_bundle("micro")` packs every file of data/runs/micro/<run_id>/ into
data/release/micro/runs-micro.tar.gz with the layout

    SHA256SUMS                   sha256 of every record file, in `sha256sum --check` format
    micro/<run_id>/record.json   (and any other file the run folder holds)

and writes data/release/micro/SHA256SUMS for the tarball itself. The archive is byte-for-byte
reproducible: sorted members, mtime 0, owner root, fixed modes, and a gzip header without name
or time. Rebuilding from unchanged records therefore gives the same sha256, and the manifest
entry does not change.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path

from .. import paths
from ..io import atomic_write_bytes, atomic_write_text
from .archive import iter_file_members, safe_extract
from .manifest import Artifact, Source
from .verify import parse_sha256sums, sha256_bytes, sha256sums_text

log = logging.getLogger(__name__)

RELEASE_NAME = "release"  # bundles go to data/release/<grid>/
SUMS_NAME = "SHA256SUMS"


class BundleError(ValueError):
    """Run records that cannot be bundled, or a bundle whose contents fail their checksums."""


@dataclass(frozen=True)
class Bundle:
    grid: str
    path: Path  # the .tar.gz
    sums_path: Path  # SHA256SUMS beside it
    size: int  # bytes
    sha256: str
    run_ids: list[str]
    statuses: dict[str, int]  # run status -> number of runs

    def manifest_entry(self, source: Source | None = None) -> Artifact:
        """Manifest entry for this bundle; the default source is the committed file in the repository."""
        if source is None:
            resolved = self.path.resolve()
            if not resolved.is_relative_to(paths.ROOT):
                raise BundleError(f"{self.path} is outside the repository {paths.ROOT}, so a file source cannot "
                                  "name it; pass the Hub or URL source it will be uploaded to")
            source = Source(type="file", path=resolved.relative_to(paths.ROOT).as_posix())
        counts = ", ".join(f"{count} {status}" for status, count in sorted(self.statuses.items()))
        return Artifact(
            id=f"runs-{self.grid}", kind="run-records", file=f"run-records/{self.path.name}",
            source=source, size=self.size, sha256=self.sha256, verified=True, grid=self.grid,
            note=(f"{len(self.run_ids)} run records of grid {self.grid} ({counts}); the SHA256SUMS "
                  "member lists the sha256 of every record"),
        )


def bundle_name(grid: str) -> str:
    return f"runs-{grid}.tar.gz"


def collect_run_files(grid: str, runs_dir: Path | None = None) -> dict[str, bytes]:
    """Read every file of every run folder of a grid: {"<grid>/<run_id>/<file>": bytes}.

    Each folder must contain a record.json whose run_id and grid match the folder names.
    Hidden files and *.tmp leftovers of interrupted writes are skipped. Links and nested
    folders raise BundleError, because a bundle should contain only what the collector reads.
    """
    grid_dir = Path(runs_dir or paths.RUNS) / grid
    if not grid_dir.is_dir():
        raise BundleError(f"no run records for grid {grid!r}: {grid_dir} not found; train the grid first "
                          f"(`isodepth sweep {grid}`)")
    files: dict[str, bytes] = {}
    for run_dir in sorted(p for p in grid_dir.iterdir() if not p.name.startswith(".")):
        if run_dir.is_symlink() or not run_dir.is_dir():
            raise BundleError(f"{run_dir} is not a run folder; only <run_id>/ folders belong in {grid_dir}")
        record_path = run_dir / "record.json"
        if not record_path.is_file():
            raise BundleError(f"{run_dir} has no record.json; finish or remove that run before releasing")
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record.get("run_id") != run_dir.name or record.get("grid") != grid:
            raise BundleError(
                f"{record_path}: run_id {record.get('run_id')!r} and grid {record.get('grid')!r} do not "
                f"match the folder {grid}/{run_dir.name}"
            )
        for path in sorted(run_dir.iterdir()):
            if path.name.startswith(".") or path.name.endswith(".tmp"):
                continue
            if path.is_symlink() or not path.is_file():
                raise BundleError(f"{path} is a link or folder; run folders may contain only regular files")
            files[f"{grid}/{run_dir.name}/{path.name}"] = path.read_bytes()
    if not files:
        raise BundleError(f"{grid_dir} contains no run folders")
    return files


def pack_files(files: dict[str, bytes]) -> bytes:
    """Return a reproducible .tar.gz of {archive path: bytes} plus a SHA256SUMS member listing them."""
    members = dict(files)
    if SUMS_NAME in members:
        raise BundleError(f"{SUMS_NAME} is reserved for the checksum list")
    members[SUMS_NAME] = sha256sums_text({name: sha256_bytes(data) for name, data in files.items()}).encode()

    raw = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as compressed:
        with tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(members, key=lambda n: (n != SUMS_NAME, n)):
                data = members[name]
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mtime = 0
                info.mode = 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def build_run_bundle(grid: str, *, runs_dir: Path | None = None, out_dir: Path | None = None,
                     expected_run_ids: list[str] | None = None, require_complete: bool = False) -> Bundle:
    """Write data/release/<grid>/runs-<grid>.tar.gz (or out_dir/...) and its SHA256SUMS; return the bundle's facts.

    expected_run_ids (the grid's planned runs) makes missing runs visible: they are logged,
    or raise BundleError when require_complete is true.
    """
    files = collect_run_files(grid, runs_dir)
    run_ids = sorted({name.split("/")[1] for name in files})
    if expected_run_ids is not None:
        missing = sorted(set(expected_run_ids) - set(run_ids))
        extra = sorted(set(run_ids) - set(expected_run_ids))
        if extra:
            log.warning("grid %s: %d run records are not in the grid plan: %s", grid, len(extra), ", ".join(extra))
        if missing:
            message = (f"grid {grid}: {len(missing)} of {len(expected_run_ids)} planned runs have no record: "
                       f"{', '.join(missing)}")
            if require_complete:
                raise BundleError(message + "; train them or drop --require-complete")
            log.warning("%s", message)

    statuses: dict[str, int] = {}
    for run_id in run_ids:
        status = json.loads(files[f"{grid}/{run_id}/record.json"]).get("status", "unknown")
        statuses[status] = statuses.get(status, 0) + 1

    data = pack_files(files)
    out = Path(out_dir or paths.DATA / RELEASE_NAME / grid)
    path = out / bundle_name(grid)
    digest = sha256_bytes(data)
    if path.exists() and path.read_bytes() == data:
        log.info("grid %s: %s is up to date", grid, path)
    else:
        atomic_write_bytes(path, data)
        log.info("grid %s: wrote %s (%d runs, %d bytes, sha256 %s)", grid, path, len(run_ids), len(data), digest)
    sums_path = out / SUMS_NAME
    sums = sha256sums_text({path.name: digest})
    if not sums_path.exists() or sums_path.read_text() != sums:
        atomic_write_text(sums_path, sums)
    return Bundle(grid=grid, path=path, sums_path=sums_path, size=len(data), sha256=digest,
                  run_ids=run_ids, statuses=statuses)


def verify_bundle(archive: Path) -> dict[str, str]:
    """Check every member against the bundle's SHA256SUMS; return {member: sha256}.

    Raises BundleError for a missing SHA256SUMS, a listed file that is absent, an unlisted
    file, or a checksum mismatch. Unsafe members raise UnsafeArchiveError first.
    """
    contents = dict(iter_file_members(archive))
    if SUMS_NAME not in contents:
        raise BundleError(f"{archive} has no {SUMS_NAME} member, so its records cannot be checked")
    listed = parse_sha256sums(contents.pop(SUMS_NAME).decode("utf-8"), f"{archive}:{SUMS_NAME}")
    missing = sorted(set(listed) - set(contents))
    unlisted = sorted(set(contents) - set(listed))
    if missing or unlisted:
        raise BundleError(f"{archive}: {SUMS_NAME} does not match the members; listed but missing: {missing}, "
                          f"present but unlisted: {unlisted}")
    actual = {name: sha256_bytes(data) for name, data in contents.items()}
    bad = sorted(name for name in listed if listed[name] != actual[name])
    if bad:
        raise BundleError(f"{archive}: sha256 mismatch for {', '.join(bad)}; the bundle is corrupt")
    return actual


def extract_bundle(archive: Path, target: Path | None = None, *, overwrite: bool = False) -> list[Path]:
    """Verify a run-record bundle and extract its records under target (default data/runs).

    SHA256SUMS itself is not written. Files that already contain the same bytes are kept.
    """
    verify_bundle(archive)
    return safe_extract(archive, Path(target or paths.RUNS), overwrite=overwrite, skip={SUMS_NAME})
