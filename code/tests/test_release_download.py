"""Downloader against a local HTTP server with Range support and injected faults, a prepared
Hugging Face cache with HF_HUB_OFFLINE=1, and committed file sources."""

from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from isodepth.release.download import (DownloadError, FetchOptions, UnverifiedArtifactError, check_artifacts,
                                       fetch_artifact, fetch_artifacts)
from isodepth.release.manifest import Artifact, Source

PAYLOAD = os.urandom(300_000)
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
FAST = FetchOptions(backoff_s=0.0, timeout_s=10.0, progress=False)


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    # path -> byte counts: the next responses for that path stop after that many body bytes
    truncate: dict[str, list[int]] = field(default_factory=dict)
    ignore_range: bool = False
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)


class RangeHandler(BaseHTTPRequestHandler):
    """GET with single open-ended byte ranges ("bytes=N-"), 206/416 responses and truncation on request."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        state: ServerState = self.server.state
        range_header = self.headers.get("Range")
        state.requests.append((self.path, range_header))
        data = state.files.get(self.path)
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return

        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if match and not state.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()

        cuts = state.truncate.get(self.path)
        if cuts:
            self.wfile.write(body[: cuts.pop(0)])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    httpd.daemon_threads = True
    httpd.state = ServerState(files={"/shard.bin": PAYLOAD})
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def url_artifact(server, path="/shard.bin", sha256=DIGEST, size=len(PAYLOAD), verified=True) -> Artifact:
    host, port = server.server_address[:2]
    return Artifact(id="shard", kind="data-shard", file="shards/shard.bin",
                    source=Source(type="url", url=f"http://{host}:{port}{path}"),
                    size=size, sha256=sha256, verified=verified)


def test_download_then_repeat_does_nothing(server, tmp_path):
    artifact = url_artifact(server)
    first = fetch_artifact(artifact, tmp_path, FAST)
    assert first.action == "downloaded"
    assert first.path.read_bytes() == PAYLOAD
    assert not first.path.with_name("shard.bin.part").exists()
    requests_after_first = len(server.state.requests)

    second = fetch_artifact(artifact, tmp_path, FAST)
    assert second.action == "present"
    assert second.sha256 == DIGEST
    assert len(server.state.requests) == requests_after_first


def test_interrupted_transfer_resumes(server, tmp_path):
    server.state.truncate["/shard.bin"] = [100_000]
    artifact = url_artifact(server)
    no_retry = FetchOptions(retries=0, backoff_s=0.0, timeout_s=10.0, progress=False)
    with pytest.raises(DownloadError, match="rerunning resumes"):
        fetch_artifact(artifact, tmp_path, no_retry)
    part = tmp_path / "shards" / "shard.bin.part"
    assert part.stat().st_size == 100_000
    assert not (tmp_path / "shards" / "shard.bin").exists()

    result = fetch_artifact(artifact, tmp_path, no_retry)
    assert result.action == "downloaded"
    assert result.path.read_bytes() == PAYLOAD
    assert server.state.requests[-1] == ("/shard.bin", "bytes=100000-")
    assert not part.exists()


def test_truncated_responses_retried(server, tmp_path):
    server.state.truncate["/shard.bin"] = [50_000, 70_000]
    result = fetch_artifact(url_artifact(server), tmp_path, FAST)
    assert result.path.read_bytes() == PAYLOAD
    ranges = [header for _, header in server.state.requests]
    assert ranges == [None, "bytes=50000-", "bytes=120000-"]


def test_server_ignoring_range_restarts(server, tmp_path):
    server.state.ignore_range = True
    part = tmp_path / "shards" / "shard.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 1000)  # stale bytes that must not survive a 200 response
    result = fetch_artifact(url_artifact(server), tmp_path, FAST)
    assert result.path.read_bytes() == PAYLOAD


def test_complete_part_file_only_verified(server, tmp_path):
    part = tmp_path / "shards" / "shard.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD)
    result = fetch_artifact(url_artifact(server), tmp_path, FAST)
    assert result.action == "downloaded"
    assert server.state.requests == []


def test_wrong_checksum_kept_aside(server, tmp_path):
    artifact = url_artifact(server, sha256="0" * 64)
    with pytest.raises(DownloadError, match="failed verification") as error:
        fetch_artifact(artifact, tmp_path, FAST)
    corrupt = tmp_path / "shards" / "shard.bin.corrupt"
    assert corrupt.read_bytes() == PAYLOAD
    assert "0" * 64 in str(error.value)
    assert not (tmp_path / "shards" / "shard.bin").exists()
    assert not (tmp_path / "shards" / "shard.bin.part").exists()


def test_wrong_size_rejected_before_hashing(server, tmp_path):
    with pytest.raises(DownloadError, match="size is 300000 bytes, expected 299999"):
        fetch_artifact(url_artifact(server, size=len(PAYLOAD) - 1), tmp_path, FAST)
    assert (tmp_path / "shards" / "shard.bin.corrupt").exists()


def test_corrupt_existing_file_replaced(server, tmp_path):
    target = tmp_path / "shards" / "shard.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(PAYLOAD[:-1] + b"!")
    result = fetch_artifact(url_artifact(server), tmp_path, FAST)
    assert result.action == "downloaded"
    assert target.read_bytes() == PAYLOAD
    assert (tmp_path / "shards" / "shard.bin.corrupt").read_bytes().endswith(b"!")


def test_not_found_is_clear_error(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch_artifact(url_artifact(server, path="/missing.bin"), tmp_path, FAST)


def test_unverified_needs_explicit_flag(server, tmp_path, caplog):
    artifact = url_artifact(server, sha256=None, size=None, verified=False)
    with pytest.raises(UnverifiedArtifactError, match="--allow-unverified"):
        fetch_artifact(artifact, tmp_path, FAST)
    assert server.state.requests == []

    allowed = FetchOptions(allow_unverified=True, backoff_s=0.0, progress=False)
    result = fetch_artifact(artifact, tmp_path, allowed)
    assert result.sha256 == DIGEST
    assert DIGEST in caplog.text


def test_fetch_artifacts_reports_all_failures(server, tmp_path):
    good = url_artifact(server)
    bad = Artifact(id="bad", kind="data-shard", file="bad.bin", source=good.source, size=len(PAYLOAD),
                   sha256="1" * 64, verified=True)
    with pytest.raises(DownloadError, match="1 of 2 artifacts failed: bad"):
        fetch_artifacts([bad, good], tmp_path, FAST)
    assert (tmp_path / "shards" / "shard.bin").read_bytes() == PAYLOAD


def test_check_reports_without_fetching(server, tmp_path):
    artifact = url_artifact(server)
    assert check_artifacts([artifact], tmp_path) == {"shard": "missing"}
    target = tmp_path / "shards" / "shard.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"short")
    assert "size is 5 bytes" in check_artifacts([artifact], tmp_path)["shard"]
    assert target.exists()
    assert server.state.requests == []


# --- Hugging Face cache, offline ----------------------------------------------------------

COMMIT = "a" * 40


def prepare_hub_cache(cache: Path, repo_id: str, path: str, data: bytes, repo_type="dataset") -> Path:
    """Lay out one file the way huggingface_hub's cache stores it: blob, snapshot symlink, ref."""
    repo_dir = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True)
    blob.write_bytes(data)
    pointer = repo_dir / "snapshots" / COMMIT / path
    pointer.parent.mkdir(parents=True)
    pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    return blob


@pytest.fixture
def offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def hub_artifact(revision: str, sha256: str = DIGEST) -> Artifact:
    return Artifact(id="hub-shard", kind="data-shard", file="hub/train-00000.parquet",
                    source=Source(type="hf", repo_id="owner/prepacked", repo_type="dataset",
                                  revision=revision, path="data/train-00000.parquet"),
                    size=len(PAYLOAD), sha256=sha256, verified=True)


@pytest.mark.parametrize("revision", ["main", COMMIT])
def test_hub_offline_cache(offline, tmp_path, revision):
    cache = tmp_path / "hub-cache"
    prepare_hub_cache(cache, "owner/prepacked", "data/train-00000.parquet", PAYLOAD)
    options = FetchOptions(hf_cache_dir=cache, progress=False)
    result = fetch_artifact(hub_artifact(revision), tmp_path / "dest", options)
    assert result.action == "downloaded"
    assert result.path.read_bytes() == PAYLOAD
    assert not result.path.is_symlink()

    again = fetch_artifact(hub_artifact(revision), tmp_path / "dest", options)
    assert again.action == "present"


def test_hub_offline_missing_file(offline, tmp_path):
    options = FetchOptions(hf_cache_dir=tmp_path / "empty-cache", progress=False)
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE is set"):
        fetch_artifact(hub_artifact(COMMIT), tmp_path / "dest", options)


def test_hub_wrong_checksum_evicts_cache(offline, tmp_path):
    cache = tmp_path / "hub-cache"
    blob = prepare_hub_cache(cache, "owner/prepacked", "data/train-00000.parquet", PAYLOAD)
    options = FetchOptions(hf_cache_dir=cache, progress=False)
    with pytest.raises(DownloadError, match="failed verification"):
        fetch_artifact(hub_artifact(COMMIT, sha256="f" * 64), tmp_path / "dest", options)
    assert (tmp_path / "dest" / "hub" / "train-00000.parquet.corrupt").read_bytes() == PAYLOAD
    assert not (tmp_path / "dest" / "hub" / "train-00000.parquet").exists()
    assert not blob.exists()


# --- committed file sources ------------------------------------------------------------------


def test_file_source_copied_and_verified(tmp_path, monkeypatch):
    from isodepth import paths

    monkeypatch.setattr(paths, "ROOT", tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "bundle.tar.gz").write_bytes(PAYLOAD)
    artifact = Artifact(id="bundle", kind="run-records", file="runs/bundle.tar.gz",
                        source=Source(type="file", path="data/bundle.tar.gz"),
                        size=len(PAYLOAD), sha256=DIGEST, verified=True)
    result = fetch_artifact(artifact, tmp_path / "dest", FAST)
    assert result.path.read_bytes() == PAYLOAD

    missing = Artifact(id="gone", kind="run-records", file="runs/gone.tar.gz",
                       source=Source(type="file", path="data/gone.tar.gz"), size=1, sha256="0" * 64,
                       verified=True)
    with pytest.raises(DownloadError, match="isodepth release"):
        fetch_artifact(missing, tmp_path / "dest", FAST)


# --- Hugging Face Hub online, against a local endpoint -----------------------------------------


class HubHandler(BaseHTTPRequestHandler):
    """The two Hub calls hf_hub_download makes for a plain (non-Xet) file: HEAD and GET on /resolve/."""

    protocol_version = "HTTP/1.1"

    def do_HEAD(self):
        self.respond(send_body=False)

    def do_GET(self):
        self.respond(send_body=True)

    def respond(self, send_body: bool):
        state: ServerState = self.server.state
        state.requests.append((f"{self.command} {self.path}", self.headers.get("Range")))
        data = state.files.get(self.path)
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if send_body:
            self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def hub(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), HubHandler)
    httpd.daemon_threads = True
    httpd.state = ServerState(files={f"/datasets/owner/prepacked/resolve/{COMMIT}/data/train-00000.parquet": PAYLOAD})
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_hub_online_local_endpoint(hub, tmp_path):
    host, port = hub.server_address[:2]
    options = FetchOptions(hf_cache_dir=tmp_path / "cache", hf_endpoint=f"http://{host}:{port}", progress=False)
    result = fetch_artifact(hub_artifact(COMMIT), tmp_path / "dest", options)
    assert result.path.read_bytes() == PAYLOAD
    paths_requested = [request for request, _ in hub.state.requests]
    assert paths_requested == [f"HEAD /datasets/owner/prepacked/resolve/{COMMIT}/data/train-00000.parquet",
                               f"GET /datasets/owner/prepacked/resolve/{COMMIT}/data/train-00000.parquet"]

    again = fetch_artifact(hub_artifact(COMMIT), tmp_path / "dest", options)
    assert again.action == "present"
    assert len(hub.state.requests) == 2

    with pytest.raises(DownloadError, match="not found on the Hub"):
        fetch_artifact(hub_artifact("d" * 40), tmp_path / "dest2", options)
