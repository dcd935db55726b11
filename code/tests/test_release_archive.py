"""Safe tar extraction and the reproducible, checksummed run-record bundles."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from isodepth.release.archive import UnsafeArchiveError, safe_extract
from isodepth.release.bundle import (SUMS_NAME, BundleError, build_run_bundle, extract_bundle, pack_files,
                                     verify_bundle)
from isodepth.release.manifest import Source
from isodepth.release.verify import parse_sha256sums


def make_tar(path: Path, members: list[tuple[str, str, object]]) -> Path:
    """Write a tar.gz; members are (name, type, payload): file -> bytes, symlink/hardlink -> link target."""
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
                continue
            if kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, payload
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, payload
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            elif kind == "device":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            tar.addfile(info)
    return path


UNSAFE = {
    "absolute": [("/tmp/evil.txt", "file", b"x")],
    "parent": [("../evil.txt", "file", b"x")],
    "nested parent": [("runs/../../evil.txt", "file", b"x")],
    "symlink absolute": [("link", "symlink", "/etc/passwd")],
    "symlink outside": [("runs/link", "symlink", "../../outside")],
    "symlink then write through": [("escape", "symlink", ".."), ("escape/evil.txt", "file", b"x")],
    "hardlink outside": [("link", "hardlink", "../outside.txt")],
    "hardlink absolute": [("link", "hardlink", "/etc/passwd")],
    "fifo": [("pipe", "fifo", None)],
    "device": [("null", "device", None)],
    "windows drive": [("C:/evil.txt", "file", b"x")],
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_members_rejected(tmp_path, case):
    archive = make_tar(tmp_path / "bad.tar.gz", [("ok.txt", "file", b"fine")] + UNSAFE[case])
    target = tmp_path / "target"
    with pytest.raises(UnsafeArchiveError):
        safe_extract(archive, target)
    assert not target.exists(), "nothing may be written before every member is checked"
    assert not (tmp_path / "evil.txt").exists()


def test_internal_links_extracted(tmp_path):
    archive = make_tar(tmp_path / "good.tar.gz", [
        ("runs/a/record.json", "file", b"{}"),
        ("runs/latest", "symlink", "a"),
        ("runs/copy.json", "hardlink", "runs/a/record.json"),
    ])
    target = tmp_path / "target"
    written = safe_extract(archive, target)
    assert (target / "runs" / "a" / "record.json").read_bytes() == b"{}"
    assert (target / "runs" / "latest").is_symlink()
    assert (target / "runs" / "copy.json").read_bytes() == b"{}"
    assert target / "runs" / "a" / "record.json" in written


def test_existing_different_file_kept(tmp_path):
    archive = make_tar(tmp_path / "a.tar.gz", [("data.txt", "file", b"new")])
    target = tmp_path / "target"
    target.mkdir()
    (target / "data.txt").write_bytes(b"old")
    with pytest.raises(FileExistsError, match="--overwrite"):
        safe_extract(archive, target)
    assert (target / "data.txt").read_bytes() == b"old"

    safe_extract(archive, target, overwrite=True)
    assert (target / "data.txt").read_bytes() == b"new"


def test_identical_file_not_rewritten(tmp_path):
    archive = make_tar(tmp_path / "a.tar.gz", [("data.txt", "file", b"same")])
    target = tmp_path / "target"
    target.mkdir()
    (target / "data.txt").write_bytes(b"same")
    assert safe_extract(archive, target) == []


# --- run-record bundles -------------------------------------------------------------------


def write_runs(runs_dir: Path, grid: str, run_ids: list[str]) -> None:
    for index, run_id in enumerate(run_ids):
        folder = runs_dir / grid / run_id
        folder.mkdir(parents=True)
        record = {"grid": grid, "run_id": run_id, "status": "completed", "final_val_loss": 4.0 + index}
        (folder / "record.json").write_text(json.dumps(record))
        (folder / ".record.json.123.tmp").write_text("partial write")


def test_bundle_reproducible_and_verified(tmp_path):
    runs = tmp_path / "runs"
    write_runs(runs, "g", ["C1-r1-s2", "C1-r4-s2"])
    first = build_run_bundle("g", runs_dir=runs, out_dir=tmp_path / "release")
    bytes_first = first.path.read_bytes()
    second = build_run_bundle("g", runs_dir=runs, out_dir=tmp_path / "release2")
    assert second.path.read_bytes() == bytes_first
    assert first.sha256 == second.sha256
    assert first.statuses == {"completed": 2}

    sums = parse_sha256sums(first.sums_path.read_text())
    assert sums == {"runs-g.tar.gz": first.sha256}
    contents = verify_bundle(first.path)
    assert sorted(contents) == ["g/C1-r1-s2/record.json", "g/C1-r4-s2/record.json"]

    with pytest.raises(BundleError, match="outside the repository"):
        first.manifest_entry()
    upload = Source(type="url", url="https://zenodo.org/records/1/files/runs-g.tar.gz")
    entry = first.manifest_entry(upload)
    assert entry.kind == "run-records"
    assert entry.source == upload
    assert entry.size == len(bytes_first)
    assert entry.verified


def test_bundle_missing_planned_runs(tmp_path):
    runs = tmp_path / "runs"
    write_runs(runs, "g", ["C1-r1-s2"])
    with pytest.raises(BundleError, match="1 of 2 planned runs have no record: C1-r4-s2"):
        build_run_bundle("g", runs_dir=runs, out_dir=tmp_path / "release",
                         expected_run_ids=["C1-r1-s2", "C1-r4-s2"], require_complete=True)


def test_bundle_rejects_mismatched_record(tmp_path):
    runs = tmp_path / "runs"
    write_runs(runs, "g", ["C1-r1-s2"])
    (runs / "g" / "C1-r1-s2").rename(runs / "g" / "renamed")
    with pytest.raises(BundleError, match="do not match the folder"):
        build_run_bundle("g", runs_dir=runs, out_dir=tmp_path / "release")


def test_tampered_bundle_rejected(tmp_path):
    files = {"g/run/record.json": b'{"final_val_loss": 4.0}'}
    good = pack_files(files)
    with tarfile.open(fileobj=io.BytesIO(good), mode="r:gz") as tar:
        sums = tar.extractfile(SUMS_NAME).read()
    tampered = tmp_path / "tampered.tar.gz"
    make_tar(tampered, [(SUMS_NAME, "file", sums), ("g/run/record.json", "file", b'{"final_val_loss": 1.0}')])
    with pytest.raises(BundleError, match="sha256 mismatch for g/run/record.json"):
        verify_bundle(tampered)
    with pytest.raises(BundleError):
        extract_bundle(tampered, tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_extract_bundle_skips_sums(tmp_path):
    runs = tmp_path / "runs"
    write_runs(runs, "g", ["C1-r1-s2"])
    bundle = build_run_bundle("g", runs_dir=runs, out_dir=tmp_path / "release")
    target = tmp_path / "restored"
    extract_bundle(bundle.path, target)
    assert (target / "g" / "C1-r1-s2" / "record.json").read_bytes() == \
        (runs / "g" / "C1-r1-s2" / "record.json").read_bytes()
    assert not (target / SUMS_NAME).exists()
    assert not list(target.rglob("*.tmp"))
