"""OCI images built with real tools on the controller: `podman build` (rootful) from a
temporary context, `podman push` to a registry, then the local image removed.

The general functions (`build_image`, `push_image`, `remove_image`) serve any image the suite
builds. The marker image is the one Team Bravo pushes to the registry the suite starts on the
target and then pulls and runs with containerd, so a pull over the network is proven end to
end without any image coming from outside: `FROM scratch`, Debian's static busybox
(`busybox-static`) and a file holding the marker, printed by `busybox cat`. The marker carries
a nonce chosen per run, so an image left behind by an earlier run cannot print it.

The image is built for the controller's architecture (the busybox binary is the controller's);
the caller checks that the target's matches.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from transport.podman import SUITE_LABEL, SUITE_LABEL_VALUE, PodmanError, podman

# Debian's busybox-static package installs it here (the dynamic `busybox` package conflicts
# with it and installs a binary that cannot run in an image without a libc).
BUSYBOX = Path("/bin/busybox")
MARKER_PATH = "/marker"
MARKER_CONTAINERFILE = f"""\
FROM scratch
COPY busybox /bin/busybox
COPY marker {MARKER_PATH}
ENTRYPOINT ["/bin/busybox", "cat", "{MARKER_PATH}"]
"""

_REPOSITORY = re.compile(
    r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_ENDPOINT = re.compile(r"^(https?)://([^/\s]+)$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_PT_INTERP = 3


class ImageError(RuntimeError):
    """An image cannot be built from what the controller has (for example no static busybox)."""


@dataclass(frozen=True)
class PushedImage:
    reference: str  # host:port/repository:tag, as containerd pulls it
    digest: str  # the manifest digest the registry stores
    expected_output: str  # what running the image prints on stdout


def _context_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or path == PurePosixPath("."):
        raise ValueError(f"build context file {name!r} must be a relative path inside the context")
    return path


def build_image(
    tag: str,
    containerfile: str,
    files: Mapping[str, bytes | Path],
    *,
    timeout: float = 600.0,
) -> str:
    """Build `containerfile` with `podman build` from a temporary context holding `files`
    (context-relative name -> content, or a controller file copied with its mode; content
    given as bytes is written 0644) and tag it `tag`; return the image id.

    A RUN, if any, runs with runc (crun refuses this machine's hybrid cgroups). No
    intermediate images are committed (`--layers=false`), so removing the tag removes
    everything the build made. The image carries the suite's label.
    """
    paths = {_context_path(name): content for name, content in files.items()}
    with tempfile.TemporaryDirectory(prefix="hvsuite-build-") as tmp:
        work = Path(tmp)
        context = work / "context"
        context.mkdir()
        for rel, content in paths.items():
            target = context / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copyfile(content, target)
                shutil.copymode(content, target)
            else:
                target.write_bytes(content)
                target.chmod(0o644)
        # Outside the context, so it cannot collide with a file of the image.
        (work / "Containerfile").write_text(containerfile)
        iidfile = work / "image-id"
        podman(
            "build",
            "--quiet",
            "--runtime",
            "runc",
            "--layers=false",
            "--label",
            f"{SUITE_LABEL}={SUITE_LABEL_VALUE}",
            "--iidfile",
            str(iidfile),
            "--tag",
            tag,
            "--file",
            str(work / "Containerfile"),
            str(context),
            timeout=timeout,
        )
        image_id = iidfile.read_text().strip().removeprefix("sha256:")
    if not re.fullmatch(r"[0-9a-f]{64}", image_id):
        raise ImageError(f"`podman build --tag {tag}` wrote no image id (got {image_id!r})")
    return image_id


def push_image(image: str, reference: str, *, tls_verify: bool, timeout: float = 300.0) -> str:
    """Push the local `image` (tag or id) to `reference` (host:port/repository:tag) and return
    the manifest digest the registry stores. A plain-HTTP registry needs `tls_verify=False`."""
    with tempfile.TemporaryDirectory(prefix="hvsuite-push-") as tmp:
        digestfile = Path(tmp) / "digest"
        args = (
            "push",
            "--quiet",  # no progress: a failure's message is podman's error (and its retries)
            f"--tls-verify={'true' if tls_verify else 'false'}",
            "--digestfile",
            str(digestfile),
            image,
            f"docker://{reference}",
        )
        podman(*args, timeout=timeout)
        digest = digestfile.read_text().strip() if digestfile.exists() else ""
    if not _DIGEST.match(digest):
        raise PodmanError(["podman", *args], 0, f"wrote no manifest digest to --digestfile (got {digest!r})")
    return digest


def remove_image(*images: str, timeout: float = 120.0) -> None:
    """Remove local images by their exact tags or ids; ones that do not exist are no error.
    A tag removes only that name (the image goes with its last tag); nothing is forced."""
    if images:
        podman("rmi", "--ignore", *images, timeout=timeout)


def is_static_executable(path: Path) -> bool:
    """True when `path` is an ELF executable with no program interpreter (statically linked)."""
    with path.open("rb") as stream:
        header = stream.read(64)
        if len(header) < 52 or header[:4] != b"\x7fELF" or header[4] not in (1, 2):
            return False
        order = "<" if header[5] == 1 else ">"
        if header[4] == 2:  # ELFCLASS64
            (phoff,) = struct.unpack_from(order + "Q", header, 32)
            phentsize, phnum = struct.unpack_from(order + "HH", header, 54)
        else:
            (phoff,) = struct.unpack_from(order + "I", header, 28)
            phentsize, phnum = struct.unpack_from(order + "HH", header, 42)
        stream.seek(phoff)
        table = stream.read(phentsize * phnum)
    if phnum == 0 or len(table) < phentsize * phnum:
        return False
    return all(struct.unpack_from(order + "I", table, i * phentsize)[0] != _PT_INTERP for i in range(phnum))


def publish_marker_image(
    registry: str, repository: str, nonce: str, marker: str, *, busybox: Path = BUSYBOX
) -> PushedImage:
    """Build the marker image, push it to `registry` (http://host:port or https://host:port)
    as `repository:nonce` and remove the local image. Running the pushed image prints exactly
    `marker` and a newline."""
    endpoint = _ENDPOINT.match(registry)
    if endpoint is None:
        raise ValueError(f"registry {registry!r} must look like http://host:port (no path)")
    if not _REPOSITORY.match(repository):
        raise ValueError(f"repository {repository!r} is not a valid name (lower case, a-z0-9._-/)")
    if not _TAG.match(nonce):
        raise ValueError(f"nonce {nonce!r} is not a valid tag ([A-Za-z0-9_][A-Za-z0-9._-]*, up to 128)")
    if not marker or not marker.isprintable():
        raise ValueError("marker must be one line of printable text")
    if not busybox.is_file():
        raise ImageError(f"{busybox} is missing: install busybox-static (scripts/install-host-deps as root)")
    if not is_static_executable(busybox):
        raise ImageError(
            f"{busybox} is not a static executable and cannot run in a FROM scratch image: "
            "install busybox-static instead of busybox"
        )
    scheme, authority = endpoint.groups()
    reference = f"{authority}/{repository}:{nonce}"
    output = marker + "\n"
    build_image(reference, MARKER_CONTAINERFILE, {"busybox": busybox, "marker": output.encode()})
    try:
        digest = push_image(reference, reference, tls_verify=scheme == "https")
    except BaseException:
        with contextlib.suppress(PodmanError):
            remove_image(reference)
        raise
    remove_image(reference)
    return PushedImage(reference=reference, digest=digest, expected_output=output)
