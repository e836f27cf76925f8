"""Artifacts: checksum, cache, offline mirror, archive members, copy only when needed.
Downloads use file:// URLs and an http.server on 127.0.0.1 only."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from apply.artifacts import ArtifactError, ArtifactStore, ChecksumMismatch, install
from apply.facts import FileInfo, FileSha256
from apply.testing import FakeConnection, fake_host
from settings.base import ArtifactPin

PAYLOAD = b"#!/bin/sh\necho firecracker\n"
SHA = hashlib.sha256(PAYLOAD).hexdigest()
WRONG = "0" * 64


def pin_for(url: str, sha256: str = SHA, **kwargs: str) -> ArtifactPin:
    return ArtifactPin(version="1.0", url=url, sha256=sha256, dest="/usr/local/bin/fc", **kwargs)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "firecracker-v1.0"
    path.parent.mkdir()
    path.write_bytes(PAYLOAD)
    return path


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    root = tmp_path / "www"
    root.mkdir()
    (root / "fc").write_bytes(PAYLOAD)
    requests_seen: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:
            requests_seen.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests_seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_file_url_fetch_verifies_and_caches(tmp_path: Path, source: Path) -> None:
    store = ArtifactStore({"fc": pin_for(source.as_uri())}, cache_dir=tmp_path / "cache")
    path = store.fetch("fc")
    assert path == tmp_path / "cache" / SHA and path.read_bytes() == PAYLOAD
    assert store.sources["fc"] == "download"


def test_http_fetch_then_cache_hit(tmp_path: Path, http_root: tuple[str, list[str]]) -> None:
    base, seen = http_root
    pins = {"fc": pin_for(f"{base}/fc")}
    first = ArtifactStore(pins, cache_dir=tmp_path / "cache")
    assert first.fetch("fc").read_bytes() == PAYLOAD
    assert seen == ["/fc"]
    second = ArtifactStore(pins, cache_dir=tmp_path / "cache")
    assert second.fetch("fc").read_bytes() == PAYLOAD
    assert second.sources["fc"] == "cache" and seen == ["/fc"]


def test_http_error_names_the_artifact(tmp_path: Path, http_root: tuple[str, list[str]]) -> None:
    base, _ = http_root
    store = ArtifactStore({"fc": pin_for(f"{base}/missing")}, cache_dir=tmp_path / "cache")
    with pytest.raises(ArtifactError, match=r"artifact 'fc': cannot fetch .*/missing.*404"):
        store.fetch("fc")


def test_wrong_checksum_is_a_clear_failure(tmp_path: Path, source: Path) -> None:
    store = ArtifactStore({"fc": pin_for(source.as_uri(), sha256=WRONG)}, cache_dir=tmp_path / "cache")
    with pytest.raises(ChecksumMismatch) as info:
        store.fetch("fc")
    message = str(info.value)
    assert "'fc'" in message and f"expected {WRONG}" in message and f"got {SHA}" in message
    # Nothing half-verified is left in the cache.
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


def test_corrupt_cache_entry_is_refetched(tmp_path: Path, source: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / SHA).write_bytes(b"corrupt")
    store = ArtifactStore({"fc": pin_for(source.as_uri())}, cache_dir=cache)
    assert store.fetch("fc").read_bytes() == PAYLOAD and store.sources["fc"] == "download"


@pytest.mark.parametrize("mirror_name", ["firecracker-v1.0", SHA])
def test_artifacts_dir_mirror(tmp_path: Path, mirror_name: str) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / mirror_name).write_bytes(PAYLOAD)
    # The URL points nowhere reachable: an offline store never touches the network.
    pins = {"fc": pin_for("https://example.invalid/releases/firecracker-v1.0")}
    store = ArtifactStore(pins, cache_dir=tmp_path / "cache", artifacts_dir=mirror)
    assert store.fetch("fc").read_bytes() == PAYLOAD and store.sources["fc"] == "mirror"


def test_artifacts_dir_missing_file_and_wrong_file(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    pins = {"fc": pin_for("https://example.invalid/firecracker-v1.0")}
    store = ArtifactStore(pins, cache_dir=tmp_path / "cache", artifacts_dir=mirror)
    with pytest.raises(ArtifactError, match=r"not in --artifacts-dir .*'firecracker-v1.0'"):
        store.fetch("fc")
    (mirror / "firecracker-v1.0").write_bytes(b"tampered")
    with pytest.raises(ChecksumMismatch, match=f"expected {SHA}"):
        store.fetch("fc")


def test_artifacts_dir_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a directory"):
        ArtifactStore(artifacts_dir=tmp_path / "nope")


def test_undeclared_artifact(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"'kubelet' is not declared.*declared: none"):
        ArtifactStore(cache_dir=tmp_path).fetch("kubelet")


def _tarball(path: Path, members: dict[str, bytes]) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_archive_member(tmp_path: Path) -> None:
    archive = tmp_path / "release.tgz"
    sha = _tarball(archive, {"release-v1/firecracker": PAYLOAD, "release-v1/LICENSE": b"x"})
    store = ArtifactStore(cache_dir=tmp_path / "cache")
    path = store.fetch("fc", pin_for(archive.as_uri(), sha256=sha, member="release-v1/firecracker"))
    assert path.read_bytes() == PAYLOAD
    with pytest.raises(ArtifactError, match=r"no member 'nope' .*release-v1/firecracker"):
        store.fetch("fc", pin_for(archive.as_uri(), sha256=sha, member="nope"))
    with pytest.raises(ArtifactError, match="relative path"):
        store.fetch("fc", pin_for(archive.as_uri(), sha256=sha, member="../etc/passwd"))


def test_install_copies_when_missing(tmp_path: Path, source: Path) -> None:
    store = ArtifactStore({"fc": pin_for(source.as_uri())}, cache_dir=tmp_path / "cache")
    conn = FakeConnection({FileInfo("/usr/local/bin").command: (0, "directory|root|root|755|1\n", "")})
    host = fake_host(conn, lock_dir=tmp_path / "locks")
    result = install(host, store, "fc")
    assert result.changed and conn.files["/usr/local/bin/fc"] == PAYLOAD
    assert any("chmod 0755" in command for command in conn.commands)
    assert result.diff is not None and SHA in result.diff


def test_install_creates_missing_parent(tmp_path: Path, source: Path) -> None:
    store = ArtifactStore({"fc": pin_for(source.as_uri())}, cache_dir=tmp_path / "cache")
    conn = FakeConnection()
    install(fake_host(conn, lock_dir=tmp_path / "locks"), store, "fc")
    assert "mkdir -p -- /usr/local/bin" in conn.commands


def test_install_skips_copy_when_target_has_the_sha(tmp_path: Path, source: Path) -> None:
    store = ArtifactStore({"fc": pin_for(source.as_uri())}, cache_dir=tmp_path / "cache")
    conn = FakeConnection(
        {
            FileSha256("/usr/local/bin/fc").command: (0, f"{SHA}  /usr/local/bin/fc\n", ""),
            FileInfo("/usr/local/bin/fc").command: (0, "regular file|root|root|700|10\n", ""),
        }
    )
    result = install(fake_host(conn, lock_dir=tmp_path / "locks"), store, "fc")
    assert conn.uploads == []
    assert result.changed and result.commands == ["chmod 0755 -- /usr/local/bin/fc"]


def test_install_in_check_and_verify_modes(tmp_path: Path, source: Path) -> None:
    store = ArtifactStore({"fc": pin_for(source.as_uri())}, cache_dir=tmp_path / "cache")
    check_conn = FakeConnection()
    result = install(fake_host(check_conn, mode="check", lock_dir=tmp_path / "locks"), store, "fc")
    assert result.changed and check_conn.uploads == []
    assert not any(c.startswith(("mkdir", "mv", "mktemp")) for c in check_conn.commands)
    verify_conn = FakeConnection()
    result = install(fake_host(verify_conn, mode="verify", lock_dir=tmp_path / "locks"), store, "fc")
    assert result.reason == "verify-only" and verify_conn.commands == []
