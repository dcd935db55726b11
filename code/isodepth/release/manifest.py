"""Download manifest: every released artifact with its source, size in bytes and sha256.

The manifest is a JSON file (data/manifest.json by default) with this layout:

    {
      "schema_version": 1,
      "artifacts": [
        {
          "id": "runs-micro",                      unique name, [A-Za-z0-9._-]
          "kind": "run-records",                   one of KINDS
          "file": "runs-micro/runs-micro.tar.gz",  path below the download folder
          "source": {"type": "file", "path": "data/release/micro/runs-micro.tar.gz"},
          "size": 123456,                          bytes, or null when unknown
          "sha256": "…64 hex digits…",             or null when unknown
          "verified": true,                        false: size and hash not pinned yet
          "grid": "micro", "run_id": null, "note": "…"      optional
        }
      ],
      "locations": [{"name": "…", "url": "…", "note": "…"}]    optional, informational
    }

Source types:
  hf    {"type": "hf", "repo_id": "owner/name", "repo_type": "model|dataset|space",
         "revision": "<branch, tag or 40-hex commit>", "path": "file path in the repo"}
  url   {"type": "url", "url": "https://…"} (plain http only for loopback hosts)
  file  {"type": "file", "path": "path relative to the repository root"}

An entry with verified: true must carry both size and sha256. Unverified entries describe
upstream files whose size and hash have not been measured yet. The downloader rejects them
unless the caller allows unverified downloads, and it then logs the measured values so that
they can be pinned here. Locations list upstream pages that hold no single file (a
collection, a DOI landing page) and are never downloaded.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from .. import paths
from ..io import atomic_write_text

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"  # in the data folder

KINDS = ("run-records", "checkpoint", "data-shard", "eval-results")
SOURCE_TYPES = ("hf", "url", "file")
HF_REPO_TYPES = ("model", "dataset", "space")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
_COMMIT_PATTERN = re.compile(r"^[0-9a-f]{40}$")
_REPO_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")

_ARTIFACT_FIELDS = {"id", "kind", "file", "source", "size", "sha256", "verified", "grid", "run_id", "note"}
_SOURCE_FIELDS = {
    "hf": {"type", "repo_id", "repo_type", "revision", "path"},
    "url": {"type", "url"},
    "file": {"type", "path"},
}
_LOCATION_FIELDS = {"name", "url", "note"}
_TOP_FIELDS = {"schema_version", "about", "artifacts", "locations"}


class ManifestError(ValueError):
    """Invalid manifest content; the message names the file, the entry and the field."""


@dataclass(frozen=True)
class Source:
    """Origin of an artifact. Which fields are set depends on type."""

    type: str
    repo_id: str | None = None
    repo_type: str | None = None
    revision: str | None = None
    path: str | None = None
    url: str | None = None

    def to_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if key in _SOURCE_FIELDS[self.type]}

    def describe(self) -> str:
        if self.type == "hf":
            return f"hf://{self.repo_type}s/{self.repo_id}@{self.revision}/{self.path}"
        if self.type == "url":
            return str(self.url)
        return f"file:{self.path}"


@dataclass(frozen=True)
class Artifact:
    """One downloadable file."""

    id: str
    kind: str
    file: str  # destination path below the download folder, POSIX separators
    source: Source
    size: int | None  # bytes
    sha256: str | None  # lowercase hex digest
    verified: bool
    grid: str | None = None
    run_id: str | None = None
    note: str | None = None

    def to_dict(self) -> dict:
        entry = {
            "id": self.id,
            "kind": self.kind,
            "file": self.file,
            "source": self.source.to_dict(),
            "size": self.size,
            "sha256": self.sha256,
            "verified": self.verified,
        }
        for key in ("grid", "run_id", "note"):
            value = getattr(self, key)
            if value is not None:
                entry[key] = value
        return entry


@dataclass(frozen=True)
class Location:
    """An upstream page that lists artifacts but is not itself a downloadable file."""

    name: str
    url: str
    note: str | None = None


@dataclass
class Manifest:
    artifacts: list[Artifact]
    locations: list[Location] = field(default_factory=list)
    about: str | None = None
    path: Path | None = None  # file it was loaded from, for messages

    def by_id(self) -> dict[str, Artifact]:
        return {artifact.id: artifact for artifact in self.artifacts}

    def select(self, kinds=None, run_ids=None, ids=None, grids=None) -> list[Artifact]:
        """Return the artifacts matching every given filter (None or empty = no filter on that field).

        Raises ManifestError when a requested id, kind, run id or grid matches nothing, so a
        typo on the command line is reported instead of silently downloading nothing.
        """
        chosen = list(self.artifacts)
        for label, requested, attribute in (("kind", kinds, "kind"), ("run id", run_ids, "run_id"),
                                         ("id", ids, "id"), ("grid", grids, "grid")):
            if not requested:
                continue
            available = sorted({str(getattr(a, attribute)) for a in self.artifacts
                                if getattr(a, attribute) is not None})
            unknown = sorted(set(requested) - set(available))
            if unknown:
                raise ManifestError(
                    f"{self._name()}: no artifact has {label} {', '.join(map(repr, unknown))}; "
                    f"available values: {', '.join(available) or 'none'}"
                )
            chosen = [a for a in chosen if getattr(a, attribute) in set(requested)]
        return chosen

    def upsert(self, artifacts: list[Artifact]) -> None:
        """Replace entries with the same id and append new ones, keeping the order of the rest."""
        incoming = {artifact.id: artifact for artifact in artifacts}
        merged = [incoming.pop(a.id, a) for a in self.artifacts]
        merged.extend(a for a in artifacts if a.id in incoming)
        self.artifacts = merged
        _check_unique_ids(self.artifacts, self._name())
        _check_unique_files(self.artifacts, self._name())

    def to_dict(self) -> dict:
        document = {"schema_version": SCHEMA_VERSION}
        if self.about:
            document["about"] = self.about
        document["artifacts"] = [artifact.to_dict() for artifact in self.artifacts]
        if self.locations:
            document["locations"] = [
                {key: value for key, value in asdict(location).items() if value is not None}
                for location in self.locations
            ]
        return document

    def _name(self) -> str:
        return str(self.path) if self.path else "manifest"


def load_manifest(path: Path | None = None) -> Manifest:
    """Read and schema-check a manifest; raise ManifestError naming the entry and field at fault."""
    path = Path(path or default_manifest_path())
    if not path.exists():
        raise FileNotFoundError(f"manifest {path} not found; pass --manifest PATH or restore data/manifest.json")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ManifestError(f"{path}: invalid JSON ({error}); fix the syntax at that position") from error
    return parse_manifest(document, name=str(path), path=path)


def save_manifest(manifest: Manifest, path: Path | None = None) -> Path:
    """Write the manifest atomically (temporary file + rename)."""
    path = Path(path or manifest.path or default_manifest_path())
    parse_manifest(manifest.to_dict(), name=str(path))  # never write something load_manifest rejects
    atomic_write_text(path, json.dumps(manifest.to_dict(), indent=1) + "\n")
    return path


def default_manifest_path() -> Path:
    return paths.DATA / MANIFEST_NAME


def parse_manifest(document, name: str = "manifest", path: Path | None = None) -> Manifest:
    if not isinstance(document, dict):
        raise ManifestError(f"{name}: the top level must be a JSON object, not {type(document).__name__}")
    _reject_unknown(document, _TOP_FIELDS, name)
    version = document.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ManifestError(
            f"{name}: schema_version is {version!r}, expected {SCHEMA_VERSION}; "
            "this isodepth version reads only that layout"
        )
    entries = document.get("artifacts")
    if not isinstance(entries, list):
        raise ManifestError(f"{name}: 'artifacts' must be a list of objects")
    artifacts = [_parse_artifact(entry, f"{name}: artifacts[{index}]") for index, entry in enumerate(entries)]
    _check_unique_ids(artifacts, name)
    _check_unique_files(artifacts, name)

    locations = []
    for index, entry in enumerate(document.get("locations") or []):
        where = f"{name}: locations[{index}]"
        if not isinstance(entry, dict):
            raise ManifestError(f"{where}: must be an object with name, url and note")
        _reject_unknown(entry, _LOCATION_FIELDS, where)
        locations.append(Location(name=_string(entry, "name", where), url=_string(entry, "url", where),
                                  note=_optional_string(entry, "note", where)))
    about = _optional_string(document, "about", name)
    return Manifest(artifacts=artifacts, locations=locations, about=about, path=path)


def _parse_artifact(entry, where: str) -> Artifact:
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: must be an object, not {type(entry).__name__}")
    artifact_id = _string(entry, "id", where)
    where = f"{where} (id {artifact_id!r})"
    _reject_unknown(entry, _ARTIFACT_FIELDS, where)
    if not _ID_PATTERN.match(artifact_id):
        raise ManifestError(f"{where}: id must match {_ID_PATTERN.pattern}")

    kind = _string(entry, "kind", where)
    if kind not in KINDS:
        raise ManifestError(f"{where}: kind {kind!r} is not one of {', '.join(KINDS)}")
    file = _string(entry, "file", where)
    check_relative_path(file, f"{where}: field 'file'")

    size = entry.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise ManifestError(f"{where}: size must be a non-negative integer number of bytes or null, not {size!r}")
    sha256 = entry.get("sha256")
    if sha256 is not None and (not isinstance(sha256, str) or not _SHA256_PATTERN.match(sha256)):
        raise ManifestError(f"{where}: sha256 must be 64 lowercase hex digits or null, not {sha256!r}")
    verified = entry.get("verified")
    if not isinstance(verified, bool):
        raise ManifestError(f"{where}: 'verified' must be true or false, not {verified!r}")
    if verified and (size is None or sha256 is None):
        raise ManifestError(
            f"{where}: verified entries need both size and sha256; "
            "set verified to false until both are measured"
        )

    return Artifact(
        id=artifact_id, kind=kind, file=file, source=_parse_source(entry.get("source"), where),
        size=size, sha256=sha256, verified=verified,
        grid=_optional_string(entry, "grid", where), run_id=_optional_string(entry, "run_id", where),
        note=_optional_string(entry, "note", where),
    )


def _parse_source(source, where: str) -> Source:
    where = f"{where}: source"
    if not isinstance(source, dict):
        raise ManifestError(f"{where}: must be an object with a 'type' of {', '.join(SOURCE_TYPES)}")
    kind = source.get("type")
    if kind not in SOURCE_TYPES:
        raise ManifestError(f"{where}: type {kind!r} is not one of {', '.join(SOURCE_TYPES)}")
    _reject_unknown(source, _SOURCE_FIELDS[kind], where)

    if kind == "hf":
        repo_id = _string(source, "repo_id", where)
        if not _REPO_ID_PATTERN.match(repo_id):
            raise ManifestError(f"{where}: repo_id {repo_id!r} is not of the form owner/name")
        repo_type = _string(source, "repo_type", where)
        if repo_type not in HF_REPO_TYPES:
            raise ManifestError(f"{where}: repo_type {repo_type!r} is not one of {', '.join(HF_REPO_TYPES)}")
        revision = _string(source, "revision", where)
        file_path = _string(source, "path", where)
        check_relative_path(file_path, f"{where}: field 'path'")
        return Source(type="hf", repo_id=repo_id, repo_type=repo_type, revision=revision, path=file_path)

    if kind == "url":
        url = _string(source, "url", where)
        check_url(url, where)
        return Source(type="url", url=url)

    file_path = _string(source, "path", where)
    check_relative_path(file_path, f"{where}: field 'path'")
    return Source(type="file", path=file_path)


def check_relative_path(value: str, where: str) -> None:
    """Raise ManifestError unless value is a relative POSIX path without '..' components."""
    pure = PurePosixPath(value)
    if not value or "\\" in value or pure.is_absolute() or ".." in pure.parts or value.startswith("~"):
        raise ManifestError(
            f"{where}: {value!r} must be a relative path with '/' separators and no '..' components"
        )


def check_url(url: str, where: str) -> None:
    """Raise ManifestError unless url is https, or http to a loopback host (local mirrors and tests)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS:
        return
    raise ManifestError(f"{where}: url {url!r} must use https (plain http is accepted only for 127.0.0.1)")


def is_pinned_revision(revision: str) -> bool:
    """True for a 40-hex commit hash; branches and tags can move after the hashes were measured."""
    return bool(_COMMIT_PATTERN.match(revision))


def _check_unique_ids(artifacts: list[Artifact], name: str) -> None:
    seen: set[str] = set()
    for artifact in artifacts:
        if artifact.id in seen:
            raise ManifestError(f"{name}: artifact id {artifact.id!r} appears more than once; ids must be unique")
        seen.add(artifact.id)


def _check_unique_files(artifacts: list[Artifact], name: str) -> None:
    owners: dict[str, str] = {}
    for artifact in artifacts:
        if artifact.file in owners:
            raise ManifestError(
                f"{name}: artifacts {owners[artifact.file]!r} and {artifact.id!r} both write {artifact.file!r}; "
                "give each artifact its own destination file"
            )
        owners[artifact.file] = artifact.id


def _reject_unknown(entry: dict, known: set[str], where: str) -> None:
    unknown = sorted(set(entry) - known)
    if unknown:
        raise ManifestError(f"{where}: unknown fields {unknown}; allowed fields are {sorted(known)}")


def _string(entry: dict, key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{where}: field {key!r} must be a non-empty string, not {value!r}")
    return value


def _optional_string(entry: dict, key: str, where: str) -> str | None:
    value = entry.get(key)
    if value is not None and not isinstance(value, str):
        raise ManifestError(f"{where}: field {key!r} must be a string or absent, not {value!r}")
    return value
