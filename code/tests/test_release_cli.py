"""The release, download and convert subcommands end to end on temporary folders."""

from __future__ import annotations

import argparse
import json

import pytest

from isodepth import paths
from isodepth.release.cli import add_command
from isodepth.release.manifest import load_manifest


def run_cli(*argv) -> int:
    parser = argparse.ArgumentParser(prog="isodepth")
    add_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A repository root in tmp_path with two run records of grid 'g' and an empty manifest."""
    monkeypatch.setattr(paths, "ROOT", tmp_path)
    monkeypatch.setattr(paths, "DATA", tmp_path / "data")
    monkeypatch.setattr(paths, "RUNS", tmp_path / "data" / "runs")
    monkeypatch.setattr(paths, "GRIDS", tmp_path / "data" / "grids")
    for run_id in ("C1-r1-s2", "C1-r2-s2"):
        folder = tmp_path / "data" / "runs" / "g" / run_id
        folder.mkdir(parents=True)
        (folder / "record.json").write_text(json.dumps({"grid": "g", "run_id": run_id, "status": "completed"}))
    manifest = tmp_path / "data" / "manifest.json"
    manifest.write_text(json.dumps({"schema_version": 1, "artifacts": []}))
    return tmp_path


def test_release_then_download(repo, capsys):
    manifest = repo / "data" / "manifest.json"
    release_dir = repo / "data" / "release" / "g"
    assert run_cli("release", "g", "--out", release_dir, "--manifest", manifest) == 0
    entry = load_manifest(manifest).by_id()["runs-g"]
    assert entry.verified
    assert entry.source.path == "data/release/g/runs-g.tar.gz"
    assert entry.size == (release_dir / "runs-g.tar.gz").stat().st_size

    assert run_cli("release", "g", "--out", release_dir, "--manifest", manifest) == 0
    assert load_manifest(manifest).by_id()["runs-g"] == entry, "an unchanged grid gives the same entry"

    dest = repo / "downloads"
    restored = repo / "restored"
    capsys.readouterr()
    assert run_cli("download", "--grid", "g", "--dest", dest, "--manifest", manifest, "--no-progress",
                   "--extract", restored) == 0
    assert "runs-g\tdownloaded" in capsys.readouterr().out
    assert (restored / "g" / "C1-r2-s2" / "record.json").exists()

    assert run_cli("download", "--dest", dest, "--manifest", manifest, "--no-progress") == 0
    assert "runs-g\tpresent" in capsys.readouterr().out

    assert run_cli("download", "--check", "--dest", dest, "--manifest", manifest) == 0
    record = restored / "g" / "C1-r2-s2" / "record.json"
    record.write_text("{}")
    assert run_cli("download", "--dest", dest, "--manifest", manifest, "--extract", restored) == 1, \
        "a locally changed record is not overwritten without --overwrite"
    assert record.read_text() == "{}"
    assert run_cli("download", "--dest", dest, "--manifest", manifest, "--extract", restored, "--overwrite") == 0
    assert json.loads(record.read_text())["run_id"] == "C1-r2-s2"

    (dest / entry.file).write_bytes(b"tampered")
    assert run_cli("download", "--check", "--dest", dest, "--manifest", manifest) == 1


def test_download_unknown_run_id(repo):
    from isodepth.release.manifest import ManifestError

    with pytest.raises(ManifestError, match="no artifact has run id 'nope'"):
        run_cli("download", "--run", "nope", "--manifest", repo / "data" / "manifest.json")


def test_download_unverified_needs_flag(repo, caplog):
    manifest = repo / "data" / "manifest.json"
    manifest.write_text(json.dumps({"schema_version": 1, "artifacts": [
        {"id": "upstream", "kind": "data-shard", "file": "x.json", "size": None, "sha256": None,
         "verified": False, "source": {"type": "file", "path": "data/manifest.json"}}]}))
    assert run_cli("download", "--id", "upstream", "--manifest", manifest, "--dest", repo / "d") == 1
    assert "--allow-unverified" in caplog.text
    assert run_cli("download", "--id", "upstream", "--manifest", manifest, "--dest", repo / "d",
                   "--allow-unverified", "--no-progress") == 0
    assert "measured size" in caplog.text


def test_release_missing_grid_fails(repo, caplog):
    assert run_cli("release", "absent", "--manifest", repo / "data" / "manifest.json") == 1
    assert "no run records for grid 'absent'" in caplog.text


def test_release_with_upload_source(repo, tmp_path):
    manifest = repo / "data" / "manifest.json"
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    assert run_cli("release", "g", "--out", outside, "--manifest", manifest) == 1, \
        "a bundle outside the repository needs an upload source"
    url = "https://zenodo.org/records/1/files/runs-g.tar.gz"
    assert run_cli("release", "g", "--out", outside, "--manifest", manifest, "--url", url) == 0
    assert load_manifest(manifest).by_id()["runs-g"].source.url == url

    assert run_cli("release", "g", "--manifest", manifest, "--hf-repo", "owner/isodepth-runs",
                   "--hf-revision", "c" * 40) == 0
    source = load_manifest(manifest).by_id()["runs-g"].source
    assert (source.repo_id, source.repo_type, source.path) == ("owner/isodepth-runs", "dataset", "runs-g.tar.gz")
    assert run_cli("release", "g", "--manifest", manifest, "--url", "http://example.org/runs-g.tar.gz") == 1


def test_convert_then_export(tmp_path, capsys):
    import torch
    from test_release_authors import random_model, tiny_config, write_authors_checkpoint

    from isodepth.release.export import HubLoopedLM

    original = random_model(tiny_config())
    source = write_authors_checkpoint(tmp_path / "isoflops_1e18_loop_s10", original)
    assert run_cli("convert", source, tmp_path / "ours") == 0
    assert run_cli("export", tmp_path / "ours", tmp_path / "hub") == 0
    assert run_cli("export", source, tmp_path / "hub-direct") == 0

    idx = torch.randint(0, original.cfg.vocab_size, (1, 10))
    with torch.no_grad():
        expected = original(idx)
        for folder in ("hub", "hub-direct"):
            assert torch.equal(HubLoopedLM.from_pretrained(str(tmp_path / folder))(idx), expected), folder
    assert not (tmp_path / "hub" / "tokenizer.json").exists()
