"""Manifest schema checks, selection and updates, and the committed data/manifest.json."""

from __future__ import annotations

import copy
import json

import pytest

from isodepth.release.manifest import (Artifact, ManifestError, Source, default_manifest_path, load_manifest,
                                       parse_manifest, save_manifest)

GOOD = {
    "schema_version": 1,
    "artifacts": [
        {"id": "runs-micro", "kind": "run-records", "file": "run-records/runs-micro.tar.gz",
         "source": {"type": "file", "path": "data/release/micro/runs-micro.tar.gz"},
         "size": 10, "sha256": "a" * 64, "verified": True, "grid": "micro"},
        {"id": "ckpt-r4", "kind": "checkpoint", "file": "checkpoints/r4/model.safetensors", "run_id": "C1-r4-s10",
         "source": {"type": "hf", "repo_id": "owner/models", "repo_type": "model", "revision": "b" * 40,
                    "path": "r4/model.safetensors"},
         "size": 20, "sha256": "c" * 64, "verified": True},
        {"id": "zenodo-evals", "kind": "eval-results", "file": "evals.json",
         "source": {"type": "url", "url": "https://zenodo.org/records/1/files/evals.json"},
         "size": None, "sha256": None, "verified": False},
    ],
}


def broken(path: tuple, value) -> dict:
    """GOOD with the field at path (keys and indices) replaced, or deleted when value is ...."""
    document = copy.deepcopy(GOOD)
    node = document
    for key in path[:-1]:
        node = node[key]
    if value is ...:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return document


def test_good_manifest_parses():
    manifest = parse_manifest(GOOD)
    assert [a.id for a in manifest.artifacts] == ["runs-micro", "ckpt-r4", "zenodo-evals"]
    assert manifest.artifacts[1].source.revision == "b" * 40
    assert not manifest.artifacts[2].verified


INVALID = {
    "wrong schema version": (("schema_version",), 2, "schema_version is 2"),
    "unknown top field": (("extra",), 1, "unknown fields \\['extra'\\]"),
    "unknown kind": (("artifacts", 0, "kind"), "weights", "kind 'weights' is not one of"),
    "typo field": (("artifacts", 0, "sha265"), "a" * 64, "unknown fields \\['sha265'\\]"),
    "verified without hash": (("artifacts", 0, "sha256"), None, "verified entries need both size and sha256"),
    "short hash": (("artifacts", 0, "sha256"), "abc", "64 lowercase hex digits"),
    "upper-case hash": (("artifacts", 0, "sha256"), "A" * 64, "64 lowercase hex digits"),
    "negative size": (("artifacts", 0, "size"), -1, "non-negative integer"),
    "boolean size": (("artifacts", 0, "size"), True, "non-negative integer"),
    "absolute file": (("artifacts", 0, "file"), "/etc/passwd", "relative path"),
    "parent in file": (("artifacts", 0, "file"), "../outside.bin", "relative path"),
    "parent in source path": (("artifacts", 0, "source", "path"), "../secret", "relative path"),
    "plain http": (("artifacts", 2, "source", "url"), "http://example.org/a.json", "must use https"),
    "repo id": (("artifacts", 1, "source", "repo_id"), "no-owner", "owner/name"),
    "repo type": (("artifacts", 1, "source", "repo_type"), "models", "repo_type 'models'"),
    "missing revision": (("artifacts", 1, "source", "revision"), ..., "'revision' must be a non-empty string"),
    "source type": (("artifacts", 1, "source", "type"), "s3", "type 's3' is not one of"),
    "verified flag": (("artifacts", 2, "verified"), "no", "'verified' must be true or false"),
    "bad id": (("artifacts", 0, "id"), "has space", "id must match"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_manifest_rejected(case):
    path, value, message = INVALID[case]
    with pytest.raises(ManifestError, match=message):
        parse_manifest(broken(path, value), name="m.json")


def test_error_names_entry_and_file():
    with pytest.raises(ManifestError, match=r"m.json: artifacts\[1\] \(id 'ckpt-r4'\): source"):
        parse_manifest(broken(("artifacts", 1, "source", "repo_type"), "zip"), name="m.json")


def test_duplicates_rejected():
    document = copy.deepcopy(GOOD)
    document["artifacts"].append(copy.deepcopy(document["artifacts"][0]))
    with pytest.raises(ManifestError, match="appears more than once"):
        parse_manifest(document)
    document["artifacts"][-1]["id"] = "other"
    with pytest.raises(ManifestError, match="both write"):
        parse_manifest(document)


def test_loopback_http_allowed():
    document = broken(("artifacts", 2, "source", "url"), "http://127.0.0.1:8000/evals.json")
    assert parse_manifest(document).artifacts[2].source.url.startswith("http://127.0.0.1")


def test_select_filters_and_unknown_values():
    manifest = parse_manifest(GOOD)
    assert [a.id for a in manifest.select(kinds=["checkpoint"])] == ["ckpt-r4"]
    assert [a.id for a in manifest.select(run_ids=["C1-r4-s10"])] == ["ckpt-r4"]
    assert [a.id for a in manifest.select(grids=["micro"])] == ["runs-micro"]
    assert len(manifest.select()) == 3
    with pytest.raises(ManifestError, match="no artifact has run id 'C1-r8-s10'; available values: C1-r4-s10"):
        manifest.select(run_ids=["C1-r8-s10"])


def test_upsert_replaces_and_appends(tmp_path):
    manifest = parse_manifest(GOOD)
    replacement = Artifact(id="runs-micro", kind="run-records", file="run-records/runs-micro.tar.gz",
                           source=Source(type="file", path="data/release/micro/runs-micro.tar.gz"),
                           size=11, sha256="d" * 64, verified=True, grid="micro")
    new = Artifact(id="runs-tiny", kind="run-records", file="run-records/runs-tiny.tar.gz",
                   source=Source(type="file", path="data/release/tiny/runs-tiny.tar.gz"),
                   size=5, sha256="e" * 64, verified=True, grid="tiny")
    manifest.upsert([new, replacement])
    assert [a.id for a in manifest.artifacts] == ["runs-micro", "ckpt-r4", "zenodo-evals", "runs-tiny"]
    assert manifest.artifacts[0].size == 11

    path = save_manifest(manifest, tmp_path / "manifest.json")
    reloaded = load_manifest(path)
    assert reloaded.artifacts == manifest.artifacts
    assert json.loads(path.read_text())["artifacts"][2]["sha256"] is None


def test_invalid_json_reported(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text('{"schema_version": 1,')
    with pytest.raises(ManifestError, match="invalid JSON"):
        load_manifest(path)


def test_committed_manifest_valid():
    manifest = load_manifest(default_manifest_path())
    for artifact in manifest.artifacts:
        if artifact.verified:
            assert artifact.sha256 is not None, artifact.id
            assert artifact.size is not None, artifact.id
    upstream = [a for a in manifest.artifacts if a.source.type == "hf" and a.source.repo_id.startswith("KristianS7/")]
    assert upstream, "the authors' pre-packed data set is listed"
    assert not any(a.verified for a in upstream), "nobody measured the authors' files, so none may claim a hash"
