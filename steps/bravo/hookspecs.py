"""Team Bravo's extension points: what later teams contribute to its containerd."""

from __future__ import annotations

from apply.extensions import hookspec
from settings.base import EffectiveProfile


@hookspec(firstresult=True)
def containerd_sandbox_image(settings: object, profile: EffectiveProfile) -> str | None:
    """The pod sandbox ("pause") image containerd's CRI runs pods on: the one the cluster's
    kubelet and kubeadm name for their version. ``bravo.sandbox_image`` wins when set; with no
    contribution either, containerd keeps its built-in default."""
