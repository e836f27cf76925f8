"""Kubernetes 1.20.2 built by the suite, for targets that cannot reach an upstream release.

No registry reachable from such a target ships kubeadm, kubelet or the control-plane images;
the one buildable tree is Debian bookworm's source package ``kubernetes``
(1.20.5+really1.20.2-1.1+deb12u1, the whole upstream tree with ``vendor/``). The recipe:

1. a builder image on the scratch servers' Debian rootfs: Debian's ``golang-1.19-go``, the
   source package with Debian's patches applied (``apt-get source``), and one vendor fix:
   the vendored ``github.com/modern-go/reflect2`` 1.0.1 panics under Go >= 1.18
   (``reflect2.(*frozenConfig).Type2``), so Debian's 1.0.2 replaces it;
2. ``make WHAT=cmd/...`` for kubeadm, kubelet, kubectl and the four control-plane/proxy
   binaries, and the pause binary from the tree's own ``build/pause/linux/pause.c``;
3. images built with podman: pause, kube-apiserver, kube-controller-manager and
   kube-scheduler ``FROM scratch`` around the static binary; kube-proxy on the Debian
   rootfs (it runs iptables), each saved as a docker-archive for ``ctr images import``.

Outputs (``recipes.RecipeCache`` records each file's sha256 and checks it at every use):
``bin/<name>`` and ``images/<name>.tar``, plus ``images.json`` (file -> image reference).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from recipes import Recipe
from recipes import debian_image as scratch_image
from settings.model import Settings
from transport.podman import SUITE_LABEL, SUITE_LABEL_VALUE, podman

VERSION = "1.20.2"
# Debian bookworm's source package holding that tree.
SOURCE_PACKAGE = "kubernetes=1.20.5+really1.20.2-1.1+deb12u1"
SOURCE_DIR = "/src/kubernetes-1.20.5+really1.20.2"
GO_ROOT = "/usr/lib/go-1.19"
# kubeadm 1.20's constants.PauseVersion: the sandbox image kubeadm tells kubelet to use.
PAUSE_TAG = "3.2"
IMAGE_REPOSITORY = "localhost/hvsuite-k8s"
# Bump when the procedure below changes in a way the hashed inputs do not show.
REVISION = "1"

BINARIES = ("kubeadm", "kubelet", "kubectl")
CONTROL_PLANE = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
PROXY = "kube-proxy"

# The pause binary from the tree's own source, as its Makefile builds it.
PAUSE_BUILD = (
    f"gcc -Os -Wall -Werror -static -DVERSION=v{PAUSE_TAG}-hvsuite"
    " -o _output/bin/pause build/pause/linux/pause.c"
)
BUILDER = f"""\
FROM {{base}}
RUN echo 'deb-src {{mirror}} {{suite}} main' >> /etc/apt/sources.list \\
 && apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
    golang-1.19-go rsync make gcc libc6-dev dpkg-dev golang-github-modern-go-reflect2-dev ca-certificates
WORKDIR /src
RUN apt-get source --only-source {SOURCE_PACKAGE}
WORKDIR {SOURCE_DIR}
ENV PATH={GO_ROOT}/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root CGO_ENABLED=0
# reflect2 1.0.1 panics under Go >= 1.18; Debian's 1.0.2 is API-compatible.
RUN rm -rf vendor/github.com/modern-go/reflect2 \\
 && cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/reflect2 \\
 && make WHAT="{" ".join(f"cmd/{name}" for name in (*BINARIES, *CONTROL_PLANE, PROXY))}" \\
    KUBE_GIT_VERSION=v{VERSION} KUBE_GIT_TREE_STATE=clean \\
 && {PAUSE_BUILD} \\
 && _output/bin/kubeadm version -o short | grep -qx v{VERSION}
"""

# The static binaries need nothing else; PATH because kubeadm's manifests name the command.
SCRATCH_IMAGE = """\
FROM scratch
ENV PATH=/usr/local/bin
COPY {binary} /usr/local/bin/{binary}
ENTRYPOINT ["/usr/local/bin/{binary}"]
"""

PAUSE_IMAGE = """\
FROM scratch
COPY pause /pause
USER 65535:65535
ENTRYPOINT ["/pause"]
"""

# kube-proxy programs iptables (Debian's default nft backend, as on the node) and conntrack.
PROXY_IMAGE = """\
FROM {base}
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables conntrack ipset kmod \\
 && rm -rf /var/lib/apt/lists/*
COPY kube-proxy /usr/local/bin/kube-proxy
ENTRYPOINT ["/usr/local/bin/kube-proxy"]
"""


def image_reference(name: str) -> str:
    tag = PAUSE_TAG if name == "pause" else f"v{VERSION}"
    return f"{IMAGE_REPOSITORY}/{name}:{tag}"


def recipe(settings: Settings) -> Recipe:
    scratch = settings.scratch
    base = scratch_image.Recipe(scratch.image, scratch.suite, scratch.mirror)
    builder = BUILDER.format(base=base.base_image, mirror=scratch.mirror, suite=scratch.suite)
    inputs = {
        "builder": builder,
        "scratch-image": SCRATCH_IMAGE,
        "pause-image": PAUSE_IMAGE,
        "proxy-image": PROXY_IMAGE.format(base=base.base_image),
        "image-repository": IMAGE_REPOSITORY,
    }

    def build(out: Path, log: Callable[[str], None]) -> None:
        _build(base, builder, out, log)

    return Recipe(name="kubernetes", version=VERSION, revision=REVISION, inputs=inputs, build=build)


def _podman_build(context: Path, containerfile: str, tag: str, *, timeout: float) -> None:
    (context / "Containerfile").write_text(containerfile)
    podman(
        "build",
        # crun refuses this machine's hybrid cgroups.
        "--runtime", "runc",
        "--label", f"{SUITE_LABEL}={SUITE_LABEL_VALUE}",
        "-t", tag,
        "-f", str(context / "Containerfile"),
        str(context),
        timeout=timeout,
    )  # fmt: skip


def _build(base: scratch_image.Recipe, builder: str, out: Path, log: Callable[[str], None]) -> None:
    # The scratch servers' image builds the rootfs the builder starts from.
    scratch_image.ensure_image(base)
    builder_tag = f"{IMAGE_REPOSITORY}/builder:v{VERSION}"
    with tempfile.TemporaryDirectory(prefix="k8s-recipe-") as tmp:
        work = Path(tmp)
        log(f"building Kubernetes v{VERSION} from {SOURCE_PACKAGE} (about 12 minutes on 2 cores)")
        (work / "builder").mkdir()
        _podman_build(work / "builder", builder, builder_tag, timeout=3600)
        bins = work / "bins"
        bins.mkdir()
        container = f"hvsuite-k8s-extract-{out.name}"[:60]
        podman("create", "--name", container, builder_tag, "true", timeout=60)
        try:
            for name in (*BINARIES, *CONTROL_PLANE, PROXY, "pause"):
                podman("cp", f"{container}:{SOURCE_DIR}/_output/bin/{name}", str(bins / name), timeout=120)
        finally:
            podman("rm", "--force", container, check=False, timeout=60)
        (out / "bin").mkdir()
        for name in BINARIES:
            shutil.copy2(bins / name, out / "bin" / name)
        images: dict[str, str] = {}
        for name in ("pause", *CONTROL_PLANE, PROXY):
            context = work / f"image-{name}"
            context.mkdir()
            shutil.copy2(bins / name, context / name)
            if name == "pause":
                containerfile = PAUSE_IMAGE
            elif name == PROXY:
                containerfile = PROXY_IMAGE.format(base=base.base_image)
            else:
                containerfile = SCRATCH_IMAGE.format(binary=name)
            reference = image_reference(name)
            log(f"image {reference}")
            _podman_build(context, containerfile, reference, timeout=900)
            archive = f"images/{name}.tar"
            (out / "images").mkdir(exist_ok=True)
            podman("save", "--format", "docker-archive", "-o", str(out / archive), reference, timeout=300)
            images[archive] = reference
        (out / "images.json").write_text(json.dumps(images, indent=2, sort_keys=True) + "\n")
    # The entry holds every output; the builder (about 4.5 GB of toolchain and objects) and the
    # image tags would only take space in podman's store.
    podman("rmi", "--force", builder_tag, *images.values(), check=False, timeout=300)
