"""A minimal OCI image built from nothing but Python: one layer holding a tiny static
executable that prints a marker and exits 0.

It is the image Team Bravo pushes to the registry the suite starts and then pulls and runs
with containerd, so a pull over the network can be proven end to end without any image
coming from outside. The marker carries a nonce chosen per run: an image left behind by an
earlier run cannot print it.

The executable is a hand-assembled ELF (one PT_LOAD segment; `write(1, msg, len)` then
`exit(0)`), about 150 bytes, for amd64 and arm64. Everything is deterministic: the same
marker and architecture give the same digests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
import tarfile
from dataclasses import dataclass, field

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"

# Fixed timestamps keep digests reproducible (SOURCE_DATE_EPOCH style).
EPOCH = 0
CREATED = "1970-01-01T00:00:00Z"
ENTRYPOINT = "/marker"

_LOAD_ADDRESS = 0x400000
_ELF_HEADER_SIZE = 64
_PROGRAM_HEADER_SIZE = 56
_CODE_OFFSET = _ELF_HEADER_SIZE + _PROGRAM_HEADER_SIZE
# e_machine values
_EM_X86_64 = 0x3E
_EM_AARCH64 = 0xB7
_MAX_MESSAGE = 0xFFFF  # arm64 loads the length with one movz


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes = field(repr=False)

    @property
    def digest(self) -> str:
        return sha256_digest(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class OCIImage:
    """An image as the blobs a registry stores: config, layers and the manifest naming them."""

    config: Blob
    layers: tuple[Blob, ...]
    manifest: Blob
    architecture: str
    # What running the image prints on stdout.
    expected_output: str

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def blobs(self) -> tuple[Blob, ...]:
        return (*self.layers, self.config)


def _x86_64_code(message: bytes) -> bytes:
    # mov eax,1 ; mov edi,1 ; lea rsi,[rip+msg] ; mov edx,len ; syscall ; mov eax,60 ; xor edi,edi ; syscall
    before_lea = b"\xb8\x01\x00\x00\x00" + b"\xbf\x01\x00\x00\x00"
    after_lea = (
        b"\xba"
        + struct.pack("<I", len(message))
        + b"\x0f\x05"
        + b"\xb8\x3c\x00\x00\x00"
        + b"\x31\xff\x0f\x05"
    )
    # rip-relative displacement from the end of the 7-byte lea to the message after the code
    lea = b"\x48\x8d\x35" + struct.pack("<i", len(after_lea))
    return before_lea + lea + after_lea + message


def _movz(register: int, value: int) -> int:
    return 0xD2800000 | (value << 5) | register


def _aarch64_code(message: bytes) -> bytes:
    instructions = 8
    adr_index = 1
    # adr x1, msg: byte offset from the adr instruction to the message after the code
    offset = (instructions - adr_index) * 4
    adr = 0x10000000 | ((offset & 0x3) << 29) | (((offset >> 2) & 0x7FFFF) << 5) | 1
    words = [
        _movz(0, 1),  # x0 = fd 1
        adr,  # x1 = &msg
        _movz(2, len(message)),  # x2 = len
        _movz(8, 64),  # x8 = __NR_write
        0xD4000001,  # svc #0
        _movz(0, 0),  # x0 = status 0
        _movz(8, 93),  # x8 = __NR_exit
        0xD4000001,  # svc #0
    ]
    assert len(words) == instructions
    return struct.pack(f"<{instructions}I", *words) + message


_ARCHITECTURES = {"amd64": (_EM_X86_64, _x86_64_code), "arm64": (_EM_AARCH64, _aarch64_code)}

# `uname -m` on the target -> OCI architecture
UNAME_TO_OCI_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def static_echo_executable(message: bytes, architecture: str = "amd64") -> bytes:
    """A static Linux ELF executable that writes `message` to stdout and exits 0."""
    if architecture not in _ARCHITECTURES:
        raise ValueError(
            f"architecture {architecture!r} is not supported; use one of {', '.join(sorted(_ARCHITECTURES))}"
        )
    if not message or len(message) > _MAX_MESSAGE:
        raise ValueError(f"message must be 1..{_MAX_MESSAGE} bytes, got {len(message)}")
    machine, assemble = _ARCHITECTURES[architecture]
    code = assemble(message)
    total = _CODE_OFFSET + len(code)
    entry = _LOAD_ADDRESS + _CODE_OFFSET
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, little endian, version 1, SysV
    header = ident + struct.pack(
        "<HHIQQQIHHHHHH",
        2,  # ET_EXEC
        machine,
        1,  # EV_CURRENT
        entry,
        _ELF_HEADER_SIZE,  # program headers follow the ELF header
        0,  # no section headers
        0,
        _ELF_HEADER_SIZE,
        _PROGRAM_HEADER_SIZE,
        1,
        0,
        0,
        0,
    )
    program_header = struct.pack(
        "<IIQQQQQQ",
        1,  # PT_LOAD
        5,  # PF_R | PF_X
        0,
        _LOAD_ADDRESS,
        _LOAD_ADDRESS,
        total,
        total,
        0x1000,
    )
    return header + program_header + code


def layer_tar(files: dict[str, tuple[bytes, int]]) -> bytes:
    """An uncompressed, reproducible tar of `{path: (content, mode)}` owned by root."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for path, (content, mode) in sorted(files.items()):
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size = len(content)
            info.mode = mode
            info.mtime = EPOCH
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _gzip(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=EPOCH, compresslevel=9) as stream:
        stream.write(data)
    return buffer.getvalue()


def _canonical_json(document: dict[str, object]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def build_marker_image(marker: str, architecture: str = "amd64") -> OCIImage:
    """An image whose entrypoint prints `marker` followed by a newline."""
    if not marker or not marker.isprintable():
        raise ValueError("marker must be one line of printable text")
    output = marker + "\n"
    executable = static_echo_executable(output.encode(), architecture)
    tar = layer_tar({ENTRYPOINT: (executable, 0o755)})
    layer = Blob(LAYER_MEDIA_TYPE, _gzip(tar))
    config = Blob(
        CONFIG_MEDIA_TYPE,
        _canonical_json(
            {
                "architecture": architecture,
                "os": "linux",
                "created": CREATED,
                "config": {"Entrypoint": [ENTRYPOINT], "WorkingDir": "/"},
                "rootfs": {"type": "layers", "diff_ids": [sha256_digest(tar)]},
                "history": [{"created": CREATED, "created_by": "hvsuite steps.oci_image", "comment": marker}],
            }
        ),
    )
    manifest = Blob(
        MANIFEST_MEDIA_TYPE,
        _canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST_MEDIA_TYPE,
                "config": config.descriptor(),
                "layers": [layer.descriptor()],
            }
        ),
    )
    return OCIImage(
        config=config, layers=(layer,), manifest=manifest, architecture=architecture, expected_output=output
    )
