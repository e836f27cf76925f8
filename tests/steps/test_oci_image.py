from __future__ import annotations

import gzip
import hashlib
import io
import json
import platform
import shutil
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from steps.oci_image import (
    CONFIG_MEDIA_TYPE,
    ENTRYPOINT,
    LAYER_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    UNAME_TO_OCI_ARCH,
    build_marker_image,
    static_echo_executable,
)

_QEMU = {"amd64": "qemu-x86_64-static", "arm64": "qemu-aarch64-static"}


def _runner_for(architecture: str) -> list[str]:
    """How to execute a binary of `architecture` here: natively, under qemu-user, or not at all."""
    if UNAME_TO_OCI_ARCH.get(platform.machine()) == architecture:
        return []
    qemu = shutil.which(_QEMU[architecture])
    if qemu is None:
        pytest.skip(f"cannot execute {architecture} binaries here (install qemu-user-static)")
    return [qemu]


@pytest.mark.parametrize("architecture", ["amd64", "arm64"])
def test_executable_prints_exactly_its_message_and_exits_zero(tmp_path: Path, architecture: str) -> None:
    message = f"hvsuite marker {architecture} 0123456789abcdef\n".encode()
    binary = tmp_path / "marker"
    binary.write_bytes(static_echo_executable(message, architecture))
    binary.chmod(0o755)
    result = subprocess.run([*_runner_for(architecture), str(binary)], capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == message
    assert result.stderr == b""


@pytest.mark.parametrize(("architecture", "machine"), [("amd64", 0x3E), ("arm64", 0xB7)])
def test_elf_header_describes_one_loadable_segment_covering_the_file(architecture: str, machine: int) -> None:
    binary = static_echo_executable(b"x\n", architecture)
    assert binary[:4] == b"\x7fELF"
    assert binary[4] == 2 and binary[5] == 1  # ELFCLASS64, little endian
    e_type, e_machine, _, e_entry, e_phoff = struct.unpack_from("<HHIQQ", binary, 16)
    assert (e_type, e_machine, e_phoff) == (2, machine, 64)
    p_type, p_flags, p_offset, p_vaddr, _, p_filesz, p_memsz, _ = struct.unpack_from("<IIQQQQQQ", binary, 64)
    assert (p_type, p_offset, p_filesz, p_memsz) == (1, 0, len(binary), len(binary))
    assert p_flags & 0x2 == 0, "the code segment must not be writable"
    assert p_vaddr < e_entry < p_vaddr + len(binary)


def test_executable_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="architecture 'riscv64' is not supported"):
        static_echo_executable(b"x", "riscv64")
    with pytest.raises(ValueError, match="message must be"):
        static_echo_executable(b"", "amd64")
    with pytest.raises(ValueError, match="message must be"):
        static_echo_executable(b"x" * 70000, "arm64")


def _descriptor_matches(descriptor: dict[str, object], data: bytes, media_type: str) -> None:
    assert descriptor["mediaType"] == media_type
    assert descriptor["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
    assert descriptor["size"] == len(data)


def test_image_blobs_are_consistent_with_the_manifest_and_config() -> None:
    image = build_marker_image("hvsuite-marker nonce-1234", "amd64")
    manifest = json.loads(image.manifest.data)
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == image.manifest.media_type == MANIFEST_MEDIA_TYPE
    _descriptor_matches(manifest["config"], image.config.data, CONFIG_MEDIA_TYPE)
    assert len(manifest["layers"]) == len(image.layers) == 1
    _descriptor_matches(manifest["layers"][0], image.layers[0].data, LAYER_MEDIA_TYPE)

    config = json.loads(image.config.data)
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    assert config["config"]["Entrypoint"] == [ENTRYPOINT]
    uncompressed = gzip.decompress(image.layers[0].data)
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(uncompressed).hexdigest()]

    with tarfile.open(fileobj=io.BytesIO(uncompressed)) as archive:
        members = archive.getmembers()
        assert [m.name for m in members] == [ENTRYPOINT.lstrip("/")]
        assert members[0].mode == 0o755 and members[0].uid == 0 and members[0].isfile()
        content = archive.extractfile(members[0])
        assert content is not None
        assert content.read() == static_echo_executable(b"hvsuite-marker nonce-1234\n", "amd64")
    assert image.expected_output == "hvsuite-marker nonce-1234\n"


def test_image_is_reproducible_and_the_marker_changes_the_digest() -> None:
    first = build_marker_image("marker a")
    assert build_marker_image("marker a").digest == first.digest
    assert build_marker_image("marker b").digest != first.digest
    assert build_marker_image("marker a", "arm64").digest != first.digest


@pytest.mark.parametrize("marker", ["two\nlines", "bell\a", ""])
def test_marker_must_be_one_printable_line(marker: str) -> None:
    with pytest.raises(ValueError):
        build_marker_image(marker)
