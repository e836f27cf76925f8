"""The registry client against an in-process registry that enforces the distribution API's
rules for a push (digests checked, uploads only through their session URL)."""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from steps.oci_image import MANIFEST_MEDIA_TYPE, build_marker_image
from steps.registry_client import RegistryClient, RegistryError


class FakeRegistry:
    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[tuple[str, str], bytes] = {}
        self.uploads: set[str] = set()
        self.requests: list[tuple[str, str]] = []
        self.corrupt_manifest_digest = False


def _handler(registry: FakeRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def _reply(self, code: int, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
            self.send_response(code)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length", "0")))

        def do_GET(self) -> None:
            registry.requests.append(("GET", self.path))
            if self.path == "/v2/":
                self._reply(200, {"Docker-Distribution-API-Version": "registry/2.0"}, b"{}")
            else:
                self._reply(404)

        def do_HEAD(self) -> None:
            registry.requests.append(("HEAD", self.path))
            parts = urlsplit(self.path).path.split("/")
            if "blobs" in parts:
                self._reply(200 if parts[-1] in registry.blobs else 404)
            elif "manifests" in parts:
                repository = "/".join(parts[2 : parts.index("manifests")])
                manifest = registry.manifests.get((repository, parts[-1]))
                if manifest is None:
                    self._reply(404)
                else:
                    self._reply(
                        200, {"Docker-Content-Digest": "sha256:" + hashlib.sha256(manifest).hexdigest()}
                    )
            else:
                self._reply(404)

        def do_POST(self) -> None:
            registry.requests.append(("POST", self.path))
            session = uuid.uuid4().hex
            registry.uploads.add(session)
            repository = self.path.split("/blobs/")[0].removeprefix("/v2/")
            # Relative Location with a query of its own, as distribution answers.
            self._reply(202, {"Location": f"/v2/{repository}/blobs/uploads/{session}?_state=opaque"})

        def do_PUT(self) -> None:
            registry.requests.append(("PUT", self.path))
            url = urlsplit(self.path)
            body = self._body()
            if "/blobs/uploads/" in url.path:
                session = url.path.rsplit("/", 1)[-1]
                query = parse_qs(url.query)
                if session not in registry.uploads or query.get("_state") != ["opaque"]:
                    self._reply(404, body=b"unknown upload")
                    return
                digest = query["digest"][0]
                if digest != "sha256:" + hashlib.sha256(body).hexdigest():
                    self._reply(400, body=b'{"errors":[{"code":"DIGEST_INVALID"}]}')
                    return
                registry.blobs[digest] = body
                registry.uploads.discard(session)
                self._reply(201, {"Docker-Content-Digest": digest})
            elif "/manifests/" in url.path:
                if self.headers.get("Content-Type") != MANIFEST_MEDIA_TYPE:
                    self._reply(400, body=b"manifest media type")
                    return
                repository, tag = url.path.removeprefix("/v2/").split("/manifests/")
                registry.manifests[(repository, tag)] = body
                digest = "sha256:" + hashlib.sha256(body).hexdigest()
                if registry.corrupt_manifest_digest:
                    digest = "sha256:" + "0" * 64
                self._reply(201, {"Docker-Content-Digest": digest})
            else:
                self._reply(404)

    return Handler


@pytest.fixture
def registry() -> Iterator[tuple[FakeRegistry, str]]:
    state = FakeRegistry()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_push_uploads_every_blob_then_the_manifest(registry: tuple[FakeRegistry, str]) -> None:
    state, endpoint = registry
    image = build_marker_image("hvsuite-marker push-1")
    client = RegistryClient(endpoint, timeout=5)
    assert client.ping() == "registry/2.0"
    result = client.push("hvsuite/marker", "push-1", image)
    assert result.uploaded == 2
    assert result.digest == image.digest
    assert result.reference == f"{endpoint.removeprefix('http://')}/hvsuite/marker:push-1"
    assert {blob.digest: blob.data for blob in image.blobs} == state.blobs
    assert state.manifests[("hvsuite/marker", "push-1")] == image.manifest.data
    assert client.manifest_digest("hvsuite/marker", "push-1", MANIFEST_MEDIA_TYPE) == image.digest
    assert client.manifest_digest("hvsuite/marker", "missing", MANIFEST_MEDIA_TYPE) is None


def test_second_push_sends_no_blob_again(registry: tuple[FakeRegistry, str]) -> None:
    state, endpoint = registry
    image = build_marker_image("hvsuite-marker push-2")
    client = RegistryClient(endpoint, timeout=5)
    client.push("hvsuite/marker", "a", image)
    state.requests.clear()
    assert client.push("hvsuite/marker", "b", image).uploaded == 0
    assert [method for method, _ in state.requests] == ["HEAD", "HEAD", "PUT"]


def test_a_manifest_digest_other_than_ours_is_an_error(registry: tuple[FakeRegistry, str]) -> None:
    state, endpoint = registry
    state.corrupt_manifest_digest = True
    with pytest.raises(RegistryError, match="registry stored manifest sha256:0000"):
        RegistryClient(endpoint, timeout=5).push("hvsuite/marker", "x", build_marker_image("m"))


def test_unexpected_status_names_the_request(registry: tuple[FakeRegistry, str]) -> None:
    _, endpoint = registry
    client = RegistryClient(endpoint, timeout=5)
    with pytest.raises(RegistryError, match=r"GET .*/v2/nothing answered 404"):
        client._expect(client.session.get(endpoint + "/v2/nothing", timeout=5), 200)


@pytest.mark.parametrize(
    ("repository", "tag", "message"),
    [("Upper/Case", "t", "repository 'Upper/Case'"), ("ok/name", "bad tag", "tag 'bad tag'")],
)
def test_bad_names_are_rejected_before_any_request(repository: str, tag: str, message: str) -> None:
    client = RegistryClient("http://127.0.0.1:9", timeout=1)
    with pytest.raises(ValueError, match=message):
        client.push(repository, tag, build_marker_image("m"))


def test_endpoint_must_be_scheme_host_port() -> None:
    with pytest.raises(ValueError, match="http://host:port"):
        RegistryClient("127.0.0.1:5000")
