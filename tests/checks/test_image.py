"""The marker image built with podman and pushed to Debian's docker-registry started on
127.0.0.1, then proven from outside: the registry's HTTP API serves the pushed manifest by
its digest, and `podman pull` + `podman run` of the pushed reference prints the marker."""

from __future__ import annotations

import hashlib
import json
import platform
import resource
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from checks.image import (
    BUSYBOX,
    ImageError,
    PushedImage,
    build_image,
    is_static_executable,
    publish_marker_image,
    push_image,
    remove_image,
)
from transport.podman import PodmanError, podman

REPOSITORY = "hvsuite/marker"
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
# Straight to 127.0.0.1, never through a proxy from the environment.
HTTP = requests.Session()
HTTP.trust_env = False
# podman's OCI architecture names for `uname -m`
OCI_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def _need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed (scripts/install-host-deps as root)")
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Registry:
    endpoint: str  # http://127.0.0.1:PORT
    authority: str  # 127.0.0.1:PORT

    def manifest(self, reference: str, *, method: str = "GET") -> requests.Response:
        return HTTP.request(
            method,
            f"{self.endpoint}/v2/{REPOSITORY}/manifests/{reference}",
            headers={"Accept": MANIFEST_TYPES},
            timeout=10,
        )

    def blob(self, digest: str, *, method: str = "GET") -> requests.Response:
        return HTTP.request(method, f"{self.endpoint}/v2/{REPOSITORY}/blobs/{digest}", timeout=10)


@pytest.fixture(scope="module")
def tools() -> None:
    """podman and the static busybox the images are built around."""
    _need("podman")
    if not BUSYBOX.is_file():
        pytest.skip(f"{BUSYBOX} is missing (busybox-static; scripts/install-host-deps as root)")


@pytest.fixture(scope="module")
def registry(tools: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """docker-registry on 127.0.0.1 on a free port, with a temporary config and storage."""
    binary = _need("docker-registry")
    work = tmp_path_factory.mktemp("registry")
    port = _free_port()
    config = {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(work / "storage")}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}"},
    }
    # JSON is YAML.
    (work / "config.yml").write_text(json.dumps(config))
    with (work / "registry.log").open("wb") as log:
        process = subprocess.Popen(
            [binary, "serve", str(work / "config.yml")],
            stdout=log,
            stderr=subprocess.STDOUT,
            # Only the config file configures it (REGISTRY_* variables would override it).
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                pytest.fail(f"docker-registry exited {process.returncode}: {_tail(work / 'registry.log')}")
            try:
                if HTTP.get(f"{endpoint}/v2/", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"docker-registry did not answer on {endpoint}: {_tail(work / 'registry.log')}")
            time.sleep(0.1)
        yield Registry(endpoint, f"127.0.0.1:{port}")
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:]


def _image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False, timeout=30).returncode == 0


def _run(reference: str) -> subprocess.CompletedProcess[str]:
    # This host lacks CAP_SYS_RESOURCE: a container may not raise a limit above the runtime's
    # own (our nofile; nproc 32768, as for the scratch servers), and podman's defaults do.
    nofile, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    nproc, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    nofile = 1024 if nofile == resource.RLIM_INFINITY else nofile
    nproc = 32768 if nproc == resource.RLIM_INFINITY else min(nproc, 32768)
    limits = ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]
    return podman(
        "run", "--rm", "--runtime", "runc", "--network", "none", "--pull", "never", *limits, reference
    )


def _publish(registry: Registry, nonce: str) -> PushedImage:
    return publish_marker_image(registry.endpoint, REPOSITORY, nonce, f"hvsuite-oci-marker {nonce}")


def test_pushed_marker_image_is_served_by_its_digest_and_runs_to_the_marker(registry: Registry) -> None:
    nonce = secrets.token_hex(8)
    pushed = _publish(registry, nonce)
    assert pushed.reference == f"{registry.authority}/{REPOSITORY}:{nonce}"
    assert pushed.expected_output == f"hvsuite-oci-marker {nonce}\n"
    assert not _image_exists(pushed.reference), "publishing must remove the image it built locally"

    by_digest = registry.manifest(pushed.digest)
    assert by_digest.status_code == 200, by_digest.text
    assert by_digest.headers["Docker-Content-Digest"] == pushed.digest
    assert "sha256:" + hashlib.sha256(by_digest.content).hexdigest() == pushed.digest
    by_tag = registry.manifest(nonce, method="HEAD")
    assert by_tag.status_code == 200 and by_tag.headers["Docker-Content-Digest"] == pushed.digest

    manifest = by_digest.json()
    config = registry.blob(manifest["config"]["digest"])
    assert config.status_code == 200
    image_config = config.json()
    assert (image_config["os"], image_config["architecture"]) == ("linux", OCI_ARCH.get(platform.machine()))
    assert manifest["layers"], manifest
    for layer in manifest["layers"]:
        assert registry.blob(layer["digest"], method="HEAD").status_code == 200, layer

    try:
        podman("pull", "--tls-verify=false", pushed.reference, timeout=120)
        local = podman("image", "inspect", "--format", "{{.Digest}}", pushed.reference).stdout.strip()
        assert local == pushed.digest
        result = _run(pushed.reference)
        assert result.stdout == f"hvsuite-oci-marker {nonce}\n"
        assert result.stdout == pushed.expected_output
    finally:
        remove_image(pushed.reference)


def test_two_nonces_give_two_images(registry: Registry) -> None:
    first_nonce, second_nonce = secrets.token_hex(8), secrets.token_hex(8)
    first = _publish(registry, first_nonce)
    second = _publish(registry, second_nonce)
    assert first.digest != second.digest
    for nonce, pushed in ((first_nonce, first), (second_nonce, second)):
        head = registry.manifest(nonce, method="HEAD")
        assert head.status_code == 200 and head.headers["Docker-Content-Digest"] == pushed.digest


def test_a_failed_push_names_the_command_and_leaves_no_local_image(registry: Registry) -> None:
    nonce = secrets.token_hex(8)
    closed = f"127.0.0.1:{_free_port()}"  # nothing listens there
    with pytest.raises(PodmanError, match=r"(?s)`\S*podman push .*` exited \d+: .*connection refused"):
        publish_marker_image(f"http://{closed}", REPOSITORY, nonce, "m")
    assert not _image_exists(f"{closed}/{REPOSITORY}:{nonce}")


def test_build_image_copies_bytes_and_controller_files(tools: None, tmp_path: Path) -> None:
    tag = f"localhost/hvsuite-test-build:{secrets.token_hex(6)}"
    script = tmp_path / "hello"
    script.write_text("#!/bin/busybox sh\necho from-a-path\n")
    script.chmod(0o755)
    containerfile = (
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY hello /hello\nCOPY sub/data.txt /data.txt\n"
        'ENTRYPOINT ["/bin/busybox", "sh", "-c", "/hello; /bin/busybox cat /data.txt"]\n'
    )
    files: dict[str, bytes | Path] = {"busybox": BUSYBOX, "hello": script, "sub/data.txt": b"from-bytes\n"}
    image_id = build_image(tag, containerfile, files)
    try:
        inspected = json.loads(podman("image", "inspect", tag).stdout)[0]
        assert inspected["Id"] == image_id
        assert inspected["Labels"]["io.hvsuite.owner"] == "hvsuite"
        assert _run(tag).stdout == "from-a-path\nfrom-bytes\n"
    finally:
        remove_image(tag)
    assert not _image_exists(image_id)


def test_a_failed_build_names_the_command_and_podmans_message() -> None:
    _need("podman")
    tag = f"localhost/hvsuite-test-build:{secrets.token_hex(6)}"
    with pytest.raises(PodmanError, match=r"(?s)`\S*podman build .*` exited \d+: .*absent"):
        build_image(tag, "FROM scratch\nCOPY absent /absent\n", {})
    assert not _image_exists(tag)


def test_push_of_an_unknown_image_fails() -> None:
    _need("podman")
    with pytest.raises(PodmanError, match="podman push"):
        push_image(f"localhost/hvsuite-absent:{secrets.token_hex(6)}", "127.0.0.1:9/x:y", tls_verify=False)


def test_removing_an_image_that_does_not_exist_is_no_error() -> None:
    _need("podman")
    remove_image(f"localhost/hvsuite-absent:{secrets.token_hex(6)}")


@pytest.mark.parametrize("name", ["../escape", "/absolute", ".", ""])
def test_context_files_must_stay_inside_the_context(name: str) -> None:
    with pytest.raises(ValueError, match="build context file"):
        build_image("localhost/never:built", "FROM scratch\n", {name: b"x"})


@pytest.mark.parametrize(
    ("registry_endpoint", "repository", "nonce", "marker", "message"),
    [
        ("127.0.0.1:5000", REPOSITORY, "n", "m", "http://host:port"),
        ("http://127.0.0.1:5000/path", REPOSITORY, "n", "m", "http://host:port"),
        ("http://127.0.0.1:5000", "Upper/Case", "n", "m", "repository 'Upper/Case'"),
        ("http://127.0.0.1:5000", REPOSITORY, "bad tag", "m", "nonce 'bad tag'"),
        ("http://127.0.0.1:5000", REPOSITORY, "n", "two\nlines", "marker"),
        ("http://127.0.0.1:5000", REPOSITORY, "n", "", "marker"),
    ],
)
def test_bad_input_is_refused_before_any_build(
    registry_endpoint: str, repository: str, nonce: str, marker: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        publish_marker_image(registry_endpoint, repository, nonce, marker)


def test_only_a_static_busybox_is_accepted(tmp_path: Path) -> None:
    if BUSYBOX.is_file():
        assert is_static_executable(BUSYBOX)
    dynamic = Path("/bin/sh").resolve()  # dash, linked against libc
    assert not is_static_executable(dynamic)
    with pytest.raises(ImageError, match="not a static executable"):
        publish_marker_image("http://127.0.0.1:9", REPOSITORY, "n", "m", busybox=dynamic)
    text = tmp_path / "text"
    text.write_text("not an ELF file at all, but long enough to be read as a header ....\n")
    assert not is_static_executable(text)
    with pytest.raises(ImageError, match="busybox-static"):
        publish_marker_image("http://127.0.0.1:9", REPOSITORY, "n", "m", busybox=tmp_path / "absent")
